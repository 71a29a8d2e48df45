"""The daemon roots: Debian trees holding the daemons configtest and the lab run (an I/O edge).

OpenBSD 7.8 ships OpenSMTPD 7.x and OpenBGPD 8.x; Debian 12 has 6.8 and 7.7, two majors behind.
Trixie, from the same package registry, has 7.6 and 8.8, whatever Debian the machine itself runs:
`mmdebstrap` builds a root holding exactly its packages, once per machine, and every parser and
daemon the checks and the lab run comes from one (laid under the host's files with overlayfs,
never written). OpenBSD 7.8's packages hold Dovecot 2.3.21.1, whose grammar is not 2.4's (trixie
has 2.4.1): a second root, "dovecot", takes it from bookworm-backports, and nothing else.

The registry serves only each package's current revision, so revisions are not pinned: a root
records the exact versions it was built with (reports show them), and refuses to be used when a
version the checks rely on (MAJORS: a major, or for Dovecot a major and minor) has moved, since the
grammar they check may have too.

A root is cached below CACHE under a key made of everything it is built from (suite, mirror,
package list, what comes from backports): a new list builds a new root beside the old one, which
a lab may still run from (`--prune` removes every root no recipe of ROOTS names). It is built in a
scratch directory and renamed into place whole, its manifest written last: every file's type,
owner, mode, size and modification time (a link's target), and a checksum of every file of its
packages. Each use checks the whole manifest, so a root cut short or altered since (a file
changed, added or removed) is built again, never used; the versions reported are read from the
root's own dpkg database at each use.
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
# installs no recommendations), dig for the lab's DNS queries; pebble (Let's Encrypt's ACME test
# CA) and lego, the ACME client standing in for OpenBSD's acme-client (mailsite/lab/acme.py); restic
# 0.18, the primary's backup tool (mailsite/daemons/restic.py), which the lab's backups run.
PACKAGES = ("opensmtpd", "openbgpd", "dnsmasq-base", "swaks", "libnet-ssleay-perl", "openssl", "bind9-dnsutils",
            "ca-certificates", "netbase", "rspamd", "redis-server", "opensmtpd-filter-rspamd", "pebble", "lego", "restic",
            # filter-dkimsign: a backup signs its own mail with it (mailsite/daemons/dkimsign.py).
            "opensmtpd-filter-dkimsign")
# Dovecot as OpenBSD 7.8's packages ship it (2.3.21.1), from Debian 12's backports (its main
# suite has 2.3.19.1): the server, IMAP and LMTP, and Pigeonhole's Sieve (0.5.21.1, as OpenBSD's
# dovecot-pigeonhole; Debian builds it from Dovecot's source, so its version is Dovecot's) that files
# marked mail into Junk, nothing more. Their dependencies bring openssl; the lab's IMAPS client is
# this machine's Python, so no CA bundle is needed in the root.
DOVECOT_SUITE = "bookworm"
DOVECOT_PACKAGES = ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve")
# The leading version numbers the checks rely on, per root: those of what OpenBSD 7.8 ships. For
# Dovecot the minor too: 2.3 and 2.4 read different grammars, and a 2.3 config is never checked by 2.4.
# rspamd is 3 on both (trixie 3.12.1, OpenBSD 7.8 3.13.1): rspamadm configtest checks the local.d
# files with the grammar and module options of 3.12, a minor below the image's. redis is not held
# to a major: OpenBSD 7.8 ships 6.2, trixie 8.0, and nothing checks redis.conf here (the lab runs
# it, on directives both read alike); the bake starts the image's own.
MAJORS: dict[str, dict[str, tuple[int, ...]]] = {
    "daemons": {"opensmtpd": (7,), "openbgpd": (8,), "rspamd": (3,), "opensmtpd-filter-rspamd": (0, 1)},
    "dovecot": {package: (2, 3) for package in DOVECOT_PACKAGES},
}
CACHE = Path("/var/cache/mailsite/daemon-root")
MANIFEST = "manifest.json"
_FORMAT = 2  # of the manifest and the build: a change builds every root again
_BUILD_TIMEOUT = 600


class DaemonRootError(MailsiteError):
    """The daemon root could not be built or used: one line saying why and what to do."""


@dataclass(frozen=True)
class Recipe:
    """What one root is built from: a Debian suite, the packages in it, and which of them come
    from the suite's backports (named there, so apt takes those, and their dependencies from the suite)."""

    name: str
    suite: str
    packages: tuple[str, ...]
    backports: tuple[str, ...] = ()
    mirror: str = MIRROR

    @property
    def origin(self) -> str:
        """What reports name the root by: "Debian trixie", "Debian bookworm-backports"."""
        return f"Debian {self.suite}-backports" if self.backports else f"Debian {self.suite}"

    def key(self) -> str:
        recipe: dict[str, object] = {"format": _FORMAT, "suite": self.suite, "mirror": self.mirror,
                                     "packages": sorted(self.packages)}
        if self.backports:  # only then: the daemons root keeps the key it was first built under
            recipe["backports"] = sorted(self.backports)
        return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]

    def mmdebstrap(self, target: Path) -> list[str]:
        if self.backports:
            sources = [f"deb {self.mirror} {suite} main" for suite in (self.suite, f"{self.suite}-backports")]
        else:
            sources = [self.mirror]  # mmdebstrap writes "deb <mirror> <suite> main"
        include = [f"{package}/{self.suite}-backports" if package in self.backports else package
                   for package in self.packages]
        return ["mmdebstrap", "--variant=apt", "--mode=root", f"--include={','.join(include)}", self.suite,
                str(target), *sources]


# The roots, by the name callers ask for.
ROOTS = {
    "daemons": Recipe("daemons", SUITE, PACKAGES),
    "dovecot": Recipe("dovecot", DOVECOT_SUITE, DOVECOT_PACKAGES, backports=DOVECOT_PACKAGES),
}


@dataclass(frozen=True)
class DaemonRoot:
    path: Path  # the root's "/": read-only for everyone, laid under other files, never written
    versions: dict[str, str]  # package -> the exact Debian version it was built with
    name: str = "daemons"  # its recipe in ROOTS

    def version(self, package: str) -> str:
        return self.versions[package]

    def describe(self, packages: Iterable[str] | None = None) -> str:
        """"opensmtpd 7.6.0p1-1, openbgpd 8.8-1": what reports say checked or ran something
        (by default, the packages its recipe names)."""
        return ", ".join(f"{package} {self.versions[package]}"
                         for package in (ROOTS[self.name].packages if packages is None else packages))


def cache_key(recipe: Recipe = ROOTS["daemons"]) -> str:
    return recipe.key()


def recipe(name: str) -> Recipe:
    try:
        return ROOTS[name]
    except KeyError:
        raise DaemonRootError(f"no daemon root is named {name!r}; the roots are {', '.join(ROOTS)}") from None


def daemon_root(name: str = "daemons", cache_dir: Path = CACHE) -> DaemonRoot:
    """The machine's daemon root `name` (of ROOTS), checked, built first if it is missing, stale
    or damaged."""
    return _daemon_root(cache_dir, recipe(name))


@cache
def _daemon_root(cache_dir: Path, recipe: Recipe) -> DaemonRoot:
    # Checked once per process: a lab up or a configtest run calls this many times.
    root = _verified(cache_dir / recipe.key(), recipe)
    if root is None:
        root = build(cache_dir, recipe, again=False)
    _check_majors(root)
    return root


def _require_builder() -> None:
    if os.geteuid() != 0:
        raise UserError("the daemon roots (Debian's smtpd, bgpd and Dovecot) are built as root: run this as root")
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


def _verified(home: Path, recipe: Recipe) -> DaemonRoot | None:
    """The root cached at `home` if whole and unaltered; None if it must be built (again)."""
    try:
        manifest = json.loads((home / MANIFEST).read_text())
        if manifest["format"] != _FORMAT or manifest["packages"] != list(recipe.packages):
            return None
        root = home / "root"
        if _inventory(root) != manifest["inventory"] or _checksums(root, recipe.packages) != manifest["checksums"]:
            return None
        return DaemonRoot(root, _installed_versions(root), recipe.name)
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


def build(cache_dir: Path = CACHE, recipe: Recipe = ROOTS["daemons"], again: bool = True) -> DaemonRoot:
    """Build the root of `recipe` from the registry, record it, and put it in place whole;
    `again`: even if the cached one is whole (--rebuild). One build at a time per cache."""
    _require_builder()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first uses at once build it once
        home = cache_dir / recipe.key()
        if not again and (root := _verified(home, recipe)) is not None:
            return root
        for left in cache_dir.glob("*.building"):  # what a killed build left (under this lock: none runs)
            _remove(left)
        return _build(cache_dir, recipe)


def _build(cache_dir: Path, recipe: Recipe) -> DaemonRoot:
    key = recipe.key()
    scratch = cache_dir / f"{key}.building"
    scratch.mkdir()
    print(f"building the daemon root {recipe.name!r} ({recipe.origin}: {', '.join(recipe.packages)}) in "
          f"{cache_dir / key}; once per machine, about 30 s", file=sys.stderr)
    log = cache_dir / f"{key}.log"
    with open(log, "w") as out:
        # Its own session: a timeout or an interrupt stops every process of the build, not only the first.
        process = subprocess.Popen(recipe.mmdebstrap(scratch / "root"), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = process.wait(timeout=_BUILD_TIMEOUT)
        except BaseException as stopped:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _remove(scratch)
            if isinstance(stopped, subprocess.TimeoutExpired):
                raise DaemonRootError(f"building the daemon root {recipe.name!r} took over {_BUILD_TIMEOUT} s; "
                                      f"see {log}") from None
            raise
    if status != 0:
        _remove(scratch)
        raise DaemonRootError(f"building the daemon root {recipe.name!r} failed: {_failure(log)}; the Debian mirror "
                              f"{recipe.mirror} must be reachable; see {log}, then run make root")
    root = scratch / "root"
    manifest = {"format": _FORMAT, "suite": recipe.suite, "mirror": recipe.mirror, "packages": list(recipe.packages),
                "backports": list(recipe.backports), "inventory": _inventory(root),
                "checksums": _checksums(root, recipe.packages)}
    (scratch / MANIFEST).write_text(json.dumps(manifest, sort_keys=True) + "\n")
    home = cache_dir / key
    _remove(home)  # a damaged root of the same list, or --rebuild
    scratch.rename(home)
    return DaemonRoot(home / "root", _installed_versions(home / "root"), recipe.name)


def prune(cache_dir: Path = CACHE, recipes: Iterable[Recipe] = ROOTS.values()) -> list[Path]:
    """Remove the roots of every other recipe than `recipes` (a lab still up may run from one:
    take it down first); returns what was removed."""
    keep = {recipe.key() for recipe in recipes}
    removed = []
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in sorted(cache_dir.iterdir()):
            if entry.name.split(".")[0] in keep or entry.name.startswith("."):
                continue
            if entry.is_dir():
                _remove(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _leading_numbers(version: str) -> tuple[int, ...]:
    """(2, 3, 21, 1) of "1:2.3.21.1+dfsg1-1~bpo12+1": the upstream version's numbers, epoch aside."""
    found = re.match(r"(?:\d+:)?(\d+(?:\.\d+)*)", version)
    return tuple(int(number) for number in found[1].split(".")) if found else ()


def _check_majors(root: DaemonRoot) -> None:
    for package, wanted in MAJORS.get(root.name, {}).items():
        version = root.versions.get(package, "")
        if _leading_numbers(version)[:len(wanted)] != wanted:
            relied_on = ".".join(map(str, wanted))
            raise DaemonRootError(
                f"the daemon root {root.name!r} has {package} {version or 'missing'}, but the checks rely on "
                f"{'major ' if len(wanted) == 1 else ''}{relied_on} (what OpenBSD 7.8 ships): check its grammar "
                f"against OpenBSD's, then change MAJORS in mailsite/daemonroot.py"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailsite.daemonroot",
                                     description="Build (if needed) and check the daemon roots; print their versions.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"the roots to build and check ({', '.join(ROOTS)}); all of them by default")
    parser.add_argument("--rebuild", action="store_true", help="build them again even if the cached ones are whole")
    parser.add_argument("--prune", action="store_true",
                        help="remove the roots of other recipes (take a lab running from one down first)")
    options = parser.parse_args(argv)
    if unknown := [name for name in options.names if name not in ROOTS]:
        print(f"error: no daemon root is named {unknown[0]!r}; the roots are {', '.join(ROOTS)}", file=sys.stderr)
        return 2
    roots = []
    try:
        for name in options.names or ROOTS:
            if options.rebuild:
                root = build(recipe=recipe(name))
                _check_majors(root)
            else:
                root = daemon_root(name)  # checks the majors itself
            roots.append(root)
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
    for root in roots:
        print(root.path)
        for package in ROOTS[root.name].packages:
            print(f"{package}\t{root.version(package)}")
    for path in pruned:
        print(f"removed {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
