"""What a host says about itself, read through its HostControl and never changed: smtpd's state
and queue, the key versions its image carries. Rotation and the drain read these; `doctor` will.

Each fact is a pure parser of a command's output and a reader that runs the command, so the
parsing is tested on text and the reading on real hosts (the lab).
"""

from __future__ import annotations

import re

from .daemons.basics import KEY_VERSIONS as KEY_VERSIONS_FILE
from .hosts import ControlError, HostControl

# Written into every image with the host's basics: which key versions it carries, never the keys.
KEY_VERSIONS = f"/{KEY_VERSIONS_FILE}"

_ENVELOPE = re.compile(r"^([0-9a-f]{16})\|")


def smtp_status(host: HostControl) -> str:
    """`smtpctl show status`: "SMTP running" or "SMTP paused", and the MDA's and MTA's state."""
    return host.run("smtpctl", "show", "status")


def answers_smtp(host: HostControl) -> bool:
    """smtpd runs and takes mail, as smtpd itself says. Not a TCP probe of port 25: from
    outside, pf hands unknown IPv4 clients to spamd, which answers whether smtpd runs or not."""
    try:
        return "SMTP running" in smtp_status(host)
    except ControlError:
        return False


def queued_envelopes(show_queue: str) -> list[str]:
    """`smtpctl show queue` lines are `evpid|type|...`; one per envelope still queued."""
    return [line for line in show_queue.splitlines() if _ENVELOPE.match(line)]


def envelope_recipient(line: str) -> str:
    """The recipient of one `smtpctl show queue` line (its sixth field)."""
    parts = line.split("|")
    return parts[5] if len(parts) > 5 else "?"


def queue(host: HostControl) -> list[str]:
    """The envelopes the host still holds, one `smtpctl show queue` line each."""
    return queued_envelopes(host.run("smtpctl", "show", "queue"))


def parse_key_versions(text: str) -> dict[str, str]:
    """`name version` lines (`queue-key 3f2a...`), by key name."""
    return dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)


def key_versions(host: HostControl) -> dict[str, str]:
    """The key versions the host's image carries; empty when the host cannot say (a VM still
    booting, a new host key not yet learned): the caller asks again or reports it unknown."""
    try:
        return parse_key_versions(host.run("cat", KEY_VERSIONS))
    except ControlError:
        return {}
