"""SiteAddresses: every host's addresses, known before any VM exists (the images need them)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from mailsite.model import Host, HostAddresses

from .target import Target


@dataclass
class SiteAddressesArgs:
    target: Target  # makes them: Vultr reserves an IPv4 per host, libvirt routes the site's network
    hosts: list[Host]  # every MX of the site


class SiteAddresses(pulumi.ComponentResource):
    addresses: dict[str, pulumi.Output[HostAddresses]]  # by host name
    attach: dict[str, pulumi.Input[str]]  # by host name: what its VM takes its address from

    def __init__(self, name: str, args: SiteAddressesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:SiteAddresses", name, None, opts)
        made = args.target.addresses(name, args.hosts, pulumi.ResourceOptions(parent=self))
        self.addresses, self.attach = made.by_host, made.attach
        # A null output is left out of state: Vultr's stacks hold no networkId, libvirt's an empty reservedIpIds.
        self.register_outputs({"reservedIpIds": made.reserved_ip_ids, "networkId": made.network_id})
