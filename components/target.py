"""What every target does its own way, behind one interface: MailSite and the shared components
call these methods and never ask which target they run on.

A target is a package, components/<target>/, whose class has each method below. Each method makes
its resources as children of the shared component that calls it (`opts` carries that parent), so
every resource's URN is the shared component's type followed by the target's own resource: a
target never registers a component type of its own, and never renames a resource once a stack
holds it (a renamed resource is deleted and made anew on the next `up`, a VM with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import pulumi

from mailsite.dns import DnsRecord, ReverseRecord
from mailsite.firewall import CloudRule
from mailsite.model import Host, HostAddresses


@dataclass(frozen=True)
class Addresses:
    """Every host's addresses, known before any VM exists (the images carry them)."""

    by_host: dict[str, pulumi.Output[HostAddresses]]  # by host name
    attach: dict[str, pulumi.Input[str]]  # by host name: what its VM takes its address from (Vultr: the reserved IP; libvirt: the routed network)
    # SiteAddresses records these in state as its outputs (reservedIpIds, networkId), as the stacks
    # made before the targets were packages hold them; a target leaves out what it does not make.
    reserved_ip_ids: dict[str, pulumi.Input[str]] = field(default_factory=dict)  # by host name
    network_id: pulumi.Input[str] | None = None  # the network every host sits on


# A host's inbound rules for the provider firewall, given every host's addresses (mailsite.firewall).
RulesFor = Callable[[Host, Mapping[str, HostAddresses]], list[CloudRule]]


@dataclass(frozen=True)
class BakedImage:
    """What the bake made, for the target to publish where its VMs boot from."""

    host: str  # the host's name, for progress lines and errors
    bake: pulumi.Resource  # the bake itself: `pulumi up --replace` names its URN
    path: pulumi.Output[str]  # the image in the bake cache on this machine
    url: pulumi.Output[str]  # secret: a presigned URL of the upload (only when the target uploads)
    object_key: pulumi.Output[str]  # the upload's key in the bucket (only when the target uploads)
    upload: dict[str, Any] | None  # the bucket, as the bake received it (ObjectStorage as JSON)


@dataclass(frozen=True)
class VmArgs:
    host: Host  # the MX: its name, role and preference name and label the VM
    image: pulumi.Input[str]  # what publish_image returned for this host
    addresses: pulumi.Output[HostAddresses]  # as its image carries them
    attach: pulumi.Input[str] | None  # from Addresses.attach
    firewall_id: pulumi.Input[str] | None  # from firewall(): the provider firewall in front of it, if any
    data_disk: pulumi.Input[str] | None = None  # from data_volume(): a disk the VM boots with beside its own (the primary's mail volume)


@dataclass(frozen=True)
class Vm:
    resource: pulumi.Resource  # the VM: the next host's VM is made after it; the drain hook runs before it goes
    instance_id: pulumi.Output[str]
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str | None]


@dataclass(frozen=True)
class DnsArgs:
    """What the site's zones hold, as mailsite.dns computes it: a target only writes it down."""

    domains: list[str]  # the site's mail domains: one zone each
    named: list[DnsRecord]  # the records without an address in them (MX, SPF, DMARC, SRV, CAA, DKIM...)
    address_names: list[tuple[str, Host]]  # each name that carries a host's A/AAAA, with that host
    ipv4: Mapping[str, pulumi.Input[str]]  # by host name, as the VMs have them
    ipv6: Mapping[str, pulumi.Input[str | None]]  # by host name
    records: pulumi.Output[tuple[list[DnsRecord], list[ReverseRecord]]]  # all of them, once the addresses are known
    ttl: int  # of every record (dns.ttl)
    nameservers: list[str]  # dns.nameservers: empty for zone files to $INCLUDE, else complete zones with these NS
    contact: str  # the SOA's mailbox, in a complete zone
    # The primary's VM, whose httpd serves the MTA-STS policy: the policy's id changes after it is
    # up, or a sender fetches the old policy under the new id and keeps it for max_age.
    policy_server: pulumi.Resource | None = None


class Target(Protocol):
    name: str  # the `target` setting's value: its row in mailsite.targets (image format, the VM's resource name)
    uploads_images: bool  # the bake uploads each image to images.objectStorage for the target to fetch

    def providers(self, name: str, opts: pulumi.ResourceOptions) -> dict[str, pulumi.ProviderResource]:
        """Explicit providers for the site's resources (the stack's own libvirt URI, say); {} for the defaults."""
        ...

    def addresses(self, name: str, hosts: list[Host], opts: pulumi.ResourceOptions) -> Addresses: ...

    def firewall(self, name: str, hosts: list[Host], addresses: Mapping[str, pulumi.Output[HostAddresses]],
                 rules: RulesFor, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
        """The provider firewall in front of each host, by host name; {} where pf is the whole firewall."""
        ...

    def publish_image(self, name: str, baked: BakedImage, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """Where this host's VMs boot from (a snapshot id, a qcow2 path), once it can boot from it."""
        ...

    def vm(self, name: str, args: VmArgs, parent: pulumi.Resource, vm_options: pulumi.ResourceOptions) -> Vm:
        """The VM and what belongs to it (disk, reverse DNS); `vm_options` (the chain, the drain hook,
        old-first replacement) go on the VM itself."""
        ...

    def dns(self, name: str, args: DnsArgs, opts: pulumi.ResourceOptions) -> dict[str, pulumi.Output[str]]:
        """The site's DNS; the zone files written, by zone name ({} when the provider serves the zones)."""
        ...

    # The primary's mail volume, in two steps because targets attach it at different times: a
    # libvirt domain boots with it as a disk (made first, handed to vm() as VmArgs.data_disk),
    # Vultr attaches it to an instance that exists. Each target makes the volume in one of them
    # and returns None from the other, so components/data_volume.py never asks which target it is.
    def data_volume(self, name: str, size_gb: int, opts: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        """A volume made before the VM, for VmArgs.data_disk; None where attach_data_volume makes it."""
        ...

    def attach_data_volume(self, name: str, size_gb: int, instance_id: pulumi.Output[str],
                           opts: pulumi.ResourceOptions) -> pulumi.Output[str] | None:
        """The volume made attached to the VM `instance_id`; None where the VM boots with it."""
        ...
