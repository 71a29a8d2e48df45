"""MxHost: one MX's VM booted from its baked image, and its reverse DNS."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Awaitable, Callable

import pulumi

from mailsite.departure import DECOMMISSION, PEER_BOOT_MINUTES, departing, drain_departing
from mailsite.hosts import HostControl, ssh_to
from mailsite.model import Host, HostAddresses, Site
from mailsite.replacement import MX_HOST

from .target import Target, VmArgs

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
    target: Target  # makes the VM: a Vultr instance, a libvirt domain
    host: Host  # the MX
    image: pulumi.Input[str]  # from HostImage: a Vultr snapshot id, the path or URL of a libvirt qcow2
    addresses: pulumi.Output[HostAddresses]  # from SiteAddresses, as the image carries them
    drain_hook: pulumi.ResourceHook  # the site's one hook, run before this host's VM is deleted
    after: pulumi.Resource | None = None  # the VM this one is created (and replaced) after
    attach: pulumi.Input[str] | None = None  # from SiteAddresses: what the VM takes its address from
    firewall_id: pulumi.Input[str] | None = None  # from SiteFirewall, where the target has one
    data_disk: pulumi.Input[str] | None = None  # from DataVolume: the mail volume the primary's VM boots with (libvirt); None for the backups


class MxHost(pulumi.ComponentResource):
    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str | None]
    instance_id: pulumi.Output[str]
    vm: pulumi.Resource

    def __init__(self, name: str, args: MxHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(MX_HOST, name, None, opts)
        self.drain_hook = args.drain_hook
        # One VM at a time, in a chain: a change to every image replaces them one after the
        # other whatever `--parallel` says, and a destroy deletes them in the reverse order
        # (backups before the primary they drain to).
        vm_options = pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                            hooks=pulumi.ResourceHookBinding(before_delete=[args.drain_hook]),
                                            depends_on=[args.after] if args.after is not None else None)
        vm = args.target.vm(name, VmArgs(args.host, args.image, args.addresses, args.attach, args.firewall_id, args.data_disk), self, vm_options)
        self.vm, self.instance_id, self.ipv4, self.ipv6 = vm.resource, vm.instance_id, vm.ipv4, vm.ipv6
        self.register_outputs({"ipv4": self.ipv4, "ipv6": self.ipv6, "instanceId": self.instance_id})
