"""`lab doctor` against the running lab: the healthy site passes, and each fault a mail admin
meets (mailsite/lab/faults.py) is reported as the FAIL that names it, with a fix, while the other
hosts' checks stay as they were; once the fault is undone the site passes again.

The faults are first checked on their own, as a client sees them (swaks, dig, bgpctl, smtpctl),
so that a FAIL below is known to come from a real fault, and each is checked to leave the lab
exactly as it found it: one lab serves the whole module."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mailsite.facts import KEY_VERSIONS, parse_key_versions
from mailsite.lab import faults, mail
from mailsite.lab.bgp import routes_received, sessions
from mailsite.lab.lab import Lab
from mailsite.results import Result, Status
from tests.sites import ROOT

PRIMARY, BACKUP, WORST = "mx1", "mx2", "mx3"  # the example site's
ROUTE_SERVER = "rs1"
BLOCKLIST = "zen.spamhaus.org"  # the lab's DNS answers it, listing nothing but its test entries
STRANGER = "probe@relay-test.invalid"  # no site domain: an MX that takes it is an open relay


def _dig(lab: Lab, rdtype: str, name: str) -> set[str]:
    argv = ["dig", "+short", "+time=2", "+tries=1", f"@{lab.plan.dns.ipv4}", rdtype, name]
    return set(lab.run_in(lab.plan.internet.name, argv, timeout=10).stdout.split("\n")) - {""}


def _user(lab: Lab) -> str:
    site = lab.plan.site
    return f"{site.recipients.users[0]}@{site.domains[0]}"


@dataclass(frozen=True)
class Fault:
    id: str
    inject: Callable[[Lab], contextlib.AbstractContextManager]
    seen: Callable[[Lab], str]  # "": a client sees the fault; else what it saw instead


def _refused_or_unanswered(lab: Lab) -> str:
    sent = mail.recipient_taken(lab, PRIMARY, _user(lab))
    return "" if not sent.accepted and not lab.smtpd_listening(PRIMARY) else f"{PRIMARY} still takes mail (swaks {sent.status})"


def _mx_names(lab: Lab) -> str:
    names = _dig(lab, "MX", lab.plan.site.domains[0])
    return "" if not any("mx3." in name for name in names) else f"MX still served: {sorted(names)}"


def _spf(lab: Lab) -> str:
    texts = _dig(lab, "TXT", lab.plan.site.domains[0])
    return "" if texts == {'"v=spf1 +all"'} else f"TXT served: {sorted(texts)}"


def _listed(lab: Lab) -> str:
    address = str(lab.plan.node(BACKUP).ipv4)
    answers = _dig(lab, "A", ".".join([*reversed(address.split(".")), BLOCKLIST]))
    return "" if answers == {faults.LISTED} else f"{BLOCKLIST} answers {sorted(answers) or 'nothing'} for {address}"


def _certificate_refused(saying: str) -> Callable[[Lab], str]:
    def seen(lab: Lab) -> str:
        sent = mail.verifying(lab, BACKUP, lab.plan.site.host(BACKUP).mx_name)
        return "" if sent.status == 29 and saying in sent.transcript else \
            f"swaks {sent.status}: {sent.certificate_check or sent.transcript[-300:]}"
    return seen


def _relays(lab: Lab) -> str:
    sent = mail.recipient_taken(lab, WORST, STRANGER)
    return "" if sent.accepted else f"{WORST} refused {STRANGER}: {sent.refusal}"


def _session_down(lab: Lab) -> str:
    state = sessions(lab, BACKUP).get(str(lab.plan.node(ROUTE_SERVER).ipv4))
    return "" if state not in (None, "Established") else f"{BACKUP}'s session with {ROUTE_SERVER}: {state}"


def _held(lab: Lab) -> str:
    queued = mail.queue(lab, WORST)
    return "" if len(queued) == 1 and _user(lab) in queued[0] else f"{WORST}'s queue: {queued}"


def _behind(lab: Lab) -> str:
    versions = parse_key_versions(lab.run_in(BACKUP, ["cat", KEY_VERSIONS]).stdout)
    return "" if set(versions.get("queue-key", "")) == {"0"} else f"{BACKUP} says {versions}"


FAULTS = [
    Fault("primary_down", faults.primary_down, _refused_or_unanswered),
    Fault("mx_record_missing", lambda lab: faults.dns_record_missing(lab, faults.dns_option(lab, "mx-host=example.org,mx3.")),
          _mx_names),
    Fault("spf_record_wrong", lambda lab: faults.dns_record_wrong(
        lab, faults.dns_option(lab, "txt-record=example.org,"), 'txt-record=example.org,"v=spf1 +all"'), _spf),
    Fault("listed_by_a_blocklist", lambda lab: faults.blocklisted(lab, BACKUP, BLOCKLIST), _listed),
    Fault("certificate_expired", lambda lab: faults.certificate_expired(lab, BACKUP), _certificate_refused("expired")),
    Fault("certificate_wrong_name", lambda lab: faults.certificate_wrong_name(lab, BACKUP),
          _certificate_refused("failed host verification")),
    Fault("open_relay", lambda lab: faults.open_relay(lab, WORST), _relays),
    Fault("bgp_session_down", lambda lab: faults.bgp_session_down(lab, BACKUP, ROUTE_SERVER), _session_down),
    Fault("queue_stuck", lambda lab: faults.queue_stuck(lab, WORST), _held),
    Fault("key_version_behind", lambda lab: faults.key_version_behind(lab, BACKUP), _behind),
]


def _state(lab: Lab) -> dict[str, object]:
    """What a fault may touch, as it is now: every file faults change (bytes), every daemon,
    each MX's queue, smtpd's own status (MTA paused or not) and bgp routes."""
    site = lab.plan.site
    files = {"dns:/etc/dnsmasq.conf": lab.path_on(lab.plan.dns.name, "/etc/dnsmasq.conf").read_bytes()}
    for host in site.hosts:
        for path in ("/etc/mail/smtpd.conf", site.tls.certificate_for(host), site.tls.key_for(host), KEY_VERSIONS):
            files[f"{host.name}:{path}"] = lab.path_on(host.name, path).read_bytes()
    return {
        "files": files,
        "daemons": lab.daemons(),
        "queues": {host.name: mail.queue(lab, host.name) for host in site.hosts},
        "smtpd": {host.name: lab.run_in(host.name, ["smtpctl", "show", "status"], timeout=10).stdout for host in site.hosts},
        "routes": {host.name: routes_received(lab, host.name) for host in site.hosts},
    }


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.id)
def test_each_fault_is_seen_by_a_client_and_undone_exactly(lab: Lab, fault: Fault):
    before = _state(lab)
    assert all(before["daemons"].values()) and all(before["routes"].values()), before
    with fault.inject(lab):
        assert fault.seen(lab) == ""
    after = _state(lab)
    changed = [path for path, data in before["files"].items() if after["files"][path] != data]
    assert not changed, f"{fault.id} left these files changed: {changed}"
    assert {key: after[key] for key in before if key != "files"} == {key: before[key] for key in before if key != "files"}
    assert fault.seen(lab) != "", f"{fault.id} is still seen after it was undone"


def test_a_fault_is_undone_when_the_body_fails(lab: Lab):
    before = _state(lab)
    with pytest.raises(RuntimeError, match="the test's own"):
        with faults.open_relay(lab, WORST):
            raise RuntimeError("the test's own failure")
    assert _state(lab) == before and mail.recipient_taken(lab, WORST, STRANGER).refused_permanently


# doctor against the lab, healthy and with each fault.

@dataclass(frozen=True)
class Said:
    """One check as `lab doctor --json` prints it: its result, and the area and host it is filed by."""
    result: Result
    area: str
    host: str | None  # None: the site's (a domain's records)


def _doctor(*options: str) -> tuple[int, dict[str, Said], str]:
    """`lab doctor --json` as an admin or a monitor runs it: exit status, checks by name, stderr."""
    done = subprocess.run([sys.executable, "-m", "mailsite", "lab", "doctor", "--json", *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    said = [Said(Result.from_json(line), line["area"], line["host"]) for line in lines]
    assert said, f"lab doctor printed no result (exit {done.returncode}): {done.stderr.strip()[-400:]}"
    return done.returncode, {check.result.name: check for check in said}, done.stderr


def _failed(checks: dict[str, Said]) -> list[Said]:
    return [check for check in checks.values() if check.result.status is Status.FAIL]


def _shown(checks: list[Said]) -> list[str]:
    return [f"{check.result.name}: {check.result.seen}" for check in checks]


@pytest.fixture(scope="module")
def healthy(lab: Lab) -> dict[str, Said]:
    """doctor's results on the lab as it came up: what every fault's run is compared with."""
    status, checks, said = _doctor()
    assert status == 0 and not _failed(checks), _shown(_failed(checks)) or said
    return checks


def test_lab_doctor_passes_the_healthy_site_and_checks_every_host_in_every_area(lab: Lab, healthy: dict[str, Said]):
    assert {check.area for check in healthy.values()} == {"dns", "smtp", "blocklists", "inside"}
    for host in lab.plan.site.hosts:
        passed = {check.area for check in healthy.values() if check.host == host.name and check.result.status is Status.PASS}
        assert passed == {"dns", "smtp", "blocklists", "inside"}, f"{host.name}: checks passed only in {passed}"
    assert all(check.result.fix for check in healthy.values() if check.result.status is Status.WARN)


@dataclass(frozen=True)
class Failing:
    """A FAIL doctor must print: of `area` and `host`, its name starting with `words[0]` and holding
    the other words, its fix holding `fix`."""
    area: str
    host: str | None
    words: tuple[str, ...]
    fix: str

    def named(self, check: Said) -> bool:
        name = check.result.name.lower()
        return (check.area, check.host) == (self.area, self.host) and name.startswith(self.words[0].lower()) \
            and all(word.lower() in name for word in self.words[1:])


@dataclass(frozen=True)
class Diagnosis:
    """What doctor must say of a fault: every FAIL of `fails`; and no other check's status changes
    from the healthy run's, but those `may_change` allows (the faulted host's, or the one record's)."""
    fails: list[Failing]
    may_change: Callable[[Said], bool]


def _of_host(host: str) -> Callable[[Said], bool]:
    return lambda check: check.host == host


def _record(prefix: str) -> Callable[[Said], bool]:
    return lambda check: check.area == "dns" and check.result.name.startswith(prefix)


def _both_families(area: str, host: str, words: tuple[str, ...], fix: str) -> list[Failing]:
    return [Failing(area, host, (*words, family), fix) for family in ("over IPv4", "over IPv6")]


DIAGNOSES = {
    "primary_down": Diagnosis([*_both_families("smtp", PRIMARY, ("mx1.example.org: port 25 answers",), "smtpd running"),
                               Failing("inside", PRIMARY, ("mx1: smtpd runs",), "rcctl start smtpd")], _of_host(PRIMARY)),
    "mx_record_missing": Diagnosis([Failing("dns", None, ("example.org: MX records",), "MX 30 mx3.example.org")],
                                   _record("example.org: MX records")),
    "spf_record_wrong": Diagnosis([Failing("dns", None, ("example.org: SPF",), '"v=spf1 a:mx1.example.org -all"')],
                                  _record("example.org: SPF")),
    "listed_by_a_blocklist": Diagnosis([Failing("blocklists", BACKUP, (f"mx2.example.org: not listed by {BLOCKLIST}",),
                                                "check.spamhaus.org")], _of_host(BACKUP)),
    "certificate_expired": Diagnosis([*_both_families("smtp", BACKUP, ("mx2.example.org: STARTTLS",), "renew"),
                                      Failing("inside", BACKUP, ("mx2: certificate file",), "mailsite-certificates")],
                                     _of_host(BACKUP)),
    "certificate_wrong_name": Diagnosis(_both_families("smtp", BACKUP, ("mx2.example.org: STARTTLS",),
                                                       "a certificate for mx2.example.org"), _of_host(BACKUP)),
    "open_relay": Diagnosis(_both_families("smtp", WORST, ("mx3.example.org: refuses to relay", "open relay"),
                                           "never from any for any"), _of_host(WORST)),
    "bgp_session_down": Diagnosis([Failing("inside", BACKUP, ("mx2: bgpd", "Established"), "bgpctl neighbor")],
                                  _of_host(BACKUP)),
    "queue_stuck": Diagnosis([Failing("inside", WORST, ("mx3: queue",), "smtpctl resume mta")], _of_host(WORST)),
    "key_version_behind": Diagnosis([Failing("inside", BACKUP, ("mx2:", "key versions"), "rotate-queue-key")],
                                    _of_host(BACKUP)),
}


@pytest.mark.parametrize("fault", [fault for fault in FAULTS if fault.id in DIAGNOSES], ids=lambda fault: fault.id)
def test_lab_doctor_fails_the_fault_with_its_fix_and_passes_once_it_is_undone(
        lab: Lab, healthy: dict[str, Said], fault: Fault):
    diagnosis = DIAGNOSES[fault.id]
    with fault.inject(lab):
        status, checks, said = _doctor()
    assert status == 1, said
    failed = _failed(checks)
    for failing in diagnosis.fails:
        named = [check for check in failed if failing.named(check)]
        assert named, f"no FAIL like {failing}; FAILs: {_shown(failed)}"
        assert all(failing.fix in check.result.fix for check in named), [(c.result.name, c.result.fix) for c in named]
    changed = [f"{name}: {healthy[name].result.status.value if name in healthy else 'absent'} -> "
               f"{check.result.status.value} ({check.result.seen})" for name, check in checks.items()
               if (name not in healthy or healthy[name].result.status is not check.result.status)
               and not diagnosis.may_change(check)]
    assert not changed, f"checks of what {fault.id} did not touch changed: {changed}"
    status, checks, said = _doctor()
    assert status == 0 and not _failed(checks), _shown(_failed(checks)) or said
    assert {name: check.result.status for name, check in checks.items()} == \
        {name: check.result.status for name, check in healthy.items()}
