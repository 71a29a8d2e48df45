"""SiteDns: the site's records (mailsite.dns: MX, A/AAAA, SPF, DMARC, MTA-STS, TLS-RPT, SRV, CAA,
DKIM) and PTR where the provider does not answer them (Vultr: its DNS and reverse API; libvirt:
zone files)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi

from mailsite.dns import DnsRecord, ReverseRecord, address_names, dns_records, named_records, reverse_records, zone_contact
from mailsite.model import HostAddresses, Site

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


def dns_args(site: Site, ipv4: Mapping[str, pulumi.Output[str]], ipv6: Mapping[str, pulumi.Output[str | None]],
             dkim: Sequence[DnsRecord] = (), policy_server: pulumi.Resource | None = None) -> DnsArgs:
    """The zones' contents for the VMs' addresses; `dkim`: the DKIM keys' TXT records (mailsite.dkim);
    `policy_server`: the primary's VM (DnsArgs.policy_server)."""
    records = pulumi.Output.all(ipv4=ipv4, ipv6=ipv6).apply(lambda a: _records(site, a["ipv4"], a["ipv6"], dkim))
    return DnsArgs(site.domains, named_records(site, dkim), address_names(site), ipv4, ipv6, records,
                   ttl=site.dns.ttl, nameservers=list(site.dns.nameservers), contact=zone_contact(site),
                   policy_server=policy_server)


def _records(site: Site, ipv4: Mapping[str, str], ipv6: Mapping[str, str | None],
             dkim: Sequence[DnsRecord]) -> tuple[list[DnsRecord], list[ReverseRecord]]:
    addresses = {
        h: HostAddresses(ipaddress.IPv4Address(ipv4[h]), ipaddress.IPv6Address(ipv6[h]) if ipv6.get(h) else None)
        for h in ipv4
    }
    return dns_records(site, addresses, dkim), reverse_records(site, addresses)
