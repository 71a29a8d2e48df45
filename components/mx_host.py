"""MxHost: one MX's VM booted from its baked image, and its reverse DNS."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Awaitable, Callable

import ediri_vultr as vultr
import pulumi
import pulumi_libvirt as libvirt

from mailsite.departure import DECOMMISSION, PEER_BOOT_MINUTES, departing, drain_departing
from mailsite.hosts import HostControl, ssh_to
from mailsite.model import Host, HostAddresses, Site
from mailsite.replacement import MX_HOST, vm_of

# OpenBSD names a vmxnet3 NIC vmx0; libvirt's default model (virtio) would be vio0.
_VMXNET3 = """<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output omit-xml-declaration="yes" indent="yes"/>
  <xsl:template match="node()|@*"><xsl:copy><xsl:apply-templates select="node()|@*"/></xsl:copy></xsl:template>
  <xsl:template match="/domain/devices/interface/model"><model type="vmxnet3"/></xsl:template>
  <xsl:template match="/domain/devices/interface[not(model)]">
    <xsl:copy><xsl:apply-templates select="node()|@*"/><model type="vmxnet3"/></xsl:copy>
  </xsl:template>
</xsl:stylesheet>
"""

# One name for every VM's hook, registered by every run of the program: the engine looks a
# deleted resource's hooks up by the names its state recorded, so a per-host name would be gone
# from the program exactly when its host leaves the stack file, and that `up` would fail.
DRAIN_HOOK = "mailsite-drain"


def drain_callback(site: Site, stack: str, control: Callable[[str], HostControl] = ssh_to,
                   peer_wait: float = PEER_BOOT_MINUTES * 60, poll: float = 5.0) -> Callable[[pulumi.ResourceHookArgs], Awaitable[None]]:
    """What runs before any VM of the site is deleted: find the MX from the VM's old state, then
    drain it (see mailsite.departure for why each case is decided as it is)."""

    async def before_delete(args: pulumi.ResourceHookArgs) -> None:
        departure = departing(site, stack, args.old_inputs, args.old_outputs, os.environ.get(DECOMMISSION), vm=args.name)
        # The drain takes up to drainMinutes; the program's event loop also serves the engine's
        # other callbacks meanwhile, so it runs in a thread.
        await asyncio.to_thread(drain_departing, site, departure, control, site.queue.drain_minutes * 60, peer_wait, poll)

    return before_delete


def drain_hook(site: Site, stack: str) -> pulumi.ResourceHook:
    """A hook, not a command resource: the drain is the same Python code rotation uses, runs only
    when a VM is really going, and a failure stops the delete."""
    return pulumi.ResourceHook(DRAIN_HOOK, drain_callback(site, stack))


@dataclass
class MxHostArgs:
    site: Site
    host: Host
    image: pulumi.Input[str]  # Vultr: snapshot id; libvirt: path or URL of the baked qcow2
    addresses: pulumi.Output[HostAddresses]
    drain_hook: pulumi.ResourceHook  # the site's one hook, run before this host's VM is deleted
    after: pulumi.Resource | None = None  # the VM this one is created (and replaced) after
    reserved_ip_id: pulumi.Input[str] | None = None  # Vultr
    firewall_group_id: pulumi.Input[str] | None = None  # Vultr
    network_id: pulumi.Input[str] | None = None  # libvirt


class MxHost(pulumi.ComponentResource):
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str | None]
    instance_id: pulumi.Output[str]

    def __init__(self, name: str, args: MxHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(MX_HOST, name, None, opts)
        self.drain_hook = args.drain_hook
        # One VM at a time, in a chain: a change to every image replaces them one after the
        # other whatever `--parallel` says, and a destroy deletes them in the reverse order
        # (backups before the primary they drain to).
        self._vm_options = pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                                  hooks=pulumi.ResourceHookBinding(before_delete=[args.drain_hook]),
                                                  depends_on=[args.after] if args.after is not None else None)
        if args.site.target == "vultr":
            self._vultr(name, args)
        else:
            self._libvirt(name, args)
        self.register_outputs({"ipv4": self.ipv4, "ipv6": self.ipv6, "instanceId": self.instance_id})

    def _vultr(self, name: str, args: MxHostArgs) -> None:
        host, site = args.host, args.site
        instance = vultr.Instance(
            vm_of(name, "vultr"),
            region=site.vultr.region,
            plan=site.vultr.plan,
            snapshot_id=args.image,
            hostname=host.mx_name,
            label=f"{host.mx_name} ({host.role} MX)",
            reserved_ip_id=args.reserved_ip_id,
            enable_ipv6=host.ipv6 is not None,
            firewall_group_id=args.firewall_group_id,
            ssh_key_ids=site.vultr.ssh_key_ids,
            tags=["mailsite", host.role],
            # A new image means a new VM. The reserved IP can be attached to one VM at a time, so
            # the old one goes first; the image's queue was drained before (see rotation).
            opts=pulumi.ResourceOptions.merge(self._vm_options, pulumi.ResourceOptions(replace_on_changes=["snapshotId"])),
        )
        self.vm: pulumi.Resource = instance
        self.instance_id = instance.id
        self.ipv4 = args.addresses.apply(lambda a: str(a.ipv4))
        self.ipv6 = instance.v6_main_ip if host.ipv6 is not None else pulumi.Output.from_input(None)
        # Forward-confirmed reverse DNS: the PTR answers the MX name the A/AAAA records give.
        vultr.ReverseIpv4(f"{name}-ptr4", instance_id=instance.id, ip=self.ipv4, reverse=host.mx_name,
                          opts=pulumi.ResourceOptions(parent=instance))
        if host.ipv6 is not None:
            vultr.ReverseIpv6(f"{name}-ptr6", instance_id=instance.id, ip=instance.v6_main_ip, reverse=host.mx_name,
                              opts=pulumi.ResourceOptions(parent=instance))

    def _libvirt(self, name: str, args: MxHostArgs) -> None:
        host, site = args.host, args.site
        volume = libvirt.Volume(
            f"{name}-disk",
            pool=site.libvirt.pool,
            source=args.image,
            format="qcow2",
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["source"]),
        )
        domain = libvirt.Domain(
            vm_of(name, "libvirt"),
            name=host.mx_name,
            description=f"mailsite {host.role} MX, preference {host.preference}",
            memory=site.libvirt.memory_mib,
            vcpu=site.libvirt.vcpus,
            disks=[libvirt.DomainDiskArgs(volume_id=volume.id)],
            # No `addresses`, `hostname` or `wait_for_lease`: the image sets its own addresses.
            # Given addresses, the provider (terraform-provider-libvirt 0.8.1) writes DHCP host
            # entries, with a MAC on the IPv6 one, which libvirt refuses (upstream #396), and it
            # reads them back from DHCP leases a static OpenBSD never takes: a diff on every refresh.
            network_interfaces=[libvirt.DomainNetworkInterfaceArgs(network_id=args.network_id)],
            xml=libvirt.DomainXmlArgs(xslt=_VMXNET3),
            autostart=True,
            # The fixed address can belong to one VM at a time: the old one goes first.
            opts=self._vm_options,
        )
        self.vm = domain
        self.instance_id = domain.id
        self.ipv4 = pulumi.Output.from_input(str(host.ipv4))
        self.ipv6 = pulumi.Output.from_input(str(host.ipv6) if host.ipv6 else None)
        # Reverse DNS on libvirt is the user's own name server: SiteDns writes the PTR zone lines.
