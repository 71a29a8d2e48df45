"""The primary's mail volume on Vultr: block storage in the stack's region, attached to the
primary's instance."""

from __future__ import annotations

import ediri_vultr as vultr
import pulumi

from mailsite.model import Vultr as VultrSettings


def block_storage(name: str, size_gb: int, instance_id: pulumi.Output[str], settings: VultrSettings,
                  opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    storage = vultr.BlockStorage(
        f"{name}-volume",
        # Vultr attaches a volume only to an instance of its own region. Region and block type
        # force a new volume (terraform-provider-vultr's schema): the type is written out, so
        # that a later change of Vultr's default never reads as a change of ours.
        region=settings.region,
        block_type=settings.block_type,
        size_gb=size_gb,  # grows in place; the file system then needs growfs by hand
        attached_to_instance=instance_id,
        # Attached with a restart: a live attach needs the guest to see a hot-plugged disk, and
        # OpenBSD's virtio disks are not known to. A new primary boots once without the volume,
        # and its image keeps mail queued meanwhile (rc.securelevel leaves the mount point shut).
        live=False,
        # The label changes with the instance, for a bug: ediri_vultr 2.27.1 bridges
        # terraform-provider-vultr <= 2.28.0, whose update always sends PATCH /blocks/{id} before
        # attaching; with nothing else changed Vultr answers 400 "Nothing to change" and the
        # volume is never attached to the new primary (vultr/terraform-provider-vultr#660, the
        # same in Pulumi: dirien/pulumi-vultr#650; fixed by vultr/terraform-provider-vultr#675 in
        # 2.28.1). A label naming the instance makes that PATCH carry a change whenever the
        # attachment does. Keep it until a release of ediri_vultr bridges 2.28.1 or later.
        label=instance_id.apply(lambda instance: f"mailsite mail for {instance}"),
        opts=opts,
    )
    return storage.id
