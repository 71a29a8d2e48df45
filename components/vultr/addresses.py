"""One reserved IPv4 per host: known before any instance exists, kept when an instance is replaced."""

from __future__ import annotations

import ipaddress

import ediri_vultr as vultr
import pulumi

from mailsite.model import Host, HostAddresses

from ..target import Addresses


def reserved_ips(name: str, hosts: list[Host], region: str, opts: pulumi.ResourceOptions) -> Addresses:
    by_host: dict[str, pulumi.Output[HostAddresses]] = {}
    ids: dict[str, pulumi.Input[str]] = {}
    for host in hosts:
        reserved = vultr.ReservedIp(
            f"{name}-{host.name}-ipv4",
            ip_type="v4",
            region=region,
            label=f"{host.mx_name} (mailsite)",
            # Losing it would change the MX's address under DNS, PTR and peers' configs.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=True)),
        )
        ids[host.name] = reserved.id
        # On Vultr IPv6 is the instance's own; nothing baked into an image needs it.
        by_host[host.name] = reserved.subnet.apply(lambda ip: HostAddresses(ipaddress.IPv4Address(ip)))
    return Addresses(by_host, attach=ids, reserved_ip_ids=ids)
