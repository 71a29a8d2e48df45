"""The example site in the lab, on the real daemons: mail flow, the backup queue, no open relay,
bgp-spamd and the list update job. One lab for the whole module: it comes up in about a second.

These need root (network namespaces, mounts) and the Debian packages in the Makefile's DEBS;
CI runs as root and never skips them.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailsite.daemonroot import daemon_root
from mailsite.daemons import daemons_on
from mailsite.lab import bgp, mail, scenarios
from mailsite.results import Status

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)


@pytest.mark.parametrize("scenario", scenarios.DEMONSTRATION, ids=lambda scenario: scenario.id)
def test_scenario(lab, scenario):
    """Each scenario of the demonstration (its `proves` says what), as `make lab` runs them, in
    that order: dns, bgp and the update job, mail flow, refusals, the primary down. A scenario
    the example site cannot try (a WARN) fails here: the example site must try them all."""
    result = scenario(lab)
    assert result.status is Status.PASS, f"{result.name}: {result.seen}"


def test_each_mx_runs_the_daemons_the_registry_gives_its_host(lab):
    site = lab.plan.site
    for host in site.hosts:
        started = {key for key in lab.daemons() if key.startswith(f"{host.name}/")}
        assert started == {f"{host.name}/{daemon.name}" for daemon in daemons_on(site, host) if daemon.lab}
    assert all(lab.daemons().values())


def test_update_job_lists_are_the_announced_addresses(lab):
    run = bgp.run_update_job(lab, "mx2")
    assert run.status == 0, run.output
    assert run.black == ["198.51.100.5", "198.51.100.77"] and run.bypass == ["203.0.113.7"]


def test_encryption_check_would_see_a_clear_body():
    """The spool check reads compressed files too: a plain or gzip body is caught."""
    assert mail.readable(b"header\nthe body MARK\n", b"MARK")
    assert mail.readable(gzip.compress(b"the body MARK"), b"MARK")
    assert not mail.readable(os.urandom(256), b"MARK")


def test_queue_key_is_private_and_lab_secrets_stay_in_the_lab(lab):
    key = lab.root("mx2") / "etc/mail/queue-key.conf"
    assert key.stat().st_mode & 0o777 == 0o600
    assert Path(lab.plan.site.secrets.path).is_relative_to(lab.dir)
    for private in (lab.dir / "passwords.json", lab.dir / "ca" / "ca.key", lab.root("mx1") / "etc/ssl/private/mx1.example.org.key"):
        assert private.stat().st_mode & 0o777 == 0o600, private


# What each lab process runs, from which daemon root: the holders sleep, the daemons are the
# roots' own builds (Dovecot 2.3 from the "dovecot" root, as OpenBSD ships it, in a tree of its own).
PROGRAMS = {"host": ("daemons", "usr/bin/sleep"), "smtpd": ("daemons", "usr/sbin/smtpd"),
            "bgpd": ("daemons", "usr/sbin/bgpd"), "dnsmasq": ("daemons", "usr/sbin/dnsmasq"),
            "redis": ("daemons", "usr/bin/redis-server"), "rspamd": ("daemons", "usr/bin/rspamd"),
            "host-dovecot": ("dovecot", "usr/bin/sleep"), "dovecot": ("dovecot", "usr/sbin/dovecot")}


def test_every_node_and_daemon_runs_from_the_daemon_root(lab):
    """No lab process runs a program of this machine nor sees its /: each is chrooted into its
    node's tree over a daemon root, and its program is that root's file (smtpd 7, bgpd 8, Dovecot
    2.3); Dovecot's tree is not smtpd's."""
    ours = os.stat("/")
    assert {key.split("/")[1] for key in lab.state.processes} == set(PROGRAMS)
    for key, record in lab.state.processes.items():
        seen = os.stat(f"/proc/{record.pid}/root")
        assert (seen.st_dev, seen.st_ino) != (ours.st_dev, ours.st_ino), f"{key} sees this machine's /"
        root, program = PROGRAMS[key.split("/")[1]]
        assert Path(f"/proc/{record.pid}/exe").read_bytes() == (daemon_root(root).path / program).read_bytes(), \
            f"{key} runs another program than the {root} root's"
    primary = lab.plan.site.primary.name
    trees = {(seen.st_dev, seen.st_ino) for daemon in ("smtpd", "dovecot")
             if (seen := os.stat(f"/proc/{lab.state.processes[f'{primary}/{daemon}'].pid}/root"))}
    assert len(trees) == 2, "smtpd and Dovecot share a tree"
    for node in lab.plan.nodes:
        root = daemon_root().path
        assert lab.run_in(node.name, ["cat", "/etc/debian_version"]).stdout == (root / "etc/debian_version").read_text()
    dovecot_root = daemon_root("dovecot").path
    assert lab.run_in(primary, ["cat", "/etc/debian_version"], tree="dovecot").stdout == \
        (dovecot_root / "etc/debian_version").read_text()


def test_commands_on_any_node_are_the_roots_whatever_the_callers_path(lab, monkeypatch):
    """smtpctl, bgpctl and swaks run as on the node, from the root, even for a caller whose PATH
    lacks /usr/sbin (where this machine keeps its own smtpctl and bgpctl)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert "MTA running" in lab.run_in("mx1", ["smtpctl", "show", "status"]).stdout
    assert lab.run_in("rs1", ["bgpctl", "show", "summary"]).returncode == 0
    swaks = lab.run_in("internet", ["swaks", "--version"])
    assert swaks.returncode == 0 and "20240103" in swaks.stdout + swaks.stderr
    assert lab.run_in("dns", ["hostname"]).stdout == "dns\n" and lab.run_in("mx2", ["hostname"]).stdout == "mx2.example.org\n"


# A client of the primary's submission port (Python's, in the internet node's network): the
# password comes on stdin, never in an argv.
_LOGIN = """
import smtplib, ssl, sys
address, cafile, user = sys.argv[1:]
context = ssl.create_default_context(cafile=cafile)
context.check_hostname = False  # by address here; the TLS scenarios verify each MX by name
session = smtplib.SMTP(address, 587, timeout=10)
session.starttls(context=context)
try:
    session.login(user, sys.stdin.readline().rstrip("\\n"))
    print("accepted")
except smtplib.SMTPAuthenticationError as error:
    print("refused", error.smtp_code)
session.quit()
"""


def test_mailbox_users_log_in_with_this_ups_password_and_no_other(lab):
    """Each mailbox user of the primary has a password of this up, checked by smtpd's `auth
    <credentials>` (its bcrypt hash in the primary's credentials table, as the image carries it);
    another user's password, or none of its, is refused.
    Passwords stay out of this test's locals, which a failure's report (pytest -l) prints."""
    assert _distinct_and_long(lab, "alice", "bob")
    assert _login(lab, "alice", "alice") == "accepted" and _login(lab, "bob", "bob") == "accepted"
    assert _login(lab, "alice", "bob") == "refused 535" and _login(lab, "bob", None) == "refused 535"


def _distinct_and_long(lab, *users: str) -> bool:
    return len({lab.password(user) for user in users}) == len(users) and all(len(lab.password(user)) >= 20 for user in users)


def _login(lab, user: str, password_of: str | None) -> str:
    """`user` logging in to the primary's submission port with `password_of`'s password (none: an
    empty one): the server's answer."""
    argv = ["nsenter", f"--net=/run/netns/{lab.plan.internet.namespace}", "--", sys.executable, "-c", _LOGIN,
            str(lab.plan.node(lab.plan.site.primary.name).ipv4), str(lab.ca_certificate), user]
    result = subprocess.run(argv, input=(lab.password(password_of) if password_of else "") + "\n", capture_output=True,
                            text=True, timeout=30)
    return result.stdout.strip() or result.stderr.strip()[-300:]


def test_lab_ca_is_in_every_nodes_trust_store(lab):
    ca = lab.ca_certificate.read_text()
    bundle = (daemon_root().path / "etc/ssl/certs/ca-certificates.crt").read_text()
    for node in lab.plan.nodes:
        assert lab.run_in(node.name, ["cat", "/etc/ssl/mailsite-lab-ca.pem"]).stdout == ca
        trusted = lab.run_in(node.name, ["cat", "/etc/ssl/certs/ca-certificates.crt"]).stdout
        assert trusted.startswith(bundle.rstrip("\n")) and trusted.endswith(ca), node.name

