"""What a daemon module declares: the hosts it runs on, and how the lab starts it.

Pure data: a daemon module builds one Daemon from small functions of the model; the registry in
mailsite/daemons/__init__.py lists them, and everything that goes daemon by daemon (render_host,
the firewall's rule set, configtest, the lab) iterates that one registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from ..model import Host, Site


@dataclass(frozen=True)
class LabRun:
    """How the lab starts a daemon inside a host's namespaces (its /etc is the rendered tree)."""

    argv: tuple[str, ...]  # in the foreground, so the lab holds its pid and its log
    listens: tuple[int, Literal["tcp", "udp"]] | None  # (port, protocol) it listens on once ready


def every_host(site: Site, host: Host) -> bool:
    return True


@dataclass(frozen=True)
class Daemon:
    name: str  # as rc.d(8) names it: smtpd, bgpd, spamd
    runs_on: Callable[[Site, Host], bool] = every_host
    lab: LabRun | None = None  # None: the lab does not run it (Linux has no pf, no spamd)
