"""smtpd(8): the MTA on every MX; the MSA on the primary."""

from __future__ import annotations

from .base import Daemon, LabRun

# OpenBSD's path; Debian's smtpd would look for /etc/smtpd.conf.
smtpd = Daemon("smtpd", lab=LabRun(("smtpd", "-d", "-f", "/etc/mail/smtpd.conf"), (25, "tcp")))
