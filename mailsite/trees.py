"""Writing rendered host trees to disk (an I/O edge): whole trees or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from .render import HostTree


def write_tree(root: Path, tree: HostTree) -> None:
    for path, rendered in tree.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        # Created with its final mode, so a key is never readable by others, even for a moment.
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, rendered.mode)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(rendered.text)
        os.chmod(target, rendered.mode)


def write_trees(out: Path, trees: Mapping[str, HostTree]) -> list[Path]:
    """Write each host's tree to out/<host>; a host's old tree is replaced only once all are written."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out))
    try:
        os.chmod(staging, 0o700)
        for host, tree in trees.items():
            write_tree(staging / host, tree)
        written = []
        for host in trees:
            final = out / host
            if final.exists():
                shutil.rmtree(final)
            (staging / host).rename(final)
            written.append(final)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
