"""The daemon root: built once, recorded, checked before each use, and refused when a major moves."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailsite import daemonroot
from mailsite.daemonroot import MANIFEST, ROOTS, DaemonRoot, DaemonRootError, Recipe, cache_key, daemon_root
from mailsite.errors import UserError

SMALL = Recipe("daemons", "trixie", ("opensmtpd",))


def _fake_home(tmp_path: Path) -> Path:
    """A cached root as build() leaves it, small: one package with two files, its dpkg status,
    and the manifest."""
    packages = SMALL.packages
    home = tmp_path / "cache" / cache_key(SMALL)
    root = home / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "usr/sbin/smtpd").write_bytes(b"smtpd 7.6")
    (root / "usr/sbin/smtpctl").write_bytes(b"smtpctl 7.6")
    (root / "usr/sbin/sendmail").symlink_to("smtpctl")
    (root / "var/lib/dpkg/info/opensmtpd.list").write_text("/.\n/usr\n/usr/sbin\n/usr/sbin/smtpd\n/usr/sbin/smtpctl\n")
    (root / "var/lib/dpkg/status").write_text(
        "Package: opensmtpd\nStatus: install ok installed\nVersion: 7.6.0p1-1\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n")
    manifest = {"format": daemonroot._FORMAT, "packages": list(packages), "inventory": daemonroot._inventory(root),
                "checksums": daemonroot._checksums(root, packages)}
    (home / MANIFEST).write_text(json.dumps(manifest))
    return home


def _verified(home):
    return daemonroot._verified(home, SMALL)


def test_a_whole_cached_root_is_used_with_the_versions_its_dpkg_holds(tmp_path):
    home = _fake_home(tmp_path)
    assert _verified(home) == DaemonRoot(home / "root", {"opensmtpd": "7.6.0p1-1"})


def test_the_versions_reported_are_the_roots_not_the_manifests_word(tmp_path):
    home = _fake_home(tmp_path)
    manifest = json.loads((home / MANIFEST).read_text())
    manifest["versions"] = {"opensmtpd": "7.9.9-1"}
    (home / MANIFEST).write_text(json.dumps(manifest))
    assert _verified(home).version("opensmtpd") == "7.6.0p1-1"


def test_an_altered_daemon_binary_makes_the_root_be_built_again(tmp_path):
    home = _fake_home(tmp_path)
    (home / "root/usr/sbin/smtpd").write_bytes(b"smtpd 6.8")
    assert _verified(home) is None


@pytest.mark.parametrize("alter", [
    lambda root: (root / "etc/ld.so.preload").write_text("/tmp/evil.so\n"),  # a file added anywhere
    lambda root: (root / "usr/sbin/smtpd").chmod(0o4777),  # a mode
    lambda root: ((root / "usr/sbin/sendmail").unlink(), (root / "usr/sbin/sendmail").symlink_to("/bin/true")),
    lambda root: (root / "var/lib/dpkg/status").write_text("Package: opensmtpd\n"),  # a file of no listed package
    lambda root: (root / "etc").rmdir(),  # an entry removed
], ids=["file added", "mode", "link target", "other file", "removed"])
def test_any_change_to_the_root_makes_it_be_built_again(tmp_path, alter):
    home = _fake_home(tmp_path)
    alter(home / "root")
    assert _verified(home) is None


def test_a_root_cut_short_is_built_again(tmp_path):
    home = _fake_home(tmp_path)
    (home / "root/usr/sbin/smtpctl").unlink()
    assert _verified(home) is None
    other = _fake_home(tmp_path / "again")
    (other / MANIFEST).unlink()  # a build killed before its manifest: never used
    assert _verified(other) is None


def test_a_changed_package_list_is_another_root():
    assert cache_key(Recipe("daemons", "trixie", ("opensmtpd", "openbgpd"))) != cache_key(
        Recipe("daemons", "trixie", ("opensmtpd", "openbgpd", "dovecot-imapd")))
    assert cache_key(Recipe("daemons", "trixie", ("openbgpd", "opensmtpd"))) == cache_key(
        Recipe("daemons", "trixie", ("opensmtpd", "openbgpd")))


def test_another_suite_or_packages_from_backports_is_another_root():
    stable = Recipe("dovecot", "bookworm", ("dovecot-core",))
    assert len({cache_key(stable), cache_key(Recipe("dovecot", "trixie", ("dovecot-core",))),
                cache_key(Recipe("dovecot", "bookworm", ("dovecot-core",), backports=("dovecot-core",)))}) == 3
    assert cache_key(ROOTS["daemons"]) != cache_key(ROOTS["dovecot"])


def test_a_root_recorded_for_another_list_is_not_used(tmp_path):
    home = _fake_home(tmp_path)
    assert daemonroot._verified(home, Recipe("daemons", "trixie", ("opensmtpd", "openbgpd"))) is None


def test_pruning_keeps_this_lists_root_and_removes_the_others(tmp_path):
    cache = tmp_path / "cache"
    current = _fake_home(tmp_path)
    old = cache / "0123456789abcdef"
    (old / "root/etc").mkdir(parents=True)
    (cache / "0123456789abcdef.log").write_text("old build\n")
    assert daemonroot.prune(cache, [SMALL]) == [old, cache / "0123456789abcdef.log"]
    assert sorted(path.name for path in cache.iterdir()) == [".lock", current.name]


def test_pruning_by_default_keeps_every_current_root(tmp_path):
    """The lab runs smtpd from one root and Dovecot from the other: pruning keeps both."""
    cache = tmp_path / "cache"
    kept = [cache_key(recipe) for recipe in ROOTS.values()]
    for name in [*kept, "0123456789abcdef"]:
        (cache / name / "root").mkdir(parents=True)
    assert daemonroot.prune(cache) == [cache / "0123456789abcdef"]
    assert sorted(path.name for path in cache.iterdir()) == sorted([".lock", *kept])


@pytest.mark.parametrize("package, version", [("opensmtpd", "8.0.0p1-1"), ("openbgpd", "1:9.0-1"), ("opensmtpd", "")])
def test_a_moved_major_is_refused_in_one_line(package, version):
    versions = {"opensmtpd": "7.6.0p1-1", "openbgpd": "8.8-1", package: version}
    with pytest.raises(DaemonRootError) as raised:
        daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), versions))
    message = str(raised.value)
    assert "\n" not in message
    assert package in message and (version or "missing") in message and "MAJORS in mailsite/daemonroot.py" in message


DOVECOT_23 = "1:2.3.21.1+dfsg1-1~bpo12+1"


@pytest.mark.parametrize("version", ["1:2.4.1+dfsg1-6", "1:3.0.0-1", "1:2.2.36.4-1", ""])
def test_a_dovecot_root_holding_another_grammar_than_2_3_is_refused_in_one_line(version):
    """2.3 and 2.4 read different grammars: a 2.3 config is never checked by 2.4 (nor 2.2)."""
    versions = dict.fromkeys(daemonroot.DOVECOT_PACKAGES, DOVECOT_23) | {"dovecot-imapd": version}
    with pytest.raises(DaemonRootError) as raised:
        daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), versions, "dovecot"))
    message = str(raised.value)
    assert "\n" not in message
    assert f"'dovecot' has dovecot-imapd {version or 'missing'}" in message and "rely on 2.3 " in message


def test_another_dovecot_2_3_release_is_the_same_grammar():
    versions = dict.fromkeys(daemonroot.DOVECOT_PACKAGES, "1:2.3.19.1+dfsg1-2.1+deb12u7")
    daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), versions, "dovecot"))


def test_a_root_is_checked_against_its_own_majors_only():
    """The dovecot root holds no smtpd: the daemons' majors are not asked of it, nor Dovecot's of them."""
    daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), dict.fromkeys(daemonroot.DOVECOT_PACKAGES, DOVECOT_23),
                                        "dovecot"))
    daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), {"opensmtpd": "7.6.0p1-1", "openbgpd": "8.8-1", "rspamd": "3.12.1-1",
                                                               "opensmtpd-filter-rspamd": "0.1.8-1+b10"}))


def _failing_mmdebstrap(tmp_path, monkeypatch):
    """An mmdebstrap that fails as the real one does without the mirror: the cause first, then
    its closing line. It leaves its arguments in bin/argv, one a line."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "mmdebstrap"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tools / 'argv'}\necho \"W: Failed to fetch trixie/InRelease: Temporary failure resolving 'deb.debian.org'\"\n"
                    "echo 'E: apt-get update -oAPT::Status-Fd=<$fd> failed' >&2\n"
                    "echo 'E: mmdebstrap failed to run' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")


def test_a_failed_build_says_why_and_leaves_nothing_half_built(tmp_path, monkeypatch):
    _failing_mmdebstrap(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(DaemonRootError) as raised:
        daemonroot._daemon_root.__wrapped__(cache, SMALL)
    message = str(raised.value)
    assert "Temporary failure resolving 'deb.debian.org'" in message and "make root" in message
    assert "mmdebstrap failed to run" not in message and "\n" not in message
    assert sorted(path.name for path in cache.iterdir()) == [".lock", f"{cache_key(SMALL)}.log"]


def test_the_dovecot_root_takes_dovecot_from_bookworm_backports_and_the_rest_from_bookworm(tmp_path, monkeypatch):
    """Bookworm's own Dovecot is 2.3.19.1, trixie's 2.4.1: the root asks apt for backports' 2.3.21.1
    by name, and lists both suites so the dependencies come from bookworm."""
    _failing_mmdebstrap(tmp_path, monkeypatch)
    with pytest.raises(DaemonRootError, match="daemon root 'dovecot' failed"):
        daemonroot._daemon_root.__wrapped__(tmp_path / "cache", ROOTS["dovecot"])
    argv = (tmp_path / "bin/argv").read_text().splitlines()
    assert argv[-4:-2] == ["bookworm", str(tmp_path / "cache" / f"{cache_key(ROOTS['dovecot'])}.building/root")]
    assert argv[-2:] == ["deb http://deb.debian.org/debian bookworm main",
                         "deb http://deb.debian.org/debian bookworm-backports main"]
    assert "--include=dovecot-core/bookworm-backports,dovecot-imapd/bookworm-backports," \
           "dovecot-lmtpd/bookworm-backports,dovecot-sieve/bookworm-backports" in argv


def test_what_a_killed_build_left_mounted_is_unmounted_before_it_is_removed(tmp_path, monkeypatch):
    """mmdebstrap mounts /proc and the like in the root it builds; a build killed with its whole
    process group leaves them mounted. The next build unmounts them rather than walk into them."""
    _failing_mmdebstrap(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    left = cache / f"{cache_key(SMALL)}.building" / "root" / "proc"
    left.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "mailsite-test", str(left)], check=True)
    try:
        (left / "precious").write_text("a file of the mounted file system\n")
        with pytest.raises(DaemonRootError):
            daemonroot._daemon_root.__wrapped__(cache, SMALL)
        assert str(left) not in Path("/proc/self/mounts").read_text()
        assert not left.exists()
    finally:
        subprocess.run(["umount", str(left)], capture_output=True)


def test_without_mmdebstrap_the_fix_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install mmdebstrap"):
        daemonroot._daemon_root.__wrapped__(tmp_path / "cache", SMALL)


def test_the_machines_root_holds_the_daemons_openbsd_ships():
    root = daemon_root()
    assert root.version("opensmtpd").startswith("7.") and root.version("openbgpd").startswith("8.")
    # The recorded versions are what is installed in it, and its smtpd is the one that runs.
    installed = subprocess.run(["chroot", str(root.path), "dpkg-query", "-W", "-f", "${Version}", "opensmtpd"],
                               capture_output=True, text=True, check=True).stdout
    assert installed == root.version("opensmtpd")
    assert "opensmtpd 7." in root.describe(["opensmtpd"])


def test_the_machines_dovecot_root_holds_dovecot_2_3_as_openbsd_ships_it():
    root = daemon_root("dovecot")
    assert root.path != daemon_root().path
    # Sieve too (Pigeonhole 0.5.21.1, built from Dovecot's source: Debian gives it Dovecot's version).
    for package in ("dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve"):
        assert root.version(package).startswith("1:2.3."), root.version(package)
    # Its own dovecot says so, and doveconf reads a 2.3 config.
    said = subprocess.run(["chroot", str(root.path), "/usr/sbin/dovecot", "--version"],
                          capture_output=True, text=True, check=True).stdout
    assert said.startswith("2.3.") and said.split()[0] in root.version("dovecot-core")
    assert root.describe() == ", ".join(f"{package} {root.version(package)}" for package in daemonroot.DOVECOT_PACKAGES)


def test_the_command_prints_the_versions_each_root_holds():
    result = subprocess.run([sys.executable, "-m", "mailsite.daemonroot"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert Path(lines[0]) == daemon_root().path
    assert f"openbgpd\t{daemon_root().version('openbgpd')}" in lines
    dovecot = daemon_root("dovecot")
    assert lines[lines.index(str(dovecot.path)) + 1] == f"dovecot-core\t{dovecot.version('dovecot-core')}"


def test_the_command_names_the_roots_when_asked_for_another():
    result = subprocess.run([sys.executable, "-m", "mailsite.daemonroot", "dovecot24"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: no daemon root is named 'dovecot24'; the roots are daemons, dovecot\n"
