"""The daemons of a site, one module each: the one registry that render_host, the firewall's rule
set, configtest and the lab go through. A new daemon is a module here, its templates in
configs/<daemon>/, and one line in DAEMONS.
"""

from __future__ import annotations

from ..model import Host, Site
from .base import Daemon, LabRun
from .bgpd import bgpd
from .smtpd import smtpd

# In the order the lab starts them.
DAEMONS: tuple[Daemon, ...] = (bgpd, smtpd)


def daemons_on(site: Site, host: Host) -> tuple[Daemon, ...]:
    """The daemons that run on `host`, in start order."""
    return tuple(daemon for daemon in DAEMONS if daemon.runs_on(site, host))


__all__ = ["DAEMONS", "Daemon", "LabRun", "daemons_on"]
