"""doctor's inside checks: what each MX says over its HostControl, read as its daemons print it
(outputs captured from the lab's smtpctl, bgpctl -j, df -kP and openssl, the same programs and
versions the lab runs), what each status means, and the checks against the running lab: a
healthy lab passes, a host left behind by a rotation FAILs, an unreachable host FAILs once."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dns.resolver
import pytest

from mailsite import facts
from mailsite.doctor import inside
from mailsite.doctor.core import run_checks
from mailsite.doctor.view import SiteView
from mailsite.hosts import CommandControl, lab_control
from mailsite.lab import mail
from mailsite.lab.bgp import run_update_job
from mailsite.lab.lab import Lab
from mailsite.lab.procs import wait_until
from mailsite.model import Queue
from mailsite.render import render_host
from mailsite.results import Result, Status
from mailsite.secrets import host_store
from tests.sites import addresses, example_settings, fake_secrets, site_of

# `smtpctl show queue` on mx2 with the primary's smtpd down: one envelope tried once (its error
# and its next try in 395 s), one in flight.
QUEUE = """\
4ed95cd14a363fd9|inet4|mta||someone@internet.test|bob@example.net|bob@example.net|1795693492|1795693492|0|1|pending|395|Address family mismatch on destination MXs
c130505c946540de|inet4|mta||someone@internet.test|alice@example.org|alice@example.org|1795693492|1795693492|1795693492|0|inflight|5|
"""
QUEUED_AT = datetime(2026, 11, 26, 11, 44, 52, tzinfo=timezone.utc)  # 1795693492
STATUS_RUNNING = "MDA running\nMTA running\nSMTP running\n"
STATUS_MTA_PAUSED = "MDA running\nMTA paused\nSMTP running\n"  # after `smtpctl pause mta`

# `bgpctl -j show summary` on mx2 after `bgpctl neighbor 10.77.0.201 down`.
BGP_ONE_DOWN = """{
\t"neighbors": [
\t\t{
\t\t\t"remote_as": "65066",
\t\t\t"description": "bgp-spamd rs1",
\t\t\t"group": "bgp-spamd",
\t\t\t"remote_addr": "10.77.0.201",
\t\t\t"state": "Idle",
\t\t\t"last_updown": "00:00:01",
\t\t\t"last_updown_sec": 1
\t\t},
\t\t{
\t\t\t"remote_as": "65066",
\t\t\t"description": "bgp-spamd rs2",
\t\t\t"group": "bgp-spamd",
\t\t\t"remote_addr": "10.77.0.202",
\t\t\t"bgpid": "10.77.0.202",
\t\t\t"state": "Established",
\t\t\t"last_updown": "00:00:01",
\t\t\t"last_updown_sec": 1
\t\t}
\t]
}
"""
SERVERS = [("10.77.0.201", "bgp-spamd rs1"), ("10.77.0.202", "bgp-spamd rs2")]

# `df -kP /var/mailsite/mail` on the lab's primary.
DF_MAIL = """\
Filesystem     1024-blocks     Used Available Capacity Mounted on
/dev/vda         264212084 36433432  69957480      35% /var/mailsite
"""
# OpenBSD's df -kP once root's reserve is in use: Available below zero (its df.c prints it signed).
DF_OPENBSD_FULL = """\
Filesystem  1024-blocks       Used      Avail Capacity  Mounted on
/dev/sd0e      2011676    1965016     -53924   103%    /var
"""
END_DATE = "notAfter=Dec  3 11:40:12 2026 GMT\n"  # `openssl x509 -noout -enddate`, one-digit day
NO_CERTIFICATE = ("`openssl x509 -noout -enddate -in /etc/ssl/nothere.crt` failed: Could not open file or uri for "
                  "loading certificate from /etc/ssl/nothere.crt: No such file or directory")
WC = "       2 /etc/mail/bgp-spamd.black\n       1 /etc/mail/bgp-spamd.bypass\n       3 total\n"
KEY_VERSIONS = """\
queue-key b0c4d86b6d954d75a98dd97fb371761b
spamd-sync-key 89d348792129493b95610d01d5bbbd37
dkim-example.org mailsite20261126/cae207bde083
dkim-example.net mailsite20261126/92d3814ce6a0
"""
BLACK, BYPASS = "/etc/mail/bgp-spamd.black", "/etc/mail/bgp-spamd.bypass"


@pytest.fixture(scope="module")
def example():
    return site_of(example_settings())


# smtpd and its queue.

def test_queue_lines_read_as_envelopes_with_their_age_and_last_error():
    tried, flying = [facts.parse_envelope(line) for line in QUEUE.splitlines()]
    assert (tried.id, tried.agent, tried.recipient, tried.created, tried.retries) == (
        "4ed95cd14a363fd9", "mta", "bob@example.net", QUEUED_AT, 1)
    assert tried.error == "Address family mismatch on destination MXs"
    assert (flying.recipient, flying.retries, flying.error) == ("alice@example.org", 0, "")


def test_a_line_that_is_no_envelope_is_refused():
    with pytest.raises(ValueError, match="not a `smtpctl show queue` line"):
        facts.parse_envelope("smtpctl: smtpd doesn't seem to be running")


def test_smtpd_running_passes_and_a_paused_mta_fails_with_resume():
    assert inside.smtpd_outcome("mx3", STATUS_RUNNING)[0] is Status.PASS
    status, seen, fix = inside.smtpd_outcome("mx3", STATUS_MTA_PAUSED)
    assert status is Status.FAIL and "MTA paused" in seen and "smtpctl resume mta" in fix


def test_smtpd_not_answering_fails_and_says_how_to_start_it():
    status, seen, fix = inside.smtpd_outcome("mx1", None, "`smtpctl show status` failed: smtpctl: smtpd doesn't seem to be running")
    assert status is Status.FAIL and "doesn't seem to be running" in seen and "rcctl start smtpd" in fix


def _queue(example, host: str, after: timedelta, *, paused: bool = False, primary_takes: bool | None = True):
    envelopes = [facts.parse_envelope(line) for line in QUEUE.splitlines()]
    return inside.queue_outcome(example.host(host), envelopes, QUEUED_AT + after, 60, Queue(ttl="7d"), paused, "mx1", primary_takes,
                                example.domains)


def test_an_empty_queue_passes(example):
    assert inside.queue_outcome(example.host("mx2"), [], QUEUED_AT, 60, Queue(), False, "mx1", True, example.domains)[0] is Status.PASS


def test_a_backup_holding_mail_while_the_primary_takes_mail_is_a_stuck_queue(example):
    status, seen, fix = _queue(example, "mx2", inside.STUCK_AFTER + timedelta(seconds=1))
    assert status is Status.FAIL and "stuck" in seen and "2 envelope(s)" in seen
    assert "Address family mismatch" in seen and "smtpctl schedule all" in fix


def test_a_backup_relaying_what_it_just_took_passes(example):
    assert _queue(example, "mx2", timedelta(seconds=30))[0] is Status.PASS


def test_a_backup_holding_only_its_own_mail_to_the_world_is_not_stuck_on_the_primary(example):
    """A bounce to a sender whose server is away waits for that server, not for the primary."""
    bounce = facts.parse_envelope(QUEUE.splitlines()[0].replace("bob@example.net|bob@example.net", "someone@internet.test|someone@internet.test"))
    assert inside.queue_outcome(example.host("mx2"), [bounce], QUEUED_AT + timedelta(minutes=10), 60, Queue(), False, "mx1", True,
                                example.domains)[0] is Status.PASS


def test_a_backup_waiting_for_a_primary_that_takes_no_mail_warns_after_the_warn_age_and_names_the_primary(example):
    assert _queue(example, "mx2", timedelta(minutes=59), primary_takes=False)[0] is Status.PASS
    status, seen, fix = _queue(example, "mx2", timedelta(minutes=61), primary_takes=False)
    assert status is Status.WARN and "older than 60 min" in seen and "mx1 takes no mail" in fix


def test_mail_older_than_half_the_queue_ttl_fails_before_it_bounces(example):
    status, seen, fix = _queue(example, "mx2", timedelta(days=3, hours=12, seconds=1), primary_takes=False)
    assert status is Status.FAIL and "bounces it at 7 d 0 h" in seen and "mx1" in fix
    # The primary's own queue: the next hop is the recipients' servers.
    status, _, fix = _queue(example, "mx1", timedelta(days=3, hours=12, seconds=1), primary_takes=None)
    assert status is Status.FAIL and "next hop" in fix


def test_a_queue_whose_mta_is_paused_fails_however_young(example):
    status, seen, fix = _queue(example, "mx3", timedelta(seconds=1), paused=True)
    assert status is Status.FAIL and "MTA is paused" in seen
    assert "smtpctl resume mta" in fix and "smtpctl schedule all" in fix


# bgpd and the bgp-spamd lists.

def test_bgp_sessions_read_from_bgpctl_json():
    assert facts.bgp_sessions(BGP_ONE_DOWN) == {"10.77.0.201": "Idle", "10.77.0.202": "Established"}
    assert facts.bgp_sessions("") == {}  # bgpd with no neighbor answers nothing


def test_a_route_server_session_down_fails_naming_it_and_the_others_still_feeding():
    status, seen, fix = inside.bgp_outcome("mx2", facts.bgp_sessions(BGP_ONE_DOWN), SERVERS)
    assert status is Status.FAIL and "bgp-spamd rs1 (10.77.0.201): Idle" in seen and "rs2" not in seen
    assert "the other 1" in seen and "bgpctl show neighbor" in fix


def test_every_session_established_passes_and_none_at_all_fails():
    up = {address: "Established" for address, _ in SERVERS}
    assert inside.bgp_outcome("mx2", up, SERVERS)[0] is Status.PASS
    status, seen, _ = inside.bgp_outcome("mx2", {}, SERVERS)
    assert status is Status.FAIL and "no such neighbor" in seen and "keeps the last lists" in seen


def test_list_sizes_read_from_wc():
    assert facts.parse_line_counts(WC) == {BLACK: 2, BYPASS: 1}


def test_bgp_spamd_lists_pass_when_filled_and_fresh_and_warn_when_missing_stale_or_empty():
    both = [BLACK, BYPASS]
    counts = facts.parse_line_counts(WC)
    assert inside.lists_outcome("mx2", both, counts, [], True, 60, False)[0] is Status.PASS
    status, seen, fix = inside.lists_outcome("mx2", [], {}, [], True, 60, False)
    assert status is Status.WARN and "has not written them yet" in seen and "bgp-spamd-update" in fix
    status, seen, _ = inside.lists_outcome("mx2", both, counts, [BLACK], True, 60, False)
    assert status is Status.WARN and "not rewritten for over 60 min" in seen
    status, seen, _ = inside.lists_outcome("mx2", both, {BLACK: 0, BYPASS: 1}, [], True, 60, False)
    assert status is Status.WARN and "empty while the route servers' sessions are up" in seen
    # No session up: the job rightly keeps what it had, and an empty list is not its doing.
    assert inside.lists_outcome("mx2", both, {BLACK: 0, BYPASS: 0}, [], False, 60, False)[0] is Status.PASS


# spamd.

def _spamd_flags(example, host: str) -> str:
    """The flags `rcctl get spamd flags` prints: the image's rc.conf.local spamd_flags."""
    rc = render_host(example, example.host(host), addresses(example), fake_secrets(example)[host])["etc/rc.conf.local"].text
    return re.search(r'^spamd_flags="([^"]*)"', rc, re.M)[1]


def _peers(example, host: str) -> dict[str, list[str]]:
    return {peer.name: [str(peer.ipv4)] for peer in example.spamd_sync_peers(example.host(host))}


def test_spamd_syncing_with_every_other_mx_as_the_image_renders_it_passes(example):
    flags = _spamd_flags(example, "mx1")
    assert facts.spamd_sync(flags) == ([str(example.host("mx1").ipv4)], [str(example.host(n).ipv4) for n in ("mx2", "mx3")])
    assert inside.spamd_outcome("mx1", flags, str(example.host("mx1").ipv4), _peers(example, "mx1"))[0] is Status.PASS


def test_spamd_missing_a_peer_or_syncing_with_a_stranger_fails_with_pulumi_up(example):
    flags = _spamd_flags(example, "mx1")
    peers = _peers(example, "mx1") | {"mx3": ["192.0.2.33"]}  # mx3 replaced, with a new address
    status, seen, fix = inside.spamd_outcome("mx1", flags, str(example.host("mx1").ipv4), peers)
    assert status is Status.FAIL and "sends no sync to mx3 (192.0.2.33)" in seen
    assert f"{example.host('mx3').ipv4}, no MX of the site" in seen and "pulumi up" in fix


# Free space.

def test_df_read_as_free_space_of_what_users_may_write():
    system = facts.parse_df(DF_MAIL)
    assert (system.device, system.mounted_on) == ("/dev/vda", "/var/mailsite")
    assert system.free_percent == pytest.approx(100 * 69957480 / (36433432 + 69957480))
    full = facts.parse_df(DF_OPENBSD_FULL)
    assert (full.mounted_on, full.available_kb, full.free_percent) == ("/var", -53924, 0.0)


def test_free_space_warns_below_the_setting_and_fails_below_half_of_it():
    def at(percent: float):
        return inside.space_outcome("mx1", "why", "/var/spool/smtpd", facts.FileSystem("/dev/sd0e", int(100 - percent) * 1000, int(percent) * 1000, "/var"), 10)
    assert [at(percent)[0] for percent in (11, 9, 4)] == [Status.PASS, Status.WARN, Status.FAIL]
    assert "below 5%" in at(4)[1] and "make room on mx1's /var" in at(4)[2]


def test_the_mail_on_the_root_file_system_fails_as_a_volume_not_mounted():
    system = facts.FileSystem("/dev/sd0a", 1000, 9000, "/")
    status, seen, fix = inside.space_outcome("mx1", "why", "/var/mailsite/mail", system, 10, "/var/mailsite")
    assert status is Status.FAIL and "not on the mail volume" in seen and "rc.securelevel" in fix


# Key versions.

def test_a_host_running_the_backends_versions_passes():
    running = facts.parse_key_versions(KEY_VERSIONS)
    assert inside.key_outcome("mx1", "example", running, dict(running))[0] is Status.PASS


def test_a_host_left_behind_by_a_queue_key_rotation_fails_naming_rotate_queue_key_and_pulumi_up():
    running = facts.parse_key_versions(KEY_VERSIONS)
    status, seen, fix = inside.key_outcome("mx1", "example", running, running | {"queue-key": "c" * 32})
    assert status is Status.FAIL and f"queue-key {running['queue-key']}, the backend's is {'c' * 32}" in seen
    assert "python -m mailsite rotate-queue-key --config Pulumi.example.yaml --host mx1" in fix and "pulumi up --stack example" in fix


def test_a_dkim_key_behind_or_one_no_image_carries_fails():
    running = facts.parse_key_versions(KEY_VERSIONS)
    status, _, fix = inside.key_outcome("mx1", "example", running, running | {"dkim-example.org": "mailsite20270101/0123456789ab"})
    assert status is Status.FAIL and "rotate-dkim-key" in fix
    status, seen, _ = inside.key_outcome("mx2", "example", running, {"queue-key": running["queue-key"], "spamd-sync-key": running["spamd-sync-key"]})
    assert status is Status.FAIL and "dkim-example.net" in seen and "no image of mx2 carries" in seen


def _answering(key_versions: str) -> CommandControl:
    """A host, run here, that answers every command and prints `key_versions` for `cat`."""
    script = 'test "$1" != cat || printf %s "$KEYS"'
    return CommandControl(["env", f"KEYS={key_versions}", "sh", "-c", script, "ssh"])


def test_key_versions_cannot_tell_when_the_secrets_backend_cannot_be_read(example, tmp_path):
    def unreachable():
        raise ConnectionError("Could not connect to the endpoint URL: https://secretsmanager.eu-central-1.amazonaws.com/")

    empty = example.model_copy(update={"secrets": example.secrets.model_copy(update={"path": str(tmp_path)})})
    said = []
    for site, store in ((example, unreachable), (empty, lambda: host_store(empty, tmp_path))):
        view = SiteView(site, "example", dns.resolver.Resolver(configure=False), lambda host: _answering(KEY_VERSIONS), store,
                        None, datetime.now(timezone.utc), 5)
        (check,) = [c for c in inside.checks(view) if c.name == "mx1: runs the secrets backend's current key versions"]
        status, seen, fix = check.run()
        assert status is Status.WARN and seen.startswith("cannot tell: the secrets backend cannot be read: "), seen
        assert "credentials" in fix
        said.append(seen)
    assert "Could not connect to the endpoint URL" in said[0]
    assert "mailsite/example/spamd-sync-key: not in the secrets backend" in said[1]


# Certificate files.

def test_certificate_end_read_without_the_locale():
    assert facts.parse_end_date(END_DATE) == datetime(2026, 12, 3, 11, 40, 12, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        facts.parse_end_date("notAfter=3 Dez 2026")


def test_a_certificate_passes_warns_within_the_warn_days_and_fails_expired_or_missing():
    end = facts.parse_end_date(END_DATE)
    assert inside.certificate_outcome("mx1", "/etc/ssl/a.crt", end, end - timedelta(days=15), 14)[0] is Status.PASS
    status, seen, _ = inside.certificate_outcome("mx1", "/etc/ssl/a.crt", end, end - timedelta(days=13), 14)
    assert status is Status.WARN and "below 14 days" in seen
    status, seen, fix = inside.certificate_outcome("mx1", "/etc/ssl/a.crt", end, end + timedelta(hours=3), 14)
    assert status is Status.FAIL and "expired 3 h 00 min ago" in seen and "mailsite-certificates" in fix
    status, seen, _ = inside.certificate_outcome("mx1", "/etc/ssl/nothere.crt", None, end, 14, NO_CERTIFICATE)
    assert status is Status.FAIL and "no certificate at /etc/ssl/nothere.crt" in seen and "No such file" in seen


# Against the running lab.

def _lab_view(lab: Lab, *, control=None, warn_days: int | None = None) -> SiteView:
    site = lab.plan.site
    if warn_days is not None:
        site = site.model_copy(update={"doctor": site.doctor.model_copy(update={"certificate_warn_days": warn_days})})
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [str(lab.plan.dns.ipv4)]
    return SiteView(site, lab.state.stack, resolver, control or (lambda host: lab_control(lab.holder(host.name).pid)),
                    lambda: host_store(lab.plan.site, lab.dir), str(lab.ca_certificate), datetime.now(timezone.utc), 10,
                    in_lab=True)


def _by_host(results: list[Result], checks) -> dict[str, list[Result]]:
    found: dict[str, list[Result]] = {}
    for check, result in zip(checks, results):
        assert check.area == "inside"
        found.setdefault(check.host, []).append(result)
    return found


NOT_IN_THE_LAB = re.compile(r"^not in the lab: ")


def test_a_healthy_lab_passes_every_inside_check(lab: Lab):
    for host in lab.plan.site.hosts:  # what cron does on a host every bgpSpamd.updateMinutes
        assert run_update_job(lab, host.name).status == 0
    view = _lab_view(lab)
    checks = inside.checks(view)
    results = run_checks(checks, 30)
    assert {check.host for check in checks} == {"mx1", "mx2", "mx3"}
    unexpected = [r for r in results if r.status is not Status.PASS and not NOT_IN_THE_LAB.match(r.seen)]
    assert not unexpected, unexpected
    # What the lab cannot run is said, never passed: spamd on every MX, the MTA-STS certificate on the primary.
    assert sorted(r.name for r in results if r.status is Status.WARN) == sorted(
        [f"{h}: spamd runs and syncs with every other MX" for h in ("mx1", "mx2", "mx3")]
        + ["mx1: certificate file for mta-sts.example.org (/etc/ssl/mta-sts.example.org.crt)"])
    names = {r.name: r for r in results}
    assert names["mx1: runs the secrets backend's current key versions"].seen.startswith(
        "runs the backend's versions of queue-key, spamd-sync-key, dkim-example.org, dkim-example.net")
    assert "black list 2 address(es), bypass list 1" in names["mx2: bgp-spamd lists written and filled"].seen


def test_a_host_whose_queue_key_is_behind_the_backend_fails(lab: Lab):
    file = lab.path_on("mx2", facts.KEY_VERSIONS)
    own = file.read_bytes()
    versions = facts.parse_key_versions(own.decode())
    stale = "".join(f"{name} {'0' * len(version) if name == 'queue-key' else version}\n" for name, version in versions.items())
    try:
        file.write_text(stale)
        results = {r.name: r for r in run_checks(inside.checks(_lab_view(lab)), 30)}
    finally:
        file.write_bytes(own)
    behind = results["mx2: runs the secrets backend's current key versions"]
    assert behind.status is Status.FAIL, behind
    assert f"queue-key {'0' * len(versions['queue-key'])}, the backend's is {versions['queue-key']}" in behind.seen
    assert "rotate-queue-key" in behind.fix and "--host mx2" in behind.fix
    for other in ("mx1", "mx3"):
        assert results[f"{other}: runs the secrets backend's current key versions"].status is Status.PASS


def test_a_host_that_does_not_answer_fails_once_and_its_other_checks_are_not_checked(lab: Lab, tmp_path):
    asked = tmp_path / "asked"
    refused = ["sh", "-c", f"echo x >> {asked}; echo 'ssh: connect to host mx2.example.org port 22: Connection refused' >&2;"
               " exit 255", "ssh"]

    def control(host):
        return CommandControl(refused) if host.name == "mx2" else lab_control(lab.holder(host.name).pid)

    checks = inside.checks(_lab_view(lab, control=control))
    started = time.monotonic()
    results = _by_host(run_checks(checks, 30), checks)
    assert time.monotonic() - started < 10
    (reach, *others) = results["mx2"]
    assert reach.status is Status.FAIL and reach.seen.startswith("cannot reach mx2 over ssh: ") and "Connection refused" in reach.seen
    assert all(r.status is Status.WARN and r.seen == "not checked: mx2 is unreachable" for r in others), others
    assert len(others) >= 6
    assert asked.read_text() == "x\n", "the host was asked more than once"
    # The other hosts answer as ever; the backups' queue checks still ask the primary.
    assert all(r.status is not Status.FAIL for host in ("mx1", "mx3") for r in results[host])


def test_every_inside_check_is_bounded_by_the_views_timeout(lab: Lab):
    hanging = ["sh", "-c", "exec sleep 31", "ssh"]  # a host whose ssh connects and then hangs

    def control(host):
        return CommandControl(hanging) if host.name == "mx3" else lab_control(lab.holder(host.name).pid)

    view = replace(_lab_view(lab, control=control), timeout=1)
    checks = inside.checks(view)
    started = time.monotonic()
    results = _by_host(run_checks(checks, 20), checks)
    assert time.monotonic() - started < 5
    assert results["mx3"][0].status is Status.FAIL and "did not answer within 1 s" in results["mx3"][0].seen
    assert subprocess.run(["pgrep", "-f", "^sleep 31$"], capture_output=True).returncode == 1, "a command was left running"


def test_a_missing_certificate_file_and_stale_lists_are_read_from_the_hosts_own_answers(lab: Lab):
    """openssl's answer for a file that is not there, and find's for lists the job left alone."""
    site = lab.plan.site
    certificate = lab.path_on("mx3", site.tls.certificate_for(site.host("mx3")))
    assert run_update_job(lab, "mx2").status == 0
    black = lab.path_on("mx2", BLACK)
    hours_ago = time.time() - 3 * 3600
    own = certificate.read_bytes()
    try:
        certificate.unlink()  # smtpd keeps the certificate it read as it started
        os.utime(black, (hours_ago, hours_ago))
        results = {r.name: r for r in run_checks(inside.checks(_lab_view(lab, warn_days=5)), 30)}
    finally:
        certificate.write_bytes(own)
    missing = results[f"mx3: certificate file for mx3.example.org ({site.tls.certificate_for(site.host('mx3'))})"]
    assert missing.status is Status.FAIL and "no certificate at /etc/ssl/mx3.example.org.crt" in missing.seen, missing
    assert "No such file" in missing.seen and "mailsite-certificates" in missing.fix
    stale = results["mx2: bgp-spamd lists written and filled"]
    assert stale.status is Status.WARN and f"{BLACK} not rewritten for over 60 min" in stale.seen, stale
    assert results["mx1: certificate file for mx1.example.org (/etc/ssl/mx1.example.org.crt)"].status is Status.PASS


def test_a_primary_whose_smtpd_is_down_fails_and_a_backup_waiting_for_it_is_not_called_stuck(lab: Lab):
    site = lab.plan.site
    sent = None
    lab.stop_daemon("mx1", "smtpd")
    try:
        sent = mail.send(lab, "mx2", f"{site.recipients.users[0]}@{site.domains[0]}", "mailsite-lab-doctor-inside")
        assert sent.accepted and mail.queue(lab, "mx2")
        # Ten minutes on: long past a relay's first try, not yet doctor.queueAgeWarnMinutes.
        view = replace(_lab_view(lab), now=datetime.now(timezone.utc) + timedelta(minutes=10))
        results = {r.name: r for r in run_checks(inside.checks(view), 30)}
    finally:
        lab.start_daemon("mx1", "smtpd")
        assert wait_until(lambda: lab.smtpd_listening("mx1"), 30)
        if sent is not None:
            assert mail.flush(lab, "mx2", lambda: not mail.queue(lab, "mx2"), 60), mail.queue(lab, "mx2")
    down = results["mx1: smtpd runs and takes mail"]
    assert down.status is Status.FAIL and "smtpd doesn't seem to be running" in down.seen and "rcctl start smtpd" in down.fix
    held = results["mx2: queue moves (envelopes, oldest's age)"]
    assert held.status is Status.PASS and "1 envelope(s), the oldest 10 min old" in held.seen, held
