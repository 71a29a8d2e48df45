"""Directories the tool creates for files that hold keys: private, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path


def private_directories(path: Path) -> None:
    """`path` and each missing parent, created 0700; directories that exist are left as they are."""
    missing = []
    for directory in [path, *path.parents]:
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)  # mkdir's mode is cut by the umask, never widened by it
