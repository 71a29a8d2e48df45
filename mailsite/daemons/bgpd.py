"""bgpd(8): takes the bgp-spamd route servers' lists into pf tables; on Vultr, announces the
site's own prefixes."""

from __future__ import annotations

from .base import Daemon, LabRun

bgpd = Daemon("bgpd", lab=LabRun(("bgpd", "-d", "-f", "/etc/bgpd.conf"), (179, "tcp")))
