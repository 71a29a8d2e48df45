"""The daemon root: built once, recorded, checked before each use, and refused when a major moves."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailsite import daemonroot
from mailsite.daemonroot import MANIFEST, DaemonRoot, DaemonRootError, cache_key, daemon_root
from mailsite.errors import UserError


def _fake_home(tmp_path: Path, packages=("opensmtpd",)) -> Path:
    """A cached root as build() leaves it, small: one package with two files and its manifest."""
    home = tmp_path / "cache" / cache_key(packages)
    root = home / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "usr/sbin/smtpd").write_bytes(b"smtpd 7.6")
    (root / "usr/sbin/smtpctl").write_bytes(b"smtpctl 7.6")
    (root / "var/lib/dpkg/info/opensmtpd.list").write_text("/.\n/usr\n/usr/sbin\n/usr/sbin/smtpd\n/usr/sbin/smtpctl\n")
    manifest = {"format": daemonroot._FORMAT, "packages": list(packages), "versions": {"opensmtpd": "7.6.0p1-1"},
                "checksums": daemonroot._checksums(root, packages)}
    (home / MANIFEST).write_text(json.dumps(manifest))
    return home


def test_a_whole_cached_root_is_used_as_recorded(tmp_path):
    home = _fake_home(tmp_path)
    root = daemonroot._verified(home, ("opensmtpd",))
    assert root == DaemonRoot(home / "root", {"opensmtpd": "7.6.0p1-1"})


def test_an_altered_daemon_binary_makes_the_root_be_built_again(tmp_path):
    home = _fake_home(tmp_path)
    (home / "root/usr/sbin/smtpd").write_bytes(b"smtpd 6.8")
    assert daemonroot._verified(home, ("opensmtpd",)) is None


def test_a_root_cut_short_is_built_again(tmp_path):
    home = _fake_home(tmp_path)
    (home / "root/usr/sbin/smtpctl").unlink()
    assert daemonroot._verified(home, ("opensmtpd",)) is None
    (home / MANIFEST).unlink()  # a build killed before its manifest: never used
    assert daemonroot._verified(_fake_home(tmp_path / "again"), ("opensmtpd",)) is not None
    assert daemonroot._verified(home, ("opensmtpd",)) is None


def test_a_changed_package_list_is_another_root():
    assert cache_key(("opensmtpd", "openbgpd")) != cache_key(("opensmtpd", "openbgpd", "dovecot-imapd"))
    assert cache_key(("openbgpd", "opensmtpd")) == cache_key(("opensmtpd", "openbgpd"))


def test_a_root_recorded_for_another_list_is_not_used(tmp_path):
    home = _fake_home(tmp_path)
    assert daemonroot._verified(home, ("opensmtpd", "openbgpd")) is None


@pytest.mark.parametrize("package, version", [("opensmtpd", "8.0.0p1-1"), ("openbgpd", "1:9.0-1"), ("opensmtpd", "")])
def test_a_moved_major_is_refused_in_one_line(package, version):
    versions = {"opensmtpd": "7.6.0p1-1", "openbgpd": "8.8-1", package: version}
    with pytest.raises(DaemonRootError) as raised:
        daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), versions))
    message = str(raised.value)
    assert "\n" not in message
    assert package in message and (version or "missing") in message and "MAJORS in mailsite/daemonroot.py" in message


def test_a_failed_build_leaves_nothing_half_built(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "mmdebstrap"
    fake.write_text("#!/bin/sh\necho 'E: cannot reach the mirror' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    cache = tmp_path / "cache"
    with pytest.raises(DaemonRootError) as raised:
        daemonroot._daemon_root.__wrapped__(cache, ("opensmtpd",))
    assert "E: cannot reach the mirror" in str(raised.value) and "make root" in str(raised.value)
    assert sorted(path.name for path in cache.iterdir()) == [".lock", f"{cache_key(('opensmtpd',))}.log"]


def test_without_mmdebstrap_the_fix_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install mmdebstrap"):
        daemonroot._daemon_root.__wrapped__(tmp_path / "cache", ("opensmtpd",))


def test_the_machines_root_holds_the_daemons_openbsd_ships():
    root = daemon_root()
    assert root.version("opensmtpd").startswith("7.") and root.version("openbgpd").startswith("8.")
    # The recorded versions are what is installed in it, and its smtpd is the one that runs.
    installed = subprocess.run(["chroot", str(root.path), "dpkg-query", "-W", "-f", "${Version}", "opensmtpd"],
                               capture_output=True, text=True, check=True).stdout
    assert installed == root.version("opensmtpd")
    assert "opensmtpd 7." in root.describe(["opensmtpd"])


def test_the_command_prints_the_versions_it_holds():
    result = subprocess.run([sys.executable, "-m", "mailsite.daemonroot"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert Path(lines[0]) == daemon_root().path
    assert f"openbgpd\t{daemon_root().version('openbgpd')}" in lines
