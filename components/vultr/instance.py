"""An MX's Vultr instance, booted from its snapshot at its reserved IP, and its reverse DNS."""

from __future__ import annotations

import ediri_vultr as vultr
import pulumi

from mailsite.model import Vultr as VultrSettings

from ..target import Vm, VmArgs


def instance(name: str, vm_name: str, args: VmArgs, settings: VultrSettings, vm_options: pulumi.ResourceOptions) -> Vm:
    """`vm_name`: the Instance's resource name (mailsite.replacement.vm_of), `name` its MxHost's."""
    host = args.host
    instance = vultr.Instance(
        vm_name,
        region=settings.region,
        plan=settings.plan,
        snapshot_id=args.image,
        hostname=host.mx_name,
        label=f"{host.mx_name} ({host.role} MX)",
        reserved_ip_id=args.attach,
        enable_ipv6=host.ipv6 is not None,
        firewall_group_id=args.firewall_id,
        ssh_key_ids=settings.ssh_key_ids,
        tags=["mailsite", host.role],
        # A new image means a new VM. The reserved IP can be attached to one VM at a time, so
        # the old one goes first; the image's queue was drained before (see rotation).
        opts=pulumi.ResourceOptions.merge(vm_options, pulumi.ResourceOptions(replace_on_changes=["snapshotId"])),
    )
    ipv4 = args.addresses.apply(lambda a: str(a.ipv4))
    ipv6 = instance.v6_main_ip if host.ipv6 is not None else pulumi.Output.from_input(None)
    # Forward-confirmed reverse DNS: the PTR answers the MX name the A/AAAA records give.
    vultr.ReverseIpv4(f"{name}-ptr4", instance_id=instance.id, ip=ipv4, reverse=host.mx_name,
                      opts=pulumi.ResourceOptions(parent=instance))
    if host.ipv6 is not None:
        vultr.ReverseIpv6(f"{name}-ptr6", instance_id=instance.id, ip=instance.v6_main_ip, reverse=host.mx_name,
                          opts=pulumi.ResourceOptions(parent=instance))
    return Vm(instance, instance.id, ipv4, ipv6)
