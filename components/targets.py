"""Which targets there are, and the one place a site's `target` setting picks one."""

from __future__ import annotations

from typing import Callable

from mailsite.model import Site

from .libvirt import Libvirt
from .target import Target
from .vultr import Vultr

# Each gets its own section of the settings (site.vultr, site.libvirt) and the few site facts it needs.
PACKAGES: dict[str, Callable[[Site], Target]] = {
    # The routed network holds the static addresses the model checked (libvirt requires them).
    "libvirt": lambda site: Libvirt(site.libvirt, site.ipv4_network(), site.ipv6_network()),
    "vultr": lambda site: Vultr(site.vultr),
}


def target_for(site: Site) -> Target:
    return PACKAGES[site.target](site)
