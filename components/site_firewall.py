"""SiteFirewall: the provider firewall in front of each MX, made from the rule set pf is made from.
Where the target has none (libvirt), pf on the host is the whole firewall and this holds nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi

from mailsite.model import Host, HostAddresses

from .target import RulesFor, Target


@dataclass
class SiteFirewallArgs:
    target: Target  # Vultr: a firewall group per host; libvirt: none
    hosts: list[Host]  # every MX of the site, in the site's order
    addresses: Mapping[str, pulumi.Output[HostAddresses]]  # by host name, from SiteAddresses
    rules: RulesFor  # a host's inbound rules given every host's addresses (mailsite.firewall)


class SiteFirewall(pulumi.ComponentResource):
    group_ids: dict[str, pulumi.Output[str]]  # by host name; empty where the target has no provider firewall

    def __init__(self, name: str, args: SiteFirewallArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:SiteFirewall", name, None, opts)
        self.group_ids = args.target.firewall(name, args.hosts, args.addresses, args.rules, pulumi.ResourceOptions(parent=self))
        self.register_outputs({"groupIds": self.group_ids})
