"""The site's zones on Vultr DNS: MX records with each host's preference, A/AAAA for every MX name."""

from __future__ import annotations

from typing import cast

import ediri_vultr as vultr
import pulumi

from mailsite.dns import relative_name, zone_of

from ..target import DnsArgs


def vultr_dns(name: str, args: DnsArgs, opts: pulumi.ResourceOptions) -> None:
    domains = {d: vultr.DnsDomain(f"{name}-{d}", domain=d, opts=opts) for d in args.domains}
    for domain, preference, target in args.mx:
        vultr.DnsRecord(
            f"{name}-{domain}-mx-{target}",
            domain=domains[domain].domain,
            type="MX",
            name="",
            data=target,
            priority=preference,
            opts=pulumi.ResourceOptions(parent=domains[domain]),
        )
    for host in args.hosts:
        zone = zone_of(host.mx_name, args.domains)
        assert zone is not None, "the model keeps MX names inside a site domain on Vultr DNS"
        # A host with IPv6 has an address for it: the instance's own.
        families = [("A", args.ipv4[host.name])] + ([("AAAA", cast(pulumi.Input[str], args.ipv6[host.name]))] if host.ipv6 is not None else [])
        for record_type, address in families:
            vultr.DnsRecord(
                f"{name}-{host.name}-{record_type.lower()}",
                domain=domains[zone].domain,
                type=record_type,
                name=relative_name(host.mx_name, zone),
                data=address,
                opts=pulumi.ResourceOptions(parent=domains[zone]),
            )
