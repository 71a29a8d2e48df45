"""Zone files for the user's own name server: each site domain, and the reverse zone of each network.

Files to $INCLUDE into the user's zones by default (which hold the SOA, the NS set and the
domain's other names); complete zones when dns.nameservers names the NS set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pulumi

from mailsite.dns import DnsRecord, ReverseRecord, render_reverse_zone, render_zone, reverse_zone_name

from ..target import DnsArgs
from ..zone_file import ZoneFile

Records = tuple[list[DnsRecord], list[ReverseRecord]]


def zone_files(name: str, args: DnsArgs, directory: Path, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
               opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
    written: dict[str, pulumi.Output[str]] = {}

    def forward(domain: str) -> Callable[[Records], str]:
        return lambda records: render_zone(domain, records[0], args.ttl, args.nameservers, args.contact)

    def reverse(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Callable[[Records], str]:
        return lambda records: render_reverse_zone(network, records[1], args.ttl, args.nameservers, args.contact)

    for domain in args.domains:
        text = args.records.apply(forward(domain))
        ZoneFile(f"{name}-{domain}", str(directory / f"{domain}.zone"), text, opts)
        written[domain] = text
    for network in networks:
        zone_name = reverse_zone_name(network)
        text = args.records.apply(reverse(network))
        ZoneFile(f"{name}-{zone_name}", str(directory / f"{zone_name}.zone"), text, opts)
        written[zone_name] = text
    return written
