"""The site's DNS records, as plain data: the cloud DNS, the zone file and the lab all serve these."""

from __future__ import annotations

import ipaddress
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


def zone_of(name: str, domains: list[str]) -> str | None:
    """The site domain whose zone holds `name` (the longest one that is a suffix), if any."""
    zones = [d for d in domains if name == d or name.endswith("." + d)]
    return max(zones, key=len) if zones else None


def relative_name(name: str, zone: str) -> str:
    return "" if name == zone else name.removesuffix("." + zone)


def _field(value: str) -> str:
    """One zone-file field. The model refuses what could break a line (an IPv6 %zone with a line
    break in it, say); this is the second line of defence, so a miss is a bug, not a user error:
    a line break, blank, `;` (a comment) or `(` would let a value write records of its own."""
    if not value or any(c.isspace() or not c.isprintable() or c in ';()"\\' for c in value):
        raise ValueError(f"not one zone-file field: {value!r}")
    return value


def render_zone(zone: str, records: list[DnsRecord], primary_ns: str, serial: int, ttl: int = 3600) -> str:
    """An RFC 1035 zone file for `zone` (nsd reads it as is) holding the site's records in it."""
    lines = [
        f"; {zone}: mail records of the site. Rendered by mailsite; serve it from your name server.",
        f"$ORIGIN {zone}.",
        f"$TTL {ttl}",
        f"@\tIN\tSOA\t{primary_ns}. hostmaster.{zone}. ( {serial} 3600 900 1209600 300 )",
    ]
    for record in records:
        if zone_of(record.name, [zone]) != zone:
            continue
        owner = _field(relative_name(record.name, zone) or "@")
        value = f"{int(record.priority or 0)}\t{_field(record.value)}." if record.type == "MX" else _field(record.value)
        lines.append(f"{owner}\tIN\t{record.type}\t{value}")
    return "\n".join(lines) + "\n"


def reverse_zone_name(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The in-addr.arpa / ip6.arpa zone holding `network`: its prefix rounded down to a whole
    octet (IPv4) or nibble (IPv6), the unit reverse zones are delegated in."""
    unit = 8 if network.version == 4 else 4
    labels = network.network_address.reverse_pointer.split(".")
    keep = network.prefixlen // unit
    return ".".join(labels[len(labels) - 2 - keep:])


def render_reverse_zone(network, records: list[ReverseRecord], primary_ns: str, serial: int, ttl: int = 3600) -> str:
    """The PTR records of the site's addresses inside `network`: each answers its MX name."""
    zone = reverse_zone_name(network)
    lines = [
        f"; {zone}: reverse DNS of the site's MXes. Rendered by mailsite; serve it from your name server.",
        f"$ORIGIN {zone}.",
        f"$TTL {ttl}",
        f"@\tIN\tSOA\t{primary_ns}. hostmaster.{primary_ns}. ( {serial} 3600 900 1209600 300 )",
    ]
    for record in records:
        address = ipaddress.ip_address(_field(record.address))
        if address.version == network.version and address in network:
            lines.append(f"{address.reverse_pointer}.\tIN\tPTR\t{_field(record.name)}.")
    return "\n".join(lines) + "\n"
