"""The site's DNS records, as plain data: the cloud DNS, the zone file and the lab all serve these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from .model import HostAddresses, Site


@dataclass(frozen=True)
class DnsRecord:
    name: str  # fully qualified, no trailing dot
    type: Literal["MX", "A", "AAAA"]
    value: str
    priority: int | None = None  # MX preference


@dataclass(frozen=True)
class ReverseRecord:
    """A PTR that must answer the MX name, so that forward and reverse DNS confirm each other."""

    address: str
    name: str


def dns_records(site: Site, addresses: Mapping[str, HostAddresses]) -> list[DnsRecord]:
    records = [DnsRecord(domain, "MX", target, preference) for domain, preference, target in site.mx_records()]
    for host in site.hosts:
        own = addresses[host.name]
        records.append(DnsRecord(host.mx_name, "A", str(own.ipv4)))
        if own.ipv6:
            records.append(DnsRecord(host.mx_name, "AAAA", str(own.ipv6)))
    return records


def reverse_records(site: Site, addresses: Mapping[str, HostAddresses]) -> list[ReverseRecord]:
    return [
        ReverseRecord(str(address), host.mx_name)
        for host in site.hosts
        for address in (addresses[host.name].ipv4, addresses[host.name].ipv6)
        if address
    ]
