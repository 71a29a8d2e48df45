"""DataVolume: the primary's persistent mail volume, made once and attached to whichever VM is
the primary. The VM is replaced with every image change (a key rotation, an OpenBSD upgrade);
the volume never is, so the mailboxes and spamd's greylist database outlive it
(docs/operating.md, The mail volume). The image mounts it at boot (configs/mail-volume/rc.securelevel.j2).

Protected and retained: no replacement (a changed region or block type), no removal from the
program and no `pulumi destroy` deletes it; the engine stops with an error instead, and once the
user has unprotected it on purpose, a delete only forgets it (retain_on_delete), leaving the
volume to be deleted by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from .target import Target

DATA_VOLUME = "mailsite:index:DataVolume"

# On the volume itself, not only on the component: the engine acts on each resource's own
# options, and the Python SDK passes a parent's protect on to its children but not its
# retain_on_delete (pulumi 3.272, resource.py).
KEPT = pulumi.ResourceOptions(protect=True, retain_on_delete=True)


@dataclass
class DataVolumeArgs:
    target: Target  # makes the volume: a libvirt volume, Vultr block storage
    size_gb: int  # mailVolume.size in whole G


class DataVolume(pulumi.ComponentResource):
    disk_id: pulumi.Output[str] | None  # for the primary's VmArgs.data_disk, where the VM boots with the volume
    volume_id: pulumi.Output[str] | None  # once made: the volume, whichever step made it

    def __init__(self, name: str, args: DataVolumeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(DATA_VOLUME, name, None, pulumi.ResourceOptions.merge(opts, KEPT))
        self._name, self._args = name, args
        self.disk_id = self.volume_id = args.target.data_volume(name, args.size_gb, self._children())

    def _children(self) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(pulumi.ResourceOptions(parent=self), KEPT)

    def attach(self, instance_id: pulumi.Output[str]) -> None:
        """Attach the volume to the primary's VM, `instance_id`: where the target attaches after
        the VM exists (Vultr), this makes the attachment, and a new primary changes it in place."""
        attached = self._args.target.attach_data_volume(self._name, self._args.size_gb, instance_id, self._children())
        self.volume_id = attached if attached is not None else self.volume_id
        self.register_outputs({"volumeId": self.volume_id, "attachedTo": instance_id})
