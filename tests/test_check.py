"""The real parsers on rendered trees: smtpd -n and bgpd -n of the daemon root (Debian trixie's,
the majors OpenBSD ships) in a network namespace shaped like the host, sh -n.

These need root (network namespaces, mounts) and build the daemon root when this machine has
none; CI runs as root and never skips them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailsite.configtest import check_host, host_trees
from mailsite.daemonroot import daemon_root
from mailsite.daemons.bgpd import linux_bgpd_conf
from mailsite.trees import write_trees
from tests.sites import ROOT, example_settings, site_of, sized_settings
from tests.test_render import render_site

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)


def _dash_version() -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dash"], capture_output=True, text=True).stdout


def _write(tmp_path: Path, settings: dict) -> Path:
    out = tmp_path / "out"
    write_trees(out, render_site(site_of(settings)))
    return out


@pytest.mark.parametrize("count", [2, 3, 5])
def test_every_host_passes_smtpd_and_bgpd(tmp_path, count):
    settings = example_settings() if count == 3 else sized_settings(count)
    out = _write(tmp_path, settings)
    trees = host_trees(out)
    assert sorted(trees) == [host["name"] for host in settings["hosts"]]
    for host, tree in trees.items():
        assert check_host(host, tree) == [], host


def test_vio0_variant_passes(tmp_path):
    settings = example_settings()
    for host in settings["hosts"]:
        host["egressInterface"] = "vio0"
    out = _write(tmp_path, settings)
    assert check_host("mx1", out / "mx1") == []


def test_smtpd_problem_names_host_file_and_line(tmp_path):
    out = _write(tmp_path, example_settings())
    conf = out / "mx2/etc/mail/smtpd.conf"
    lines = conf.read_text().splitlines()
    lines.insert(6, "queue encryptoin")
    conf.write_text("\n".join(lines) + "\n")
    problems = check_host("mx2", out / "mx2")
    assert [(p.host, p.file, p.line) for p in problems] == [("mx2", "smtpd.conf", 7)]
    assert "syntax error" in problems[0].message


def test_wrong_queue_key_length_fails_smtpd(tmp_path):
    out = _write(tmp_path, example_settings())
    (out / "mx3/etc/mail/queue-key.conf").write_text("queue encryption 0123456789abcdef\n")
    problems = check_host("mx3", out / "mx3")
    assert any("invalid key for queue encryption" in p.message for p in problems), problems


def test_bgpd_takes_the_host_route_filter_and_prefix_limit(tmp_path):
    """bgpd's own parser reads the feed's filter and limit as rendered: change either, and
    bgpd -n refuses, so the check would catch a grammar slip in them."""
    out = _write(tmp_path, example_settings())
    conf = out / "mx2/etc/bgpd.conf"
    text = conf.read_text()
    assert "prefix 0.0.0.0/0 prefixlen = 32" in text and "max-prefix 200000 restart 30" in text
    assert check_host("mx2", out / "mx2") == []
    for good, bad in (("prefix 0.0.0.0/0 prefixlen = 32", "prefixlen = 32"), ("restart 30", "restart")):
        conf.write_text(text.replace(good, bad))
        problems = check_host("mx2", out / "mx2")
        assert [p.file for p in problems] == ["bgpd.conf"], (bad, problems)


def test_bgpd_problem_keeps_its_line_number(tmp_path):
    out = _write(tmp_path, example_settings())
    conf = out / "mx1/etc/bgpd.conf"
    text = conf.read_text().replace("export none", "announce none")
    conf.write_text(text)
    (line,) = [n for n, text_line in enumerate(text.splitlines(), 1) if "announce none" in text_line]
    problems = check_host("mx1", out / "mx1")
    assert [(p.file, p.line) for p in problems] == [("bgpd.conf", line)], problems


def test_only_pftable_lines_are_blanked_for_linux():
    text = 'AS 65500\nmatch from group "g" community 65066:666 set pftable "bgp_spamd"\nfib-update no\n'
    assert linux_bgpd_conf(text) == "AS 65500\n#\nfib-update no\n"


def test_cli_render_then_check_example(tmp_path):
    stack = tmp_path / "Pulumi.example.yaml"
    stack.write_text((ROOT / "Pulumi.example.yaml").read_text())
    run = lambda *args: subprocess.run([sys.executable, "-m", "mailsite", *args], capture_output=True, text=True, cwd=ROOT)
    assert run("secrets", "init", "--config", str(stack)).returncode == 0
    keys = tmp_path / ".mailsite/secrets"
    assert keys.stat().st_mode & 0o777 == 0o700
    rendered = run("render", "--config", str(stack), "--out", str(tmp_path / "out"))
    assert rendered.returncode == 0, rendered.stderr
    checked = run("configtest", str(tmp_path / "out"))
    assert checked.returncode == 0, checked.stderr
    root, dovecot = daemon_root(), daemon_root("dovecot")
    assert checked.stdout.splitlines() == [
        "mx1: ok (smtpd -n, bgpd -n, doveconf, rspamadm configtest, sh -n)",  # the primary's Dovecot, checked by 2.3
        "mx2: ok (smtpd -n, bgpd -n, sh -n)",
        "mx3: ok (smtpd -n, bgpd -n, sh -n)",
        # Which grammar passed the site: the daemon roots', in the versions OpenBSD 7.8 ships.
        f"smtpd -n: opensmtpd {root.version('opensmtpd')} (Debian trixie daemon root)",
        f"bgpd -n: openbgpd {root.version('openbgpd')} (Debian trixie daemon root)",
        f"doveconf: dovecot-core {dovecot.version('dovecot-core')} (Debian bookworm-backports daemon root)",
        f"rspamadm configtest: rspamd {root.version('rspamd')} (Debian trixie daemon root)",
        f"sh -n: dash {_dash_version()} (this machine)",
    ]
    assert root.version("opensmtpd").startswith("7.") and root.version("openbgpd").startswith("8.")
    key_file = tmp_path / "out/mx1/etc/mail/queue-key.conf"
    assert key_file.stat().st_mode & 0o777 == 0o600
    smtpd_conf = tmp_path / "out/mx2/etc/mail/smtpd.conf"
    smtpd_conf.write_text(smtpd_conf.read_text().replace("listen on vmx0", "listen on em0"))
    broken = run("configtest", str(tmp_path / "out"))
    assert broken.returncode == 1
    assert broken.stderr.splitlines() == ["mx2: smtpd.conf: invalid virtual ip or interface: em0"]


@pytest.mark.parametrize("path", ["etc/bgpd.conf", "etc/rc.conf.local", "usr/local/sbin/bgp-spamd-update"])
def test_a_tree_missing_a_file_every_host_carries_fails_instead_of_skipping_its_check(tmp_path, path):
    out = _write(tmp_path, example_settings())
    (out / "mx2" / path).unlink()
    checked = subprocess.run([sys.executable, "-m", "mailsite", "configtest", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 1
    assert f"mx2: {path}: missing" in checked.stderr
    assert "mx2: FAILED" in checked.stdout and "mx1: ok (smtpd -n, bgpd -n, doveconf, rspamadm configtest, sh -n)" in checked.stdout


def test_vultr_site_with_its_own_bgp_session_passes(tmp_path):
    import ipaddress

    from mailsite.model import HostAddresses
    from mailsite.render import render_host
    from tests.sites import fake_secrets

    settings = example_settings()
    settings.update(target="vultr", network={"addressing": "autoconf"})
    settings["vultr"] = {"bgp": {"enabled": True, "localAs": 4200000042, "prefixes": ["198.51.100.0/24", "2001:db8:77::/48"]}}
    for host in settings["hosts"]:
        host.update(ipv4="allocate", ipv6="allocate", egressInterface="vio0")
    site = site_of(settings)
    allocated = {h.name: HostAddresses(ipaddress.IPv4Address(f"203.0.113.{n}")) for n, h in enumerate(site.hosts, 1)}
    secrets = fake_secrets(site)
    out = tmp_path / "out"
    write_trees(out, {h.name: render_host(site, h, allocated, secrets[h.name]) for h in site.hosts})
    bgpd = (out / "mx1/etc/bgpd.conf").read_text()
    assert "neighbor 169.254.169.254 {" in bgpd and "local-as 4200000042" in bgpd and "network 198.51.100.0/24" in bgpd
    pf = (out / "mx1/etc/pf.conf").read_text()
    assert 'vultr_bgp_sources = "{ 169.254.169.254/32 }"' in pf and 'bgp_sources = "{ 198.51.100.100/32 203.0.113.100/32 }"' in pf
    assert check_host("mx1", out / "mx1") == []


def test_a_parser_runs_where_the_host_keeps_its_files_with_the_hosts_links(tmp_path):
    """The namespace smtpd -n runs in is there for the next daemon's parser too: the daemon root
    with the tree's own directories laid where OpenBSD keeps them, the host's interface names,
    nothing of this machine's."""
    from mailsite.configtest import run_shaped_like_host

    tree = _write(tmp_path, example_settings()) / "mx1"
    (tree / "etc/mailbox-test").mkdir()
    (tree / "etc/mailbox-test/mailbox-test.conf").write_text("mail_location = maildir:~/Maildir\n")
    result = run_shaped_like_host(tree, ("etc/mailbox-test",),
                                  ["sh", "-c", "cat /etc/mailbox-test/mailbox-test.conf /etc/debian_version && ls /sys/class/net"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "mail_location = maildir:~/Maildir"
    assert lines[1].startswith("13."), lines  # the daemon root's Debian (trixie), whatever this machine runs
    links = set(lines[2:])
    assert {"vmx0", "lo0"} <= links, result.stdout  # the host's, not this machine's (veth peers aside)
    assert all(link in {"lo", "vmx0", "lo0"} or link.startswith("mscheck") for link in links), result.stdout
    assert not Path("/etc/mailbox-test").exists()


def _configtest(out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsite", "configtest", str(out)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_hand_edited_pki_path_never_reaches_a_shell_or_leaves_the_scratch_root(tmp_path):
    # configtest runs as root on any directory: a pki path is a name, never a command or a way out.
    out = _write(tmp_path, example_settings())
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    conf = out / "mx1/etc/mail/smtpd.conf"
    text = conf.read_text()
    certificate, key = re.findall(r'pki \S+ (?:cert|key) "([^"]+)"', text)[:2]
    for hostile_certificate, hostile_key in [
        ("/x;touch PWNED;y/c.crt", key),
        ("/../.." + str(tmp_path) + "/trav.crt", "/../.." + str(precious)),
    ]:
        conf.write_text(text.replace(certificate, hostile_certificate).replace(key, hostile_key))
        checked = _configtest(out, tmp_path)
        assert checked.returncode == 1, checked.stderr
        assert "mx1: smtpd.conf: pki path" in checked.stderr and "Traceback" not in checked.stderr
    assert not (tmp_path / "PWNED").exists()
    assert precious.read_text() == "keep me\n" and not (tmp_path / "trav.crt").exists()


def test_a_tree_that_is_not_utf8_or_names_no_interface_is_a_problem_not_a_traceback(tmp_path):
    out = _write(tmp_path, example_settings())
    bgpd = out / "mx2/etc/bgpd.conf"
    bgpd.write_bytes(bgpd.read_bytes() + b"# caf\xe9\n")
    (out / "mx3/etc/hostname.vmx0").rename(out / "mx3/etc/hostname.vmx0 type dummy")
    checked = _configtest(out, tmp_path)
    assert "Traceback" not in checked.stderr, checked.stderr
    assert "mx2: ok" in checked.stdout
    assert "mx3: smtpd.conf: etc/hostname.'vmx0 type dummy' does not name an interface" in checked.stderr
    assert checked.returncode == 1


def test_configtest_without_root_says_so_instead_of_failing_every_host(tmp_path):
    out = _write(tmp_path, example_settings())
    tmp_path.chmod(0o755)
    as_nobody = subprocess.run(
        # Imported as root (this machine's Python may sit where nobody cannot read), then run as nobody.
        [sys.executable, "-c", "import os, sys, mailsite.cli, mailsite.commands.configtest; os.setgid(65534); "
         "os.setuid(65534); sys.exit(mailsite.cli.main(['configtest', sys.argv[1]]))", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert as_nobody.returncode == 2, as_nobody.stderr
    assert as_nobody.stderr.splitlines() == [
        "error: configtest makes network and mount namespaces for the daemons' parsers: run it as root"
    ]


# --- the daemon root's parsers, not this machine's ------------------------------------------------

def test_a_bgpd_option_openbgpd_7_took_but_8_refuses_is_caught_on_its_line(tmp_path):
    """`announce capabilities yes` in a group: Debian 12's openbgpd 7.7 (this machine's bgpd, which
    configtest ran before issue 14) accepts it; OpenBGPD 8 dropped the option (8.8's bgpd.conf(5)
    no longer has it), so the images' bgpd would refuse to start on this file."""
    out = _write(tmp_path, example_settings())
    conf = out / "mx2/etc/bgpd.conf"
    lines = conf.read_text().splitlines()
    after = next(n for n, line in enumerate(lines, 1) if line.strip().startswith("multihop "))
    lines.insert(after, "\tannounce capabilities yes")
    conf.write_text("\n".join(lines) + "\n")
    problems = check_host("mx2", out / "mx2")
    assert [(p.host, p.file, p.line, p.message) for p in problems] == [("mx2", "bgpd.conf", after + 1, "syntax error")]


def test_an_smtps_listener_without_its_pki_that_smtpd_6_8_took_is_caught(tmp_path):
    """`listen on vmx0 smtps` naming no pki: Debian 12's smtpd 6.8 accepts it with -n; smtpd 7
    requires a pki for every TLS listener, so the images' smtpd would refuse the file."""
    out = _write(tmp_path, example_settings())
    conf = out / "mx1/etc/mail/smtpd.conf"
    text, cut = re.subn(r"^(listen on vmx0 smtps) pki \S+", r"\1", conf.read_text(), flags=re.M)
    assert cut == 1
    conf.write_text(text)
    problems = check_host("mx1", out / "mx1")
    assert [(p.file, p.message) for p in problems] == [("smtpd.conf", "invalid listen option: pki required for tls/smtps")]


def _tools_only(tmp_path: Path, programs: tuple[str, ...]) -> dict[str, str]:
    """An environment whose PATH holds just these programs of this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in programs:
        if found := shutil.which(program):
            (bin_dir / program).symlink_to(found)
    return {**os.environ, "PATH": str(bin_dir)}


_HOST_TOOLS = ("sh", "ip", "unshare", "mount", "chroot", "openssl", "dpkg-query")


def test_configtest_runs_no_daemon_of_this_machine(tmp_path):
    """No smtpd or bgpd on this machine's PATH (Debian 12's are two majors behind the images'):
    configtest passes the site all the same, with the daemon root's."""
    out = _write(tmp_path, example_settings())
    checked = subprocess.run([sys.executable, "-m", "mailsite", "configtest", str(out)], capture_output=True, text=True,
                             cwd=ROOT, env=_tools_only(tmp_path, _HOST_TOOLS), timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "mx1: ok (smtpd -n, bgpd -n, doveconf, rspamadm configtest, sh -n)" in checked.stdout
    assert "smtpd -n: opensmtpd 7." in checked.stdout and "bgpd -n: openbgpd 8." in checked.stdout


def test_configtest_without_a_tool_it_lays_the_root_out_with_names_its_package(tmp_path):
    out = _write(tmp_path, example_settings())
    checked = subprocess.run([sys.executable, "-m", "mailsite", "configtest", str(out)], capture_output=True, text=True,
                             cwd=ROOT, env=_tools_only(tmp_path, tuple(t for t in _HOST_TOOLS if t != "unshare")),
                             timeout=120)
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        "error: configtest needs unshare, which is not installed here: install the Debian package util-linux (make deps)"
    ]


def test_a_parser_never_writes_into_the_daemon_root_or_the_tree(tmp_path):
    """The root is shared by every check and lab on this machine: what a parser writes (a
    daemon's pid file, a cache) lands in the check's scratch layer and goes with it."""
    from mailsite.configtest import run_shaped_like_host

    tree = _write(tmp_path, example_settings()) / "mx1"
    rendered = (tree / "etc/mail/smtpd.conf").read_text()
    root = daemon_root().path
    smtpd = (root / "usr/sbin/smtpd").stat()
    result = run_shaped_like_host(tree, ("etc/mail",), ["sh", "-c", "echo written > /etc/written-by-a-parser"
                                                        " && echo changed > /etc/mail/smtpd.conf && touch /usr/sbin/smtpd"
                                                        " && cat /etc/written-by-a-parser"])
    leaked = Path("/etc/written-by-a-parser")
    on_this_machine = leaked.exists()
    leaked.unlink(missing_ok=True)
    assert (result.returncode, result.stdout) == (0, "written\n"), result.stderr  # the parser saw its write
    assert not on_this_machine and not (root / "etc/written-by-a-parser").exists()
    assert (root / "usr/sbin/smtpd").stat() == smtpd
    assert (tree / "etc/mail/smtpd.conf").read_text() == rendered


def test_a_directory_laid_over_the_root_holds_the_hosts_files_alone(tmp_path):
    """As on the host, the tree's directory is all there is at its path: the root's own files of
    that name (Debian's /etc/ssl here) do not show through and change what a parser reads."""
    from mailsite.configtest import run_shaped_like_host

    tree = _write(tmp_path, example_settings()) / "mx1"
    (tree / "etc/ssl").mkdir()
    (tree / "etc/ssl/site.pem").write_text("not a certificate\n")
    assert (daemon_root().path / "etc/ssl/openssl.cnf").exists()
    result = run_shaped_like_host(tree, ("etc/ssl",), ["ls", "-A", "/etc/ssl"])
    assert result.stdout.split() == ["site.pem"], result.stderr


# --- a hand-edited tree, and the machine configtest runs on (issue 14 review) --------------------

def _pki_paths(conf: Path) -> tuple[str, str]:
    certificate, key = re.findall(r'pki \S+ (?:cert|key) "([^"]+)"', conf.read_text())[:2]
    return certificate, key


def test_a_symlink_in_the_tree_never_lets_configtest_write_outside_its_scratch(tmp_path):
    """A pki path at a link the tree holds (to a file, or through a linked directory) gets its
    test certificate in the check's own layer: nothing of this machine is written through it."""
    out = _write(tmp_path, example_settings())
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.conf").write_text("keep me\n")
    mail = out / "mx1/etc/mail"
    (mail / "site.crt").symlink_to(victim / "x.conf")
    (mail / "certs").symlink_to(victim)
    conf = mail / "smtpd.conf"
    certificate, key = _pki_paths(conf)
    conf.write_text(conf.read_text().replace(certificate, "/etc/mail/site.crt").replace(key, "/etc/mail/certs/new.key"))
    checked = _configtest(out, tmp_path)
    assert "Traceback" not in checked.stderr, checked.stderr
    assert (victim / "x.conf").read_text() == "keep me\n"
    assert sorted(path.name for path in victim.iterdir()) == ["x.conf"]
    assert "mx1: ok" in checked.stdout, checked.stderr


@pytest.mark.parametrize("linked", ["etc/mail", "etc/bgpd.conf", "etc/rc.conf.local"])
def test_a_tree_linking_to_this_machines_files_is_refused_not_read(tmp_path, linked):
    """configtest reads a tree on this machine, as root, before any chroot: a link there would
    hand the parsers (and their error lines) a file of this machine, so it is a problem instead."""
    out = _write(tmp_path, example_settings())
    elsewhere = tmp_path / "elsewhere"
    (out / "mx1" / linked).rename(elsewhere)
    (out / "mx1" / linked).symlink_to(elsewhere)
    checked = _configtest(out, tmp_path)
    assert checked.returncode == 1, checked.stderr
    assert f"mx1: {linked}: a symbolic link" in checked.stderr and "Traceback" not in checked.stderr
    assert "mx2: ok" in checked.stdout


def _processes_with(command: str) -> list[int]:
    """The processes whose argv is exactly `command` (split on spaces)."""
    found = []
    argv = command.encode().replace(b" ", b"\0") + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == argv:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _check_namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("mscheck-")}


def _namespace_of(pid: int) -> str:
    """The named network namespace process `pid` runs in (other tests' checks may run beside
    this one, each in a namespace of its own: only this one's is ours to watch)."""
    return subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.strip()


# A parser that never finishes and leaves a child behind: sleeps of a length nothing else uses.
_HANGING_PARSER = ("import dataclasses, sys, mailsite.cli, mailsite.configtest as ct\n"
                   "def hang(host, tree, path):\n"
                   "    ct.run_shaped_like_host(tree, ('etc/mail',), ['sh', '-c', 'sleep 4321.5 & sleep 4321.5'])\n"
                   "    return []\n"
                   "ct._PARSERS['smtpd -n'] = dataclasses.replace(ct._PARSERS['smtpd -n'], check=hang)\n"
                   "sys.exit(mailsite.cli.main(['configtest', sys.argv[1]]))\n")


@pytest.mark.xdist_group("hanging-parser")  # both count the same sleeps: never at once
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_configtest_stopped_by_a_signal_leaves_no_namespace_scratch_or_parser(tmp_path, signal_name):
    import signal
    import time

    out = _write(tmp_path, example_settings())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)}
    # As `timeout` or a killed make sends it: to configtest alone, not its process group.
    running = subprocess.Popen([sys.executable, "-c", _HANGING_PARSER, str(out)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    namespace = ""
    try:
        deadline = time.monotonic() + 60
        while len(_processes_with("sleep 4321.5")) < 2 and time.monotonic() < deadline and running.poll() is None:
            time.sleep(0.1)
        sleeps = _processes_with("sleep 4321.5")
        assert len(sleeps) == 2, running.communicate(timeout=5)
        # configtest checks one parser at a time: the hanging one's namespace is its only one.
        namespace = _namespace_of(sleeps[0])
        assert namespace.startswith("mscheck-") and namespace in _check_namespaces()
        running.send_signal(getattr(signal, signal_name))
        stdout, stderr = running.communicate(timeout=30)
        time.sleep(0.5)
        assert running.returncode == 130, stderr
        assert stderr.splitlines() == ["interrupted; nothing half-written was kept"]
        assert _processes_with("sleep 4321.5") == []
        assert namespace not in _check_namespaces()
        assert list(scratch.iterdir()) == []
    finally:
        running.kill()
        running.wait()
        for pid in _processes_with("sleep 4321.5"):
            os.kill(pid, 9)
        if namespace in _check_namespaces():
            subprocess.run(["ip", "netns", "del", namespace])


def test_a_parser_that_times_out_is_ended_with_everything_it_started(tmp_path, monkeypatch):
    import mailsite.configtest as configtest

    tree = _write(tmp_path, example_settings()) / "mx1"
    monkeypatch.setattr(configtest, "TIMEOUT_SECONDS", 3)
    try:
        result = configtest.run_shaped_like_host(tree, ("etc/mail",), ["sh", "-c", "sleep 4322.5 & sleep 4322.5"])
        assert result.returncode == 124 and "did not finish within 3 s" in result.stderr
        assert _processes_with("sleep 4322.5") == []
    finally:
        for pid in _processes_with("sleep 4322.5"):
            os.kill(pid, 9)


def test_a_parser_never_reads_configtests_stdin(tmp_path):
    """`include "/dev/stdin"` in a tree: the parser reads nothing (not the terminal, where it would
    wait for a person, nor what a pipe feeds configtest)."""
    out = _write(tmp_path, example_settings())
    conf = out / "mx1/etc/mail/smtpd.conf"
    conf.write_text(conf.read_text() + 'include "/dev/stdin"\n')
    checked = subprocess.run([sys.executable, "-m", "mailsite", "configtest", str(out)], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, input="queue encryptoin\n",
                             timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "mx1: ok" in checked.stdout


@pytest.mark.parametrize("name", ["a,b", "a b"])
def test_a_temporary_directory_overlayfs_cannot_take_is_one_line_before_any_host(tmp_path, name):
    out = _write(tmp_path, example_settings())
    scratch = tmp_path / name
    scratch.mkdir()
    checked = subprocess.run([sys.executable, "-m", "mailsite", "configtest", str(out)], capture_output=True, text=True,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)})
    assert checked.returncode == 2, checked.stderr
    assert checked.stderr.splitlines() == [
        f"error: TMPDIR {str(scratch)!r}: overlayfs cannot take a path with a comma, colon, backslash or space "
        "as a layer; set TMPDIR to a plain directory (like /tmp)"
    ]
    assert checked.stdout == ""


def test_a_hostname_lo0_file_is_the_loopback_the_host_has_anyway(tmp_path):
    out = _write(tmp_path, example_settings())
    (out / "mx1/etc/hostname.lo0").write_text("inet 127.0.0.1/8\n")
    assert check_host("mx1", out / "mx1") == []


def test_a_fifo_in_the_tree_is_named_as_not_a_regular_file(tmp_path):
    out = _write(tmp_path, example_settings())
    os.mkfifo(out / "mx1/etc/mail/pipe")
    checked = _configtest(out, tmp_path)
    assert checked.returncode == 1, checked.stderr
    assert checked.stderr.splitlines() == [
        "mx1: etc/mail/pipe: not a regular file (a fifo): a host's daemon files are regular files, directories "
        "or links; remove it"
    ]
    assert "mx2: ok" in checked.stdout


def test_a_large_sparse_file_in_the_tree_is_not_copied_for_the_check(tmp_path):
    """The tree's directories are laid over the root as they are, never copied: a 3 GB sparse file
    costs the check nothing (a 16 MB scratch file system is enough)."""
    import tempfile

    tree = _write(tmp_path, example_settings()) / "mx1"
    with open(tree / "etc/mail/huge", "wb") as huge:
        huge.truncate(3 << 30)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(small)
    try:
        assert check_host("mx1", tree) == []
    finally:
        tempfile.tempdir = saved
        subprocess.run(["umount", "-l", str(small)], check=True)


def test_pki_certificate_and_key_are_paired_by_name_and_kind_not_by_line_order(tmp_path):
    out = _write(tmp_path, example_settings())
    conf = out / "mx1/etc/mail/smtpd.conf"
    lines = conf.read_text().splitlines()
    (cert_line,) = [n for n, line in enumerate(lines) if re.match(r"pki \S+ cert ", line)]
    (key_line,) = [n for n, line in enumerate(lines) if re.match(r"pki \S+ key ", line)]
    lines[cert_line], lines[key_line] = lines[key_line], lines[cert_line]
    conf.write_text("\n".join(lines) + "\n")
    assert check_host("mx1", out / "mx1") == []
