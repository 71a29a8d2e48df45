"""The Vultr target: instances from baked snapshots, reserved IPs, firewall groups, Vultr DNS."""

from __future__ import annotations

from typing import Mapping

import pulumi

from mailsite.model import Host, HostAddresses
from mailsite.model import Vultr as VultrSettings
from mailsite.replacement import vm_of

from ..target import Addresses, BakedImage, DnsArgs, RulesFor, Vm, VmArgs
from .addresses import reserved_ips
from .block_storage import block_storage
from .dns import vultr_dns
from .firewall import firewall_groups
from .instance import instance
from .snapshots import snapshot_of


class Vultr:
    name = "vultr"
    # Vultr makes a snapshot from a URL: the bake uploads the raw image for it to fetch.
    uploads_images = True

    def __init__(self, settings: VultrSettings):
        self.settings = settings

    def providers(self, name: str, opts: pulumi.ResourceOptions) -> dict[str, pulumi.ProviderResource]:
        return {}  # the default provider, configured by the stack's vultr:apiKey

    def addresses(self, name: str, hosts: list[Host], opts: pulumi.ResourceOptions) -> Addresses:
        return reserved_ips(name, hosts, self.settings.region, opts)

    def firewall(self, name: str, hosts: list[Host], addresses: Mapping[str, pulumi.Output[HostAddresses]],
                 rules: RulesFor, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
        return firewall_groups(name, hosts, addresses, rules, opts)

    def publish_image(self, name: str, baked: BakedImage, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        return snapshot_of(name, baked, opts)

    def vm(self, name: str, args: VmArgs, parent: pulumi.Resource, vm_options: pulumi.ResourceOptions) -> Vm:
        return instance(name, vm_of(name, self.name), args, self.settings, vm_options)

    def dns(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
        if self.settings.dns:
            vultr_dns(name, args, opts)
        return {}

    def data_volume(self, name: str, size_gb: int, opts: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        return None  # block storage is made attached to the instance (attach_data_volume)

    def attach_data_volume(self, name: str, size_gb: int, instance_id: pulumi.Output[str],
                           opts: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        return block_storage(name, size_gb, instance_id, self.settings, opts)
