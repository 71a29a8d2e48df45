"""What differs between the places a site can run, as plain facts (no Pulumi here): the model,
the rotation and the drain read them without importing components. The Pulumi side of each target
is its package, components/<target>/; components/targets.py picks one for a site.

A new target adds its row here, a Literal value to `Site.target`, and its package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TargetFacts:
    image_format: str  # the disk format the bake writes: part of every image's identity
    vm_suffix: str  # the VM resource's name after its MxHost's; state holds it, so it never changes


TARGETS: dict[str, TargetFacts] = {
    # Vultr makes snapshots from raw disk images.
    "vultr": TargetFacts(image_format="raw", vm_suffix="instance"),
    "libvirt": TargetFacts(image_format="qcow2", vm_suffix="vm"),
}
