"""SiteFirewall: the provider firewall in front of each MX, made from the rule set pf is made from."""

from __future__ import annotations

import dataclasses
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
                # Peers' addresses are outputs, unknown until their reserved IPs exist; everything
                # else in a rule (family, protocol, port, prefix length, every other source) the
                # model fixes. So each rule is taken from the model, on stand-in addresses, and only
                # a peer's address comes from the output: a first preview shows every port, and the
                # policy pack can judge the rules then, not only after the `up`.
                stand_ins = _stand_in(site)
                peers = {str(a.ipv4) for a in stand_ins.values()}
                shape = cloud_rules(inbound_services(site, host, stand_ins))
                rules = every.apply(lambda addresses, h=host: cloud_rules(inbound_services(site, h, addresses)))
                for index, known in enumerate(shape):
                    subnet = rules.apply(lambda found, i=index, k=known: _peer_address(found[i], k)) if known.subnet in peers else known.subnet
                    vultr.FirewallRule(
                        f"{name}-{host.name}-{_rule_name(known, stand_ins)}",
                        firewall_group_id=group.id,
                        ip_type=known.ip_type,
                        protocol=known.protocol,
                        subnet=subnet,
                        subnet_size=known.subnet_size,
                        port=known.port,
                        notes=known.notes,
                        opts=pulumi.ResourceOptions(parent=group),
                    )
        self.register_outputs({"groupIds": self.group_ids})


def _peer_address(found: CloudRule, known: CloudRule) -> str:
    # The rules are made in the model's order, whatever the addresses: a difference here is a bug.
    if dataclasses.replace(found, subnet=known.subnet) != known:
        raise AssertionError(f"firewall rule {known.notes!r} has another shape on the real addresses: {found}")
    return found.subnet


def _rule_name(rule: CloudRule, stand_ins: dict[str, HostAddresses]) -> str:
    """Named by what it lets in, not by position: adding a host or an admin network leaves the
    other rules alone. Peers are named by host (their addresses are not known yet)."""
    peers = {str(a.ipv4): name for name, a in stand_ins.items()}
    source = peers.get(rule.subnet) or f"{rule.subnet}_{rule.subnet_size}".replace(":", "x")
    return f"{rule.notes.split(':')[0]}-{rule.ip_type}-{source}"


def _stand_in(site: Site) -> dict[str, HostAddresses]:
    # 0.0.0.x: no real source is ever one of these, so a stand-in is never taken for a real rule.
    return {h.name: HostAddresses(ipaddress.IPv4Address("0.0.0.1") + i) for i, h in enumerate(site.hosts)}
