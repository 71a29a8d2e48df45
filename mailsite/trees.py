"""Writing rendered host trees to disk (an I/O edge): the whole site or nothing, and never over
what mailsite did not write.

`render --out OUT` builds every host in a directory beside OUT and swaps it in with one rename,
so OUT holds the previous site or the new one, never a mix; a Ctrl-C or a failure leaves the
previous one whole. A marker file lists what a render wrote: a later render replaces only a
directory whose every file is in it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from .dirs import private_directories
from .problems import Problem, SiteConfigError
from .templates import HostTree

MARKER = ".mailsite-render"
_MARKER_AT_MOST = 16 << 20  # a site of thousands of files lists a few hundred kilobytes


def directory_mode(path: str) -> int:
    """A directory's mode on the host, as OpenBSD ships it: root's home private, the rest 0755."""
    return 0o700 if path == "root" or path.startswith("root/") else 0o755


def _directory(root: Path, relative: str) -> None:
    """Each missing directory down to `relative`, with its host mode whatever the umask."""
    current, parts = root, [part for part in relative.split("/") if part]
    for depth, part in enumerate(parts):
        current = current / part
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            continue
        os.chmod(current, directory_mode("/".join(parts[: depth + 1])))


def _file(target: Path, text: str, mode: int) -> None:
    # Created 0600 (less under a strict umask) and given its mode once written: a key is never
    # readable by others, even for a moment, and no file's mode depends on the umask.
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        os.fchmod(handle.fileno(), mode)


def write_tree(root: Path, tree: HostTree) -> None:
    """A host's files below `root` (its /), with the modes they have on the host."""
    if not root.exists():
        root.mkdir(mode=0o700)
        os.chmod(root, 0o755)
    for path, rendered in tree.items():
        _directory(root, path.rpartition("/")[0])
        _file(root / path, rendered.text, rendered.mode)


def _out_problem(out: Path, message: str) -> SiteConfigError:
    return SiteConfigError([Problem("--out", str(out), message)])


def _read_marker(path: Path) -> str:
    """The marker as a render wrote it: a small plain file. A FIFO, a device or a link put in its
    place is no marker (reading one would wait forever or never end)."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY), "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError("not a plain file")
        return handle.read(_MARKER_AT_MOST).decode("utf-8")


def _not_rendered(out: Path) -> str | None:
    """The first thing in `out` that no render wrote, if any."""
    try:
        rendered = set(json.loads(_read_marker(out / MARKER))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return next((entry.name for entry in os.scandir(out)), None)
    directories = {str(parent) for path in rendered for parent in Path(path).parents if str(parent) != "."}
    for directory, subdirectories, files in os.walk(out):
        for name in sorted(subdirectories + files):
            path = str((Path(directory) / name).relative_to(out))
            if path != MARKER and path not in rendered and path not in directories:
                return path
    return None


def _checked_out(out: Path) -> None:
    if out.is_symlink():
        raise _out_problem(out, "is a symbolic link; give the directory itself")
    if out.exists() and not out.is_dir():
        raise _out_problem(out, "is a file; give a directory, which will hold one directory per host")
    if out.is_dir() and os.path.ismount(out):
        raise _out_problem(out, "is a mount point, which cannot be swapped for a new site at once; render into a directory inside it")
    if out.is_dir() and (foreign := _not_rendered(out)) is not None:
        raise _out_problem(out, f"holds {foreign}, which mailsite did not render; move it away, or render into a new directory")


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(new: Path, old: Path) -> None:
    """Swap two directories in one step (Linux renameat2); where it is missing, two renames."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(old), _RENAME_EXCHANGE) == 0:
            return
        if ctypes.get_errno() not in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not on this file system
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(old))
    aside = new.with_name(new.name + ".old")
    old.rename(aside)
    new.rename(old)
    aside.rename(new)


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the swap and its clean-up are done."""
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_trees(out: Path, trees: Mapping[str, HostTree]) -> list[Path]:
    """Every host's tree in out/<host>, swapped in at once; the hosts' directories are returned."""
    _checked_out(out)
    try:
        private_directories(out.parent.resolve())
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.render-", dir=out.parent))
    except OSError as error:
        raise _out_problem(out, f"cannot write beside it ({error.strerror}); choose a directory you can write") from None
    kept = None
    try:
        for host, tree in trees.items():
            write_tree(staging / host, tree)
        files = sorted(f"{host}/{path}" for host, tree in trees.items() for path in tree)
        _file(staging / MARKER, json.dumps({"rendered by": "python -m mailsite render", "files": files}, indent=1) + "\n", 0o600)
        with _uninterrupted():
            if out.exists():
                _exchange(staging, out)
                # Checked again on the previous site itself, now swapped out: what someone wrote into
                # OUT while this render ran is not deleted with it.
                if (foreign := _not_rendered(staging)) is not None:
                    kept = staging
                    raise _out_problem(out, f"rendered, but {foreign} appeared in it meanwhile; the previous site, with it, "
                                            f"is kept in {kept}")
            else:
                staging.rename(out)
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as error:
        raise _out_problem(out, f"cannot write it ({error.strerror}); the previous render, if any, is as it was") from None
    finally:
        if staging != kept:
            shutil.rmtree(staging, ignore_errors=True)
    return [out / host for host in trees]
