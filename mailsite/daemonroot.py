"""The daemon root: a Debian trixie tree holding the daemons configtest and the lab run (an I/O edge).

OpenBSD 7.8 ships OpenSMTPD 7.x and OpenBGPD 8.x; Debian 12 has 6.8 and 7.7, two majors behind.
Trixie, from the same package registry, has 7.6 and 8.8, whatever Debian the machine itself runs:
`mmdebstrap` builds a root holding exactly PACKAGES, once per machine, and every parser and daemon
the checks and the lab run comes from it (laid under the host's files with overlayfs, never written).

The registry serves only each package's current revision, so revisions are not pinned: a root
records the exact versions it was built with (reports show them), and refuses to be used when a
major version the checks rely on (MAJORS) has moved, since the grammar they check may have too.

A root is cached below CACHE under a key made of everything it is built from (suite, mirror,
package list): a new list builds a new root and removes the old one. It is built in a scratch
directory and renamed into place whole, its manifest (versions and a checksum of every file of
PACKAGES) written last; each use checks the manifest and the checksums, so a root cut short or
altered since is built again, never used.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
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
# certificates and TLS probes.
PACKAGES = ("opensmtpd", "openbgpd", "dnsmasq-base", "swaks", "openssl", "ca-certificates", "netbase")
# The majors the checks rely on: those of the daemons OpenBSD 7.8 ships.
MAJORS = {"opensmtpd": 7, "openbgpd": 8}
CACHE = Path("/var/cache/mailsite/daemon-root")
MANIFEST = "manifest.json"
_FORMAT = 1  # of the manifest and the build: a change builds every root again
_BUILD_TIMEOUT = 900


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
    home = cache_dir / cache_key(packages)
    root = _verified(home, packages)
    if root is None:
        _require_builder()
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(cache_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two first uses at once build it once
            root = _verified(home, packages) or build(cache_dir, packages)
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
    result = subprocess.run(["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W", "-f", "${Package}\t${Version}\n"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DaemonRootError(f"cannot read the daemon root's package versions: {result.stderr.strip()}")
    return dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)


def _verified(home: Path, packages: tuple[str, ...]) -> DaemonRoot | None:
    """The root cached at `home` if whole and unaltered; None if it must be built (again)."""
    try:
        manifest = json.loads((home / MANIFEST).read_text())
        if manifest["format"] != _FORMAT or manifest["packages"] != list(packages):
            return None
        root = home / "root"
        if _checksums(root, packages) != manifest["checksums"]:
            return None
        return DaemonRoot(root, dict(manifest["versions"]))
    except (OSError, ValueError, KeyError, TypeError, DaemonRootError):
        return None


def build(cache_dir: Path = CACHE, packages: tuple[str, ...] = PACKAGES) -> DaemonRoot:
    """Build the root for `packages` from the registry, record it, and put it in place whole."""
    _require_builder()
    key = cache_key(packages)
    scratch = cache_dir / f"{key}.building"
    shutil.rmtree(scratch, ignore_errors=True)  # what a killed build left
    scratch.mkdir(parents=True)
    print(f"building the daemon root (Debian {SUITE}: {', '.join(packages)}) in {cache_dir / key}; "
          "once per machine, about a minute", file=sys.stderr)
    log = cache_dir / f"{key}.log"
    command = ["mmdebstrap", "--variant=apt", "--mode=root", f"--include={','.join(packages)}", SUITE,
               str(scratch / "root"), MIRROR]
    try:
        with open(log, "w") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=_BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DaemonRootError(f"building the daemon root took over {_BUILD_TIMEOUT} s; see {log}") from None
    if result.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DaemonRootError(f"building the daemon root failed ({last[0]}); see {log}, then run make root")
    root = scratch / "root"
    versions = _installed_versions(root)
    manifest = {"format": _FORMAT, "suite": SUITE, "mirror": MIRROR, "packages": list(packages),
                "versions": versions, "checksums": _checksums(root, packages)}
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    home = cache_dir / key
    shutil.rmtree(home, ignore_errors=True)  # a damaged root of the same list
    scratch.rename(home)
    for stale in cache_dir.iterdir():  # roots of other package lists: this machine's list changed
        if stale.is_dir() and stale.name != key:
            shutil.rmtree(stale, ignore_errors=True)
    return DaemonRoot(home / "root", versions)


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
    options = parser.parse_args(argv)
    try:
        root = build() if options.rebuild else daemon_root()
        _check_majors(root)
    except MailsiteError as error:
        print(f"mailsite: {error}", file=sys.stderr)
        return error.exit_code
    print(root.path)
    for package in PACKAGES:
        print(f"{package}\t{root.version(package)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
