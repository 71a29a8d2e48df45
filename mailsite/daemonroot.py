"""The daemon root: a Debian trixie tree holding the daemons configtest and the lab run (an I/O edge).

OpenBSD 7.8 ships OpenSMTPD 7.x and OpenBGPD 8.x; Debian 12 has 6.8 and 7.7, two majors behind.
Trixie, from the same package registry, has 7.6 and 8.8, whatever Debian the machine itself runs:
`mmdebstrap` builds a root holding exactly PACKAGES, once per machine, and every parser and daemon
the checks and the lab run comes from it (laid under the host's files with overlayfs, never written).

The registry serves only each package's current revision, so revisions are not pinned: a root
records the exact versions it was built with (reports show them), and refuses to be used when a
major version the checks rely on (MAJORS) has moved, since the grammar they check may have too.

A root is cached below CACHE under a key made of everything it is built from (suite, mirror,
package list): a new list builds a new root beside the old one, which a lab may still run from
(`--prune` removes the roots of other lists). It is built in a scratch directory and renamed into
place whole, its manifest written last: every file's type, owner, mode, size and modification time
(a link's target), and a checksum of every file of PACKAGES. Each use checks the whole manifest,
so a root cut short or altered since (a file changed, added or removed) is built again, never
used; the versions reported are read from the root's own dpkg database at each use.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterable

from .errors import MailsiteError, UserError

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
# What the checks and the lab run, and what they need around it: netbase's /etc/services (smtpd
# refuses `port submission` without it), the CA bundle the lab adds its CA to, openssl for test
# certificates and TLS probes, Net::SSLeay for swaks's TLS (only recommended, and mmdebstrap
# installs no recommendations), dig for the lab's DNS queries.
PACKAGES = ("opensmtpd", "openbgpd", "dnsmasq-base", "swaks", "libnet-ssleay-perl", "openssl", "bind9-dnsutils",
            "ca-certificates", "netbase")
# The majors the checks rely on: those of the daemons OpenBSD 7.8 ships.
MAJORS = {"opensmtpd": 7, "openbgpd": 8}
CACHE = Path("/var/cache/mailsite/daemon-root")
MANIFEST = "manifest.json"
_FORMAT = 2  # of the manifest and the build: a change builds every root again
_BUILD_TIMEOUT = 600


class DaemonRootError(MailsiteError):
    """The daemon root could not be built or used: one line saying why and what to do."""


@dataclass(frozen=True)
class DaemonRoot:
    path: Path  # the root's "/": read-only for everyone, laid under other files, never written
    versions: dict[str, str]  # package -> the exact Debian version it was built with

    def version(self, package: str) -> str:
        return self.versions[package]

    def describe(self, packages: Iterable[str] = PACKAGES) -> str:
        """"opensmtpd 7.6.0p1-1, openbgpd 8.8-1": what reports say checked or ran something."""
        return ", ".join(f"{package} {self.versions[package]}" for package in packages)


def cache_key(packages: Iterable[str] = PACKAGES) -> str:
    recipe = json.dumps({"format": _FORMAT, "suite": SUITE, "mirror": MIRROR, "packages": sorted(packages)})
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def daemon_root(cache_dir: Path = CACHE) -> DaemonRoot:
    """The machine's daemon root, checked, built first if it is missing, stale or damaged."""
    return _daemon_root(cache_dir, PACKAGES)


@cache
def _daemon_root(cache_dir: Path, packages: tuple[str, ...]) -> DaemonRoot:
    # Checked once per process: a lab up or a configtest run calls this many times.
    root = _verified(cache_dir / cache_key(packages), packages)
    if root is None:
        root = build(cache_dir, packages, again=False)
    _check_majors(root)
    return root


def _require_builder() -> None:
    if os.geteuid() != 0:
        raise UserError("the daemon root (Debian trixie's smtpd and bgpd) is built as root: run this as root")
    if shutil.which("mmdebstrap") is None:
        raise UserError("the daemon root is built with mmdebstrap, which is not installed here: "
                        "apt-get install mmdebstrap (make deps)")


def _package_files(root: Path, package: str) -> list[str]:
    """The regular files dpkg installed for `package`, relative to the root, sorted."""
    info = root / "var/lib/dpkg/info"
    listing = next((path for path in (info / f"{package}.list", *info.glob(f"{package}:*.list")) if path.is_file()), None)
    if listing is None:
        raise DaemonRootError(f"the daemon root has no package {package}; run make root")
    files = []
    for line in listing.read_text().splitlines():
        path = root / line.lstrip("/")
        if line.startswith("/") and path.is_file() and not path.is_symlink():
            files.append(line.lstrip("/"))
    return sorted(files)


def _checksums(root: Path, packages: Iterable[str]) -> dict[str, str]:
    sums = {}
    for package in packages:
        for relative in _package_files(root, package):
            sums[relative] = hashlib.sha256((root / relative).read_bytes()).hexdigest()
    return sums


def _installed_versions(root: Path) -> dict[str, str]:
    """package -> version, from the root's own dpkg database (never from the manifest's word)."""
    versions = {}
    for stanza in (root / "var/lib/dpkg/status").read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Status): (.*)$", stanza, re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


def _inventory(root: Path) -> dict[str, list[int | str]]:
    """Every entry below the root (on its file system): type and mode, owner, size and
    modification time; a link's target. What a build left, to compare each use against."""
    device = root.stat().st_dev
    entries: dict[str, list[int | str]] = {}

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as found:
            for entry in found:
                info = entry.stat(follow_symlinks=False)
                name = prefix + entry.name
                if stat.S_ISLNK(info.st_mode):
                    entries[name] = [info.st_mode, info.st_uid, info.st_gid, os.readlink(entry.path)]
                else:
                    entries[name] = [info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns]
                if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                    walk(Path(entry.path), name + "/")

    walk(root, "")
    return entries


def _verified(home: Path, packages: tuple[str, ...]) -> DaemonRoot | None:
    """The root cached at `home` if whole and unaltered; None if it must be built (again)."""
    try:
        manifest = json.loads((home / MANIFEST).read_text())
        if manifest["format"] != _FORMAT or manifest["packages"] != list(packages):
            return None
        root = home / "root"
        if _inventory(root) != manifest["inventory"] or _checksums(root, packages) != manifest["checksums"]:
            return None
        return DaemonRoot(root, _installed_versions(root))
    except (OSError, ValueError, KeyError, TypeError, DaemonRootError):
        return None


def _unmount_below(directory: Path) -> None:
    """Unmount what a killed build left mounted in its scratch root (mmdebstrap mounts /proc,
    /sys and /dev there), deepest first, so that removing it never walks into this machine's."""
    prefix = str(directory.resolve()) + "/"
    mounted = [line.split()[1].replace("\\040", " ") for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounted if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


def _remove(directory: Path) -> None:
    _unmount_below(directory)
    shutil.rmtree(directory, ignore_errors=True)


def _failure(log: Path) -> str:
    """The line of mmdebstrap's log that says why, not its closing "mmdebstrap failed to run"."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "W:")) and "mmdebstrap failed to run" not in line]
    return (errors or lines[-1:] or ["no output"])[0]


def build(cache_dir: Path = CACHE, packages: tuple[str, ...] = PACKAGES, again: bool = True) -> DaemonRoot:
    """Build the root for `packages` from the registry, record it, and put it in place whole;
    `again`: even if the cached one is whole (--rebuild). One build at a time per cache."""
    _require_builder()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first uses at once build it once
        home = cache_dir / cache_key(packages)
        if not again and (root := _verified(home, packages)) is not None:
            return root
        for left in cache_dir.glob("*.building"):  # what a killed build left (under this lock: none runs)
            _remove(left)
        return _build(cache_dir, packages)


def _build(cache_dir: Path, packages: tuple[str, ...]) -> DaemonRoot:
    key = cache_key(packages)
    scratch = cache_dir / f"{key}.building"
    scratch.mkdir()
    print(f"building the daemon root (Debian {SUITE}: {', '.join(packages)}) in {cache_dir / key}; "
          "once per machine, about 30 s", file=sys.stderr)
    log = cache_dir / f"{key}.log"
    command = ["mmdebstrap", "--variant=apt", "--mode=root", f"--include={','.join(packages)}", SUITE,
               str(scratch / "root"), MIRROR]
    with open(log, "w") as out:
        # Its own session: a timeout or an interrupt stops every process of the build, not only the first.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            status = process.wait(timeout=_BUILD_TIMEOUT)
        except BaseException as stopped:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _remove(scratch)
            if isinstance(stopped, subprocess.TimeoutExpired):
                raise DaemonRootError(f"building the daemon root took over {_BUILD_TIMEOUT} s; see {log}") from None
            raise
    if status != 0:
        _remove(scratch)
        raise DaemonRootError(f"building the daemon root failed: {_failure(log)}; the Debian mirror {MIRROR} must be "
                              f"reachable; see {log}, then run make root")
    root = scratch / "root"
    manifest = {"format": _FORMAT, "suite": SUITE, "mirror": MIRROR, "packages": list(packages),
                "inventory": _inventory(root), "checksums": _checksums(root, packages)}
    (scratch / MANIFEST).write_text(json.dumps(manifest, sort_keys=True) + "\n")
    home = cache_dir / key
    _remove(home)  # a damaged root of the same list, or --rebuild
    scratch.rename(home)
    return DaemonRoot(home / "root", _installed_versions(home / "root"))


def prune(cache_dir: Path = CACHE, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Remove the roots of other package lists (a lab still up may run from one: take it down
    first); returns what was removed."""
    keep = cache_key(packages)
    removed = []
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in sorted(cache_dir.iterdir()):
            if entry.name.split(".")[0] == keep or entry.name.startswith("."):
                continue
            if entry.is_dir():
                _remove(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _check_majors(root: DaemonRoot) -> None:
    for package, major in MAJORS.items():
        version = root.versions.get(package, "")
        found = re.match(r"(?:\d+:)?(\d+)\.", version)
        if found is None or int(found[1]) != major:
            raise DaemonRootError(
                f"the daemon root's {package} is {version or 'missing'}, but the checks rely on major {major} "
                f"(what OpenBSD 7.8 ships): check its grammar against OpenBSD's, then change MAJORS in mailsite/daemonroot.py"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailsite.daemonroot",
                                     description="Build (if needed) and check the daemon root; print its versions.")
    parser.add_argument("--rebuild", action="store_true", help="build it again even if the cached one is whole")
    parser.add_argument("--prune", action="store_true",
                        help="remove the roots of other package lists (take a lab running from one down first)")
    options = parser.parse_args(argv)
    try:
        if options.rebuild:
            root = build()
            _check_majors(root)
        else:
            root = daemon_root()  # checks the majors itself
        pruned = prune() if options.prune else []
    except MailsiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-built is kept: run it again", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"error: {error.filename or 'the daemon root'}: {error.strerror}; check the path and its permissions",
              file=sys.stderr)
        return 2
    print(root.path)
    for package in PACKAGES:
        print(f"{package}\t{root.version(package)}")
    for path in pruned:
        print(f"removed {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
