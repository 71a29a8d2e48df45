"""SiteAddresses: every host's addresses, known before any VM exists (the images need them)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import ediri_vultr as vultr
import pulumi
import pulumi_libvirt as libvirt

from mailsite.model import HostAddresses, Site


@dataclass
class SiteAddressesArgs:
    site: Site


class SiteAddresses(pulumi.ComponentResource):
    """Vultr: one reserved IPv4 per host. libvirt: the site's routed network, hosts at fixed addresses."""

    addresses: dict[str, pulumi.Output[HostAddresses]]
    reserved_ip_ids: dict[str, pulumi.Output[str]]
    network_id: pulumi.Output[str] | None

    def __init__(self, name: str, args: SiteAddressesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:SiteAddresses", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        site = args.site
        self.reserved_ip_ids = {}
        self.network_id = None
        if site.target == "vultr":
            self.addresses = {}
            for host in site.hosts:
                reserved = vultr.ReservedIp(
                    f"{name}-{host.name}-ipv4",
                    ip_type="v4",
                    region=site.vultr.region,
                    label=f"{host.mx_name} (mailsite)",
                    # Losing it would change the MX's address under DNS, PTR and peers' configs.
                    opts=pulumi.ResourceOptions(parent=self, protect=True),
                )
                self.reserved_ip_ids[host.name] = reserved.id
                # On Vultr IPv6 is the instance's own; nothing baked into an image needs it.
                self.addresses[host.name] = reserved.subnet.apply(lambda ip: HostAddresses(ipaddress.IPv4Address(ip)))
        else:
            network4, network6 = site.ipv4_network(), site.ipv6_network()
            network = libvirt.Network(
                f"{name}-network",
                name=site.libvirt.network_name,
                # Routed, not NAT: the MXes must be reachable at their own addresses.
                mode="route",
                bridge=site.libvirt.bridge,
                addresses=[str(n) for n in (network4, network6) if n],
                # The hosts' addresses are fixed in their images: a DHCP server on the network
                # could only hand a stray guest an address of the site's.
                dhcp=libvirt.NetworkDhcpArgs(enabled=False),
                autostart=True,
                # `dhcp` forces a new network (ForceNew in terraform-provider-libvirt 0.8.1), and
                # a network made before this setting has DHCP on. Replacing it would cut every MX
                # off at once (a running VM does not rejoin a recreated bridge), and no drain hook
                # runs, since no VM is deleted. So only a new network gets it; an existing one
                # keeps its DHCP until it is recreated on purpose.
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(ignore_changes=["dhcp"])),
            )
            self.network_id = network.id
            self.addresses = {
                host.name: pulumi.Output.from_input(HostAddresses(host.ipv4, host.ipv6)) for host in site.hosts
            }
        self.register_outputs({"reservedIpIds": self.reserved_ip_ids, "networkId": self.network_id})
