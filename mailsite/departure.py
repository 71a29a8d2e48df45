"""A VM about to be deleted: which MX it is, why it goes, and the drain before it does.

The engine calls one `before_delete` hook for every VM that goes, whatever the reason: a new image
(replacement), a host gone from the stack file (removal), or `pulumi destroy` (decommission). The
hook is told only the VM's old inputs and outputs (`ResourceHookArgs`: no "replacing" flag, and a
program is not told it runs for a destroy), so:

- the MX is found from the VM's own inputs (its hostname), not from the stack file, which no
  longer names a removed host;
- a decommission is said by the operator, for the one command: `MAILSITE_DECOMMISSION=<stack>`.
  Not a stack setting: that would be committed, outlive the destroy, and let every later
  replacement (by CI too) take an MX down while its peers are away. The value names the stack so
  that an exported variable cannot reach another stack.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .drain import drain
from .errors import MailsiteError
from .facts import answers_smtp
from .hosts import ControlError, HostControl
from .model import Site
from .replacement import SITE, vm_resource

DECOMMISSION = "MAILSITE_DECOMMISSION"

# A peer replaced just before (a site-wide change goes host by host) may still be booting: an
# OpenBSD VM answers in a minute or two, a new cloud VM can take several to be provisioned.
PEER_BOOT_MINUTES = 10


class DepartureRefused(MailsiteError):
    """The VM must not be deleted yet; one line saying why and what to do. An operation that
    could not be done (a peer out, a queue that did not drain), not a setting to fix: once the
    site is back, the same `pulumi up` goes through. The engine reports it as the hook's error."""


@dataclass(frozen=True)
class Departure:
    mx_name: str  # how ssh reaches it: the VM's hostname
    name: str  # the host's name in the stack file, or the MX name if it has left it
    reason: str  # replacement | removal | decommission


def _plain(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def departing(site: Site, stack: str, old_inputs: Mapping[str, Any] | None, old_outputs: Mapping[str, Any] | None,
              decommission: str | None, vm: str | None = None) -> Departure:
    """Which MX a deleted VM is, from what the engine hands the hook (Vultr's `hostname`, the
    libvirt domain's `name`: both are the MX name the VM was made with; `vm`: its resource name)."""
    # What the program asked for first: the name DNS gives the MX, whatever a refresh read back.
    recorded = {**(old_outputs or {}), **(old_inputs or {})}
    mx_name = _plain(recorded.get("hostname")) or _plain(recorded.get("name"))
    if mx_name is None:
        raise DepartureRefused("the VM being deleted names no host (no hostname or name in its state); not deleting it "
                               "without a drain. Drain it by hand (smtpctl pause smtp; wait for smtpctl show queue to be empty)")
    if decommission is not None and decommission != stack:
        raise DepartureRefused(f"{DECOMMISSION}={decommission} does not name this stack ({stack}); "
                               f"set {DECOMMISSION}={stack} to decommission it, or unset it")
    # A host whose fqdn changed is replaced under its old name: its VM's resource name says
    # which host it still is, or the hook would wait for the host's own new VM as a peer.
    host = next((h for h in site.hosts if h.mx_name == mx_name), None) or \
        next((h for h in site.hosts if vm is not None and vm == vm_resource(SITE, h.name, site.target)), None)
    reason = "decommission" if decommission else "replacement" if host else "removal"
    was = _role_of(recorded)
    if reason == "replacement" and host is not None and was is not None and was != host.role:
        # The chain makes the new primary's VM first: it would be given the mail volume while the
        # old primary's VM still runs with it (libvirt: a disk two domains open; Vultr: detached
        # from a running primary whose queued mail then has nowhere to go).
        raise DepartureRefused(
            f"{host.name}'s VM was a {was} MX and the stack file makes it the {host.role}: moving the primary role "
            "moves the mail volume while the old primary still holds it; not deleting it. Keep role: primary on the "
            "host entry that has it (docs/operating.md, The mail volume)")
    return Departure(mx_name, host.name if host else mx_name, reason)


def _role_of(recorded: Mapping[str, Any]) -> str | None:
    """The role a VM was made for, as its target recorded it: a Vultr instance's tags
    (components/vultr/instance.py), a libvirt domain's description (components/libvirt/domain.py).
    None for a VM that says neither."""
    tags = recorded.get("tags")
    roles = [tag for tag in tags if tag in ("primary", "backup")] if isinstance(tags, list) else []
    described = re.match(r"mailsite (primary|backup) MX", _plain(recorded.get("description")) or "")
    return roles[0] if len(roles) == 1 else described[1] if described else None


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _silent_peers(site: Site, departure: Departure, control: Callable[[str], HostControl], wait: float, poll: float,
                  clock: Callable[[], float], sleep: Callable[[float], None]) -> list[str]:
    # The VMs are created and replaced along a chain, primary first (see MailSite). A peer
    # before the departing host has been reached by this run already (kept, replaced: maybe
    # still booting, so it is waited for, or just created). A peer after it has not: if no
    # shell answers there at all, it is a host being added whose VM comes later in this run,
    # not one that is out. A removed host goes at the end of the run: every peer is before it.
    chain = [h.name for h in reversed(site.replacement_order)]
    later = set(chain[chain.index(departure.name) + 1:]) if departure.reason == "replacement" else set()
    peers = {h.name: control(h.mx_name) for h in site.hosts if h.name != departure.name and h.mx_name != departure.mx_name}
    deadline = clock() + wait
    while True:
        silent = [name for name, peer in peers.items() if not answers_smtp(peer)]
        silent = [name for name in silent if name not in later or peers[name].reachable()]
        if not silent or clock() >= deadline:
            return silent
        sleep(poll)


def drain_departing(site: Site, departure: Departure, control: Callable[[str], HostControl], drain_timeout: float,
                    peer_wait: float = PEER_BOOT_MINUTES * 60, poll: float = 5.0,
                    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Drain the departing MX, or raise DepartureRefused. Never two MXes out at once, except in a
    decommission, where the peers are going too: there each host still drains before it goes."""
    if departure.reason != "decommission":
        silent = _silent_peers(site, departure, control, peer_wait, poll, clock, sleep)
        if silent:
            raise DepartureRefused(
                f"not taking {departure.name} down while {', '.join(silent)} {'takes' if len(silent) == 1 else 'take'} no mail "
                f"(waited {_duration(peer_wait)}); "
                f"bring it back, or, destroying the site on purpose, run the destroy with {DECOMMISSION}=<stack>")
    departing_host = control(departure.mx_name)
    try:
        drained = drain(departing_host, drain_timeout)
    except ControlError as error:
        raise DepartureRefused(f"cannot drain {departure.name} ({error}); VM not deleted. Bring it back so it can drain") from None
    if not drained.drained:
        raise DepartureRefused(
            f"{departure.name} still holds {len(drained.remaining)} message(s) after {_duration(drain_timeout)}; smtp resumed, "
            "VM not deleted. Bring its next hop back (the primary) or raise mailsite:queue.drainMinutes")
    # Whatever answers at this name next is a new VM with a new ssh host key: forget the old one
    # now, or the next hook's peer check would meet a "host key changed" and refuse.
    departing_host.replaced()
