"""An MX's libvirt domain, booted from a volume of its baked qcow2 image."""

from __future__ import annotations

import pulumi
import pulumi_libvirt as libvirt

from mailsite.model import Libvirt as LibvirtSettings

from ..target import Vm, VmArgs

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


def domain(name: str, vm_name: str, image_format: str, args: VmArgs, settings: LibvirtSettings,
           parent: pulumi.Resource, vm_options: pulumi.ResourceOptions) -> Vm:
    """`vm_name`: the Domain's resource name (mailsite.replacement.vm_of), `name` its MxHost's;
    `image_format`: the disk format the bake wrote (mailsite.targets)."""
    host = args.host
    volume = libvirt.Volume(
        f"{name}-disk",
        pool=settings.pool,
        source=args.image,
        format=image_format,
        opts=pulumi.ResourceOptions(parent=parent, replace_on_changes=["source"]),
    )
    made = libvirt.Domain(
        vm_name,
        name=host.mx_name,
        description=f"mailsite {host.role} MX, preference {host.preference}",
        memory=settings.memory_mib,
        vcpu=settings.vcpus,
        # The mail volume second: OpenBSD sees virtio disks in this order (sd0 boots, sd1 is mail),
        # though the image finds the volume by its disklabel UID, never by its unit.
        disks=[libvirt.DomainDiskArgs(volume_id=volume.id)]
              + ([libvirt.DomainDiskArgs(volume_id=args.data_disk)] if args.data_disk is not None else []),
        # No `addresses`, `hostname` or `wait_for_lease`: the image sets its own addresses.
        # Given addresses, the provider (terraform-provider-libvirt 0.8.1) writes DHCP host
        # entries, with a MAC on the IPv6 one, which libvirt refuses (upstream #396), and it
        # reads them back from DHCP leases a static OpenBSD never takes: a diff on every refresh.
        network_interfaces=[libvirt.DomainNetworkInterfaceArgs(network_id=args.attach)],
        xml=libvirt.DomainXmlArgs(xslt=_VMXNET3),
        autostart=True,
        # The fixed address can belong to one VM at a time: the old one goes first.
        opts=vm_options,
    )
    # Reverse DNS on libvirt is the user's own name server: the zone files hold the PTR lines.
    return Vm(made, made.id, pulumi.Output.from_input(str(host.ipv4)),
              pulumi.Output.from_input(str(host.ipv6) if host.ipv6 else None))


def mail_volume(name: str, size_gb: int, settings: LibvirtSettings, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    """The primary's mail volume: a blank qcow2 volume of its own in the pool, which a domain's
    deletion never touches (terraform-provider-libvirt 0.8.1 only destroys and undefines it)."""
    volume = libvirt.Volume(
        f"{name}-volume",
        pool=settings.pool,
        size=size_gb << 30,  # bytes
        format="qcow2",
        # Every field of a libvirt volume forces a new one in the provider, size too: a larger
        # mailVolume.size would be an empty volume in place of the mail (protect refuses it).
        # The volume grows by hand (virsh vol-resize, then growfs on the primary).
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["size"])),
    )
    return volume.id
