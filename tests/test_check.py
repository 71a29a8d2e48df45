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


def test_maildir_and_vio0_variants_pass(tmp_path):
    settings = example_settings()
    settings["delivery"]["method"] = "maildir"
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
    root = daemon_root()
    assert checked.stdout.splitlines() == [f"mx{n}: ok (smtpd -n, bgpd -n, sh -n)" for n in (1, 2, 3)] + [
        # Which grammar passed the site: the daemon root's, in the majors OpenBSD 7.8 ships.
        f"smtpd -n: opensmtpd {root.version('opensmtpd')} (Debian trixie daemon root)",
        f"bgpd -n: openbgpd {root.version('openbgpd')} (Debian trixie daemon root)",
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
    assert "mx2: FAILED" in checked.stdout and "mx1: ok (smtpd -n, bgpd -n, sh -n)" in checked.stdout


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
    assert "mx1: ok (smtpd -n, bgpd -n, sh -n)" in checked.stdout
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
