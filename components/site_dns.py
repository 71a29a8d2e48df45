"""SiteDns: MX records with each host's preference, A/AAAA for every MX name (and PTR zones on libvirt)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import ediri_vultr as vultr
import pulumi

from mailsite.dns import (
    DnsRecord,
    ReverseRecord,
    dns_records,
    relative_name,
    render_reverse_zone,
    render_zone,
    reverse_records,
    reverse_zone_name,
    zone_of,
)
from mailsite.model import HostAddresses, Site

from .zone_file import ZoneFile


@dataclass
class SiteDnsArgs:
    site: Site
    ipv4: Mapping[str, pulumi.Input[str]]  # by host name
    ipv6: Mapping[str, pulumi.Input[str | None]]
    serial: int = 1


class SiteDns(pulumi.ComponentResource):
    zone_files: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SiteDnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:SiteDns", name, None, opts)
        site = args.site
        records = pulumi.Output.all(ipv4=dict(args.ipv4), ipv6=dict(args.ipv6)).apply(
            lambda a: _records(site, a["ipv4"], a["ipv6"])
        )
        self.zone_files = {}
        if site.target == "vultr" and site.vultr.dns:
            self._vultr(name, args)
        elif site.target == "libvirt":
            self._zone_files(name, args, records)
        self.register_outputs({"zoneFiles": self.zone_files})

    def _vultr(self, name: str, args: SiteDnsArgs) -> None:
        site = args.site
        domains = {d: vultr.DnsDomain(f"{name}-{d}", domain=d, opts=pulumi.ResourceOptions(parent=self)) for d in site.domains}
        for domain, preference, target in site.mx_records():
            vultr.DnsRecord(
                f"{name}-{domain}-mx-{target}",
                domain=domains[domain].domain,
                type="MX",
                name="",
                data=target,
                priority=preference,
                opts=pulumi.ResourceOptions(parent=domains[domain]),
            )
        for host in site.hosts:
            zone = zone_of(host.mx_name, site.domains)
            assert zone is not None, "the model keeps MX names inside a site domain on Vultr DNS"
            families = [("A", args.ipv4[host.name])] + ([("AAAA", args.ipv6[host.name])] if host.ipv6 is not None else [])
            for record_type, address in families:
                vultr.DnsRecord(
                    f"{name}-{host.name}-{record_type.lower()}",
                    domain=domains[zone].domain,
                    type=record_type,
                    name=relative_name(host.mx_name, zone),
                    data=address,
                    opts=pulumi.ResourceOptions(parent=domains[zone]),
                )

    def _zone_files(self, name: str, args: SiteDnsArgs, records: pulumi.Output) -> None:
        site = args.site
        directory = Path(site.libvirt.zone_dir)
        ns = site.primary.mx_name
        for domain in site.domains:
            text = records.apply(lambda r, d=domain: render_zone(d, r[0], ns, args.serial))
            ZoneFile(f"{name}-{domain}", str(directory / f"{domain}.zone"), text, pulumi.ResourceOptions(parent=self))
            self.zone_files[domain] = text
        for network in [n for n in (site.ipv4_network(), site.ipv6_network()) if n]:
            zone_name = reverse_zone_name(network)
            text = records.apply(lambda r, n=network: render_reverse_zone(n, r[1], ns, args.serial))
            ZoneFile(f"{name}-{zone_name}", str(directory / f"{zone_name}.zone"), text, pulumi.ResourceOptions(parent=self))
            self.zone_files[zone_name] = text


def _records(site: Site, ipv4: Mapping[str, str], ipv6: Mapping[str, str | None]) -> tuple[list[DnsRecord], list[ReverseRecord]]:
    addresses = {
        h: HostAddresses(ipaddress.IPv4Address(ipv4[h]), ipaddress.IPv6Address(ipv6[h]) if ipv6.get(h) else None)
        for h in ipv4
    }
    return dns_records(site, addresses), reverse_records(site, addresses)
