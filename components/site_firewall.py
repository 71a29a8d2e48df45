"""SiteFirewall: the provider firewall in front of each MX, made from the rule set pf is made from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

import ediri_vultr as vultr
import pulumi

from mailsite.firewall import CloudRule, cloud_rules, inbound_services
from mailsite.model import HostAddresses, Site


@dataclass
class SiteFirewallArgs:
    site: Site
    addresses: Mapping[str, pulumi.Output[HostAddresses]]


class SiteFirewall(pulumi.ComponentResource):
    """Vultr: one firewall group per host, exactly that host's services. libvirt has no provider
    firewall in front of a VM: pf on the host is the whole firewall there, so this creates nothing."""

    group_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SiteFirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:SiteFirewall", name, None, opts)
        site = args.site
        self.group_ids = {}
        if site.target == "vultr":
            every = pulumi.Output.all(**args.addresses)
            for host in site.hosts:
                group = vultr.FirewallGroup(
                    f"{name}-{host.name}",
                    description=f"mailsite {host.mx_name} ({host.role} MX)",
                    opts=pulumi.ResourceOptions(parent=self),
                )
                self.group_ids[host.name] = group.id
                # Peers' addresses are outputs, but how many rules there are is fixed by the model
                # (services and how many sources each has): count them on stand-in addresses, then
                # fill each rule in from the real ones.
                stand_ins = _stand_in(site)
                shape = cloud_rules(inbound_services(site, host, stand_ins))
                rules = every.apply(lambda addresses, h=host: cloud_rules(inbound_services(site, h, addresses)))
                for index, stand_in in enumerate(shape):
                    rule = rules.apply(lambda found, i=index: found[i])
                    vultr.FirewallRule(
                        f"{name}-{host.name}-{_rule_name(stand_in, stand_ins)}",
                        firewall_group_id=group.id,
                        ip_type=rule.ip_type,
                        protocol=rule.protocol,
                        subnet=rule.subnet,
                        subnet_size=rule.subnet_size,
                        port=rule.port,
                        notes=rule.notes,
                        opts=pulumi.ResourceOptions(parent=group),
                    )
        self.register_outputs({"groupIds": self.group_ids})


def _rule_name(rule: CloudRule, stand_ins: dict[str, HostAddresses]) -> str:
    """Named by what it lets in, not by position: adding a host or an admin network leaves the
    other rules alone. Peers are named by host (their addresses are not known yet)."""
    peers = {str(a.ipv4): name for name, a in stand_ins.items()}
    source = peers.get(rule.subnet) or f"{rule.subnet}_{rule.subnet_size}".replace(":", "x")
    return f"{rule.notes.split(':')[0]}-{rule.ip_type}-{source}"


def _stand_in(site: Site) -> dict[str, HostAddresses]:
    # 0.0.0.x: no real source is ever one of these, so a stand-in is never taken for a real rule.
    return {h.name: HostAddresses(ipaddress.IPv4Address("0.0.0.1") + i) for i, h in enumerate(site.hosts)}
