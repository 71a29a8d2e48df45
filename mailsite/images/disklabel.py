"""The installer's autopartitioning template: the model's disk layout in disklabel(8)'s words."""

from __future__ import annotations

from ..model import DiskPartition, size_text


def render_disklabel_template(layout: list[DiskPartition]) -> str:
    """One line per partition, `mountpoint min-max share%` (disklabel(8), AUTOMATIC DISK
    ALLOCATION); `*` for no maximum. disklabel reads no comments, so the file holds none."""
    lines = []
    for partition in layout:
        # A mount point, or one of the man page's special tokens (SWAP, RAID).
        name = partition.mount_point if partition.mount_point.startswith("/") else partition.mount_point.upper()
        top = "*" if partition.max_bytes is None else size_text(partition.max_bytes)
        lines.append(f"{name} {size_text(partition.min_bytes)}-{top} {partition.share}%")
    return "\n".join(lines) + "\n"
