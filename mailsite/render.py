"""render_host: every file a host's image carries, by path below /, from the daemons that run on it.

Each daemon module (mailsite/daemons/) renders its own files from its templates in
configs/<daemon>/; this only puts them together. Pure: no I/O beyond reading the templates.
"""

from __future__ import annotations

from typing import Mapping

from .daemons import HostContext, daemons_on
from .model import Host, HostAddresses, HostSecrets, Site
from .templates import OPENBSD, HostTree, LinuxDifferences


def render_host(
    site: Site,
    host: Host,
    addresses: Mapping[str, HostAddresses],
    secrets: HostSecrets,
    linux: LinuxDifferences = OPENBSD,
) -> HostTree:
    context = HostContext(site, host, addresses, secrets, daemons_on(site, host), linux)
    tree: HostTree = {}
    for daemon in context.daemons:
        for path, rendered in daemon.files(context).items():
            if path in tree:
                raise AssertionError(f"{daemon.name} renders {path}, which another daemon already rendered")
            tree[path] = rendered
    return dict(sorted(tree.items()))
