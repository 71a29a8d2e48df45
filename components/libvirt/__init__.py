"""The libvirt target: VMs from baked qcow2 volumes on a routed network at fixed addresses, and
zone files for the user's own name server. pf on each host is the whole firewall."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Mapping

import pulumi
import pulumi_libvirt as libvirt

from mailsite.model import Host, HostAddresses
from mailsite.model import Libvirt as LibvirtSettings
from mailsite.replacement import vm_of
from mailsite.targets import TARGETS

from ..target import Addresses, BakedImage, DnsArgs, RulesFor, Vm, VmArgs
from .domain import domain, mail_volume
from .network import routed_network
from .zones import zone_files


class Libvirt:
    name = "libvirt"
    uploads_images = False  # the volume reads the image from the bake cache (or the URL) directly

    def __init__(self, settings: LibvirtSettings, ipv4: ipaddress.IPv4Network, ipv6: ipaddress.IPv6Network | None):
        self.settings = settings
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [n for n in (ipv4, ipv6) if n]

    def providers(self, name: str, opts: pulumi.ResourceOptions) -> dict[str, pulumi.ProviderResource]:
        # The stack's own libvirt URI (qemu+ssh://... for a remote host), not the ambient default.
        return {"libvirt": libvirt.Provider(f"{name}-libvirt", uri=self.settings.uri, opts=opts)}

    def addresses(self, name: str, hosts: list[Host], opts: pulumi.ResourceOptions) -> Addresses:
        return routed_network(name, hosts, self.settings, self.networks, opts)

    def firewall(self, name: str, hosts: list[Host], addresses: Mapping[str, pulumi.Output[HostAddresses]],
                 rules: RulesFor, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
        return {}  # no provider firewall in front of a VM: pf on the host is the whole firewall

    def publish_image(self, name: str, baked: BakedImage, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        return baked.path

    def vm(self, name: str, args: VmArgs, parent: pulumi.Resource, vm_options: pulumi.ResourceOptions) -> Vm:
        return domain(name, vm_of(name, self.name), TARGETS[self.name].image_format, args, self.settings, parent, vm_options)

    def dns(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
        return zone_files(name, args, Path(self.settings.zone_dir), self.networks, opts)

    def data_volume(self, name: str, size_gb: int, opts: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        return mail_volume(name, size_gb, self.settings, opts)

    def attach_data_volume(self, name: str, size_gb: int, instance_id: pulumi.Output[str],
                           opts: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        return None  # the primary's domain boots with it as its second disk (VmArgs.data_disk)
