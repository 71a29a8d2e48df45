"""One firewall group per host, exactly that host's services (the rule set pf is made from)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping

import ediri_vultr as vultr
import pulumi

from mailsite.firewall import CloudRule
from mailsite.model import Host, HostAddresses

from ..target import RulesFor


def firewall_groups(name: str, hosts: list[Host], addresses: Mapping[str, pulumi.Output[HostAddresses]],
                    rules_for: RulesFor, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
    group_ids: dict[str, pulumi.Output[str]] = {}
    every = pulumi.Output.all(**addresses)
    for host in hosts:
        group = vultr.FirewallGroup(
            f"{name}-{host.name}",
            description=f"mailsite {host.mx_name} ({host.role} MX)",
            opts=opts,
        )
        group_ids[host.name] = group.id
        # Peers' addresses are outputs, unknown until their reserved IPs exist; everything
        # else in a rule (family, protocol, port, prefix length, every other source) the
        # model fixes. So each rule is taken from the model, on stand-in addresses, and only
        # a peer's address comes from the output: a first preview shows every port, and the
        # policy pack can judge the rules then, not only after the `up`.
        stand_ins = _stand_in(hosts)
        peers = {str(a.ipv4) for a in stand_ins.values()}
        shape = rules_for(host, stand_ins)
        rules = every.apply(_rules_of(host, rules_for))
        for index, known in enumerate(shape):
            subnet = rules.apply(_peer_of(index, known)) if known.subnet in peers else known.subnet
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
    return group_ids


def _rules_of(host: Host, rules_for: RulesFor) -> Callable[[dict[str, HostAddresses]], list[CloudRule]]:
    return lambda found: rules_for(host, found)


def _peer_of(index: int, known: CloudRule) -> Callable[[list[CloudRule]], str]:
    return lambda found: _peer_address(found[index], known)


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
    return f"{rule.name}-{rule.ip_type}-{source}"


def _stand_in(hosts: list[Host]) -> dict[str, HostAddresses]:
    # 0.0.0.x: no real source is ever one of these, so a stand-in is never taken for a real rule.
    return {h.name: HostAddresses(ipaddress.IPv4Address("0.0.0.1") + i) for i, h in enumerate(hosts)}
