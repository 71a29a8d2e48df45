"""The daemons of a site, one module each: the one registry that render_host, the firewall's rule
set, configtest and the lab go through. A new daemon is a module here, its templates in
configs/<daemon>/, and its place in DAEMONS.
"""

from __future__ import annotations

from ..model import Host, Site
from .acme import acme
from .base import ConfigTest, Daemon, HostContext, LabRun
from .basics import basics
from .bgp_spamd_update import bgp_spamd_update
from .bgpd import bgpd
from .dkim import dkim
from .dkimsign import dkimsign
from .dovecot import dovecot
from .httpd import httpd
from .mail_volume import mail_volume
from .pf import pf
from .redis import redis
from .restic import restic
from .rspamd import rspamd
from .smtpd import smtpd
from .spamd import spamd
from .spamlogd import spamlogd
from .sshd import sshd

# In start order (the lab starts those with a LabRun in this order). The same order puts together
# the files several daemons add to (rc.conf.local, root's crontab) and, after the services open
# to the whole internet, pf.conf's rules: pf comes last, as its rule set is everyone else's.
# redis before rspamd, its store; both and Dovecot before smtpd, which asks rspamd through
# filter-rspamd and delivers to Dovecot's LMTP socket; httpd before acme-client, whose
# challenges it answers. restic (the primary's backups) after every daemon whose state it keeps.
DAEMONS: tuple[Daemon, ...] = (basics, mail_volume, spamd, spamlogd, bgpd, bgp_spamd_update, redis, rspamd, dovecot, dkim, dkimsign, smtpd, httpd, acme, restic, sshd, pf)


def daemons_on(site: Site, host: Host) -> tuple[Daemon, ...]:
    """The daemons that run on `host`, in start order."""
    return tuple(daemon for daemon in DAEMONS if daemon.runs_on(site, host))


__all__ = ["DAEMONS", "ConfigTest", "Daemon", "HostContext", "LabRun", "daemons_on"]
