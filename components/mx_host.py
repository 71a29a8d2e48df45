"""MxHost: one MX's VM booted from its baked image, and its reverse DNS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import ediri_vultr as vultr
import pulumi
import pulumi_libvirt as libvirt

from mailsite.model import Host, HostAddresses, Site
from mailsite.rotation import HostControl, drain, ssh_control

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


@dataclass
class MxHostArgs:
    site: Site
    host: Host
    image: pulumi.Input[str]  # Vultr: snapshot id; libvirt: path or URL of the baked qcow2
    addresses: pulumi.Output[HostAddresses]
    reserved_ip_id: pulumi.Input[str] | None = None  # Vultr
    firewall_group_id: pulumi.Input[str] | None = None  # Vultr
    network_id: pulumi.Input[str] | None = None  # libvirt
    control: Callable[[Host], HostControl] = ssh_control  # how the drain reaches the host


def drain_before_delete(host: Host, control: HostControl, minutes: int, peers: dict[str, HostControl]) -> pulumi.ResourceHook:
    """A hook, not a command resource: the drain is the same Python code rotation uses, runs only
    when this VM is really going (replacement or destroy), and a failure stops the delete."""

    def before_delete(_args: pulumi.ResourceHookArgs) -> None:
        # Never two MXes out at once: a change that replaces every host must go one at a time
        # (`pulumi up --parallel 1`), or mail would have nowhere to go.
        away = [name for name, peer in peers.items() if name != host.name and not peer.answers_smtp()]
        if away:
            raise RuntimeError(f"not taking {host.name} down while {', '.join(away)} takes no mail; "
                               "replace hosts one at a time (pulumi up --parallel 1)")
        drained = drain(control, minutes * 60)
        if not drained.drained:
            raise RuntimeError(
                f"{host.name} still holds {len(drained.remaining)} message(s) after {minutes} min; smtp resumed, "
                "VM not deleted. Bring its next hop back (the primary) or raise mailsite:queue.drainMinutes"
            )

    return pulumi.ResourceHook(f"drain-{host.name}", before_delete)


class MxHost(pulumi.ComponentResource):
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str | None]
    instance_id: pulumi.Output[str]

    def __init__(self, name: str, args: MxHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailsite:index:MxHost", name, None, opts)
        peers = {other.name: args.control(other) for other in args.site.hosts}
        self.drain_hook = drain_before_delete(args.host, peers[args.host.name], args.site.queue.drain_minutes, peers)
        self._hooks = pulumi.ResourceHookBinding(before_delete=[self.drain_hook])
        if args.site.target == "vultr":
            self._vultr(name, args)
        else:
            self._libvirt(name, args)
        self.register_outputs({"ipv4": self.ipv4, "ipv6": self.ipv6, "instanceId": self.instance_id})

    def _vultr(self, name: str, args: MxHostArgs) -> None:
        host, site = args.host, args.site
        instance = vultr.Instance(
            f"{name}-instance",
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
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["snapshotId"], delete_before_replace=True, hooks=self._hooks),
        )
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
        addresses = [str(a) for a in (host.ipv4, host.ipv6) if a]
        domain = libvirt.Domain(
            f"{name}-vm",
            name=host.mx_name,
            description=f"mailsite {host.role} MX, preference {host.preference}",
            memory=site.libvirt.memory_mib,
            vcpu=site.libvirt.vcpus,
            disks=[libvirt.DomainDiskArgs(volume_id=volume.id)],
            network_interfaces=[libvirt.DomainNetworkInterfaceArgs(network_id=args.network_id, addresses=addresses, hostname=host.name)],
            xml=libvirt.DomainXmlArgs(xslt=_VMXNET3),
            autostart=True,
            # The fixed address can belong to one VM at a time: the old one goes first.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, hooks=self._hooks),
        )
        self.instance_id = domain.id
        self.ipv4 = pulumi.Output.from_input(str(host.ipv4))
        self.ipv6 = pulumi.Output.from_input(str(host.ipv6) if host.ipv6 else None)
        # Reverse DNS on libvirt is the user's own name server: SiteDns writes the PTR zone lines.
