"""The site's routed libvirt network; the hosts sit at the fixed addresses their images set."""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_libvirt as libvirt

from mailsite.model import Host, HostAddresses
from mailsite.model import Libvirt as LibvirtSettings

from ..target import Addresses


def routed_network(name: str, hosts: list[Host], settings: LibvirtSettings,
                   networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], opts: pulumi.ResourceOptions) -> Addresses:
    network = libvirt.Network(
        f"{name}-network",
        name=settings.network_name,
        # Routed, not NAT: the MXes must be reachable at their own addresses.
        mode="route",
        bridge=settings.bridge,
        addresses=[str(n) for n in networks],
        # The hosts' addresses are fixed in their images: a DHCP server on the network
        # could only hand a stray guest an address of the site's.
        dhcp=libvirt.NetworkDhcpArgs(enabled=False),
        autostart=True,
        # `dhcp` forces a new network (ForceNew in terraform-provider-libvirt 0.8.1), and
        # a network made before this setting has DHCP on. Replacing it would cut every MX
        # off at once (a running VM does not rejoin a recreated bridge), and no drain hook
        # runs, since no VM is deleted. So only a new network gets it; an existing one
        # keeps its DHCP until it is recreated on purpose.
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["dhcp"])),
    )
    return Addresses(
        by_host={host.name: pulumi.Output.from_input(_fixed(host)) for host in hosts},
        attach={host.name: network.id for host in hosts},
        network_id=network.id,
    )


def _fixed(host: Host) -> HostAddresses:
    # The model refuses `allocate` on libvirt (mailsite.rules.static_addresses_fixed): every host has fixed addresses.
    assert isinstance(host.ipv4, ipaddress.IPv4Address) and not isinstance(host.ipv6, str), host.name
    return HostAddresses(host.ipv4, host.ipv6)
