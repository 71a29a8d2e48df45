"""SiteDns: MX records with each host's preference, A/AAAA for every MX name, and PTR where the
provider does not answer them (Vultr: its DNS and reverse API; libvirt: zone files)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from .target import DnsArgs, Target


@dataclass
class SiteDnsArgs:
    target: Target  # serves the zones (Vultr DNS) or writes them for the user's name server (libvirt)
    zones: DnsArgs  # what the zones hold


class SiteDns(pulumi.ComponentResource):
    zone_files: dict[str, pulumi.Output[str]]  # zone name -> text, where zone files are written

    def __init__(self, name: str, args: SiteDnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:SiteDns", name, None, opts)
        self.zone_files = args.target.dns(name, args.zones, pulumi.ResourceOptions(parent=self))
        self.register_outputs({"zoneFiles": self.zone_files})
