"""doctor against what a broken or hostile host, a dead resolver, a monitor and a 3 a.m. admin
give it: each is one line, never a traceback, never a false PASS, and the run ends in its time.
(Found in review, issue 17.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import dns.resolver
import pytest

from mailsite import facts
from mailsite.doctor import inside
from mailsite.doctor.core import Check, run_checks
from mailsite.doctor.view import SiteView
from mailsite.hosts import KNOWN_HOSTS, ControlError
from mailsite.model import Queue
from mailsite.results import Status
from tests.sites import EXAMPLE, ROOT, example_settings, site_of

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def example():
    return site_of(example_settings())


class _Answers:
    """A host that answers each command (by its first words) with a text, or raises."""

    def __init__(self, answers: dict[str, object]):
        self.answers = answers

    def run(self, *command: str) -> str:
        said = " ".join(command)
        for start, answer in self.answers.items():
            if said.startswith(start):
                if isinstance(answer, BaseException):
                    raise answer
                return answer  # type: ignore[return-value]
        raise ControlError(f"`{said}` failed: no such command here")

    def reachable(self) -> bool:
        return True

    def replaced(self) -> None:
        pass


class _NoResolver:
    def resolve(self, name, rdtype, lifetime=None):
        raise dns.resolver.NoAnswer()


def _inside(site, answers: dict[str, object], name_part: str, host: str = "mx2"):
    view = SiteView(site, "example", _NoResolver(), lambda h: _Answers(answers), lambda: None, None, NOW, 2.0)
    chosen = [c for c in inside.checks(view) if c.host == host and name_part in c.name]
    assert len(chosen) == 1, [c.name for c in chosen]
    return run_checks(chosen, 10)[0]


HEALTHY = {"true": "", "smtpctl show status": "MDA running\nMTA running\nSMTP running\n"}


# --- what a host says ----------------------------------------------------------------------------

def test_a_sender_with_a_pipe_in_its_local_part_does_not_blind_the_queue_check(example):
    """smtpd takes MAIL FROM:<a|b@example.net> (RFC 5321 allows it): its queue line has one `|`
    more. Split on `|` alone, every envelope after it was unreadable and a stuck backup WARNed
    'cannot tell' for as long as the spammer's envelope stayed."""
    line = ("4ed95cd14a363fd9|inet4|mta||a|b@spam.test|bob@example.org|bob@example.org|1795693492|1796298292|1795693500|3"
            "|pending|395|421 4.7.0 try|again later")
    envelope = facts.parse_envelope(line)
    assert (envelope.sender, envelope.recipient, envelope.retries, envelope.error) == (
        "a|b@spam.test", "bob@example.org", 3, "421 4.7.0 try|again later")
    assert envelope.created == datetime(2026, 11, 26, 11, 44, 52, tzinfo=timezone.utc)
    assert facts.envelope_recipient(line) == "bob@example.org"
    status, seen, _ = inside.queue_outcome(example.host("mx2"), [envelope], envelope.created + (NOW - NOW.replace(hour=11)),
                                           60, Queue(ttl="7d"), False, "mx1", True, example.domains)
    assert status is Status.FAIL and "stuck" in seen


def test_an_empty_or_foreign_smtpctl_status_is_no_pass():
    for said in ["", "\n", "smtpctl: warning: something\n"]:
        status, seen, _ = inside.smtpd_outcome("mx1", said)
        assert status is not Status.PASS and "cannot tell" in seen, said


@pytest.mark.parametrize("answer", ["[]", "null", '{"neighbors": [1]}', '{"neighbors": "x"}', '{"neighbors": [{"state": "Idle"}]}'])
def test_a_bgpctl_answer_of_another_shape_is_a_fail_saying_so_never_a_crash(example, answer):
    with pytest.raises(ValueError, match="not a `bgpctl -j show summary` answer"):
        facts.bgp_sessions(answer)
    result = _inside(example, {**HEALTHY, "bgpctl -j show summary": answer}, "bgpd's sessions")
    assert result.status is Status.FAIL and "bgpd does not answer bgpctl: not a `bgpctl" in result.seen
    assert "the check itself failed" not in result.seen


def _undecodable() -> UnicodeDecodeError:
    try:
        b"\xff\xfe".decode()
    except UnicodeDecodeError as error:
        return error
    raise AssertionError


@pytest.mark.parametrize("command, part", [("cat /etc/mailsite/key-versions", "key versions"),
                                           ("ls -1", "bgp-spamd lists")])
def test_a_binary_answer_is_named_as_such_not_called_a_mailsite_bug(example, command, part):
    result = _inside(example, {**HEALTHY, command: _undecodable()}, part)
    assert result.status is not Status.PASS and "bytes that are not text" in result.seen
    assert "the check itself failed" not in result.seen and "bug" not in result.fix


def test_a_key_versions_file_naming_a_key_twice_fails(example):
    text = "queue-key aaaa\nqueue-key bbbb\nspamd-sync-key cccc\n"
    result = _inside(example, {**HEALTHY, "cat /etc/mailsite/key-versions": text}, "key versions")
    assert result.status is Status.FAIL and "two versions of queue-key" in result.seen


@pytest.mark.parametrize("said, seen, fix", [
    ("@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@@@@@\nIT IS POSSIBLE THAT "
     "SOMEONE IS DOING SOMETHING NASTY!\nHost key for mx2.example.org has changed and you have requested strict "
     "checking.\nHost key verification failed.", "host key is not the one", "ssh-keygen -R mx2.example.org"),
    ("root@mx2.example.org: Permission denied (publickey,password,keyboard-interactive).", "admin key is refused",
     "ssh-add"),
])
def test_ssh_refusing_doctor_says_why_and_what_to_do_in_one_line(example, said, seen, fix):
    result = _inside(example, {"true": ControlError(f"`true` failed: {said}")}, "answers over ssh")
    assert result.status is Status.FAIL and seen in result.seen and fix in result.fix
    assert "\n" not in result.seen + result.fix and len(result.seen) < 200
    assert str(KNOWN_HOSTS) in result.fix or fix == "ssh-add"


# --- the runner ----------------------------------------------------------------------------------

def test_megabytes_from_a_check_are_cut_to_their_start_and_length():
    huge = "\x1b[2J" + "A" * 5_000_000
    result = run_checks([Check("mx1: smtpd runs", "inside", "mx1", lambda: (Status.WARN, huge, huge))], 5)[0]
    assert len(result.seen) < 5000 and len(result.fix) < 5000
    assert result.seen.endswith(f"({len(huge) - 4000} more characters)")


def test_a_check_that_returns_no_outcome_is_one_fail_line():
    results = run_checks([Check("broken", "dns", None, lambda: None),  # type: ignore[arg-type,return-value]
                          Check("half", "dns", None, lambda: (Status.PASS, None, "")),  # type: ignore[arg-type,return-value]
                          Check("fine", "dns", None, lambda: (Status.PASS, "ok", ""))], 5)
    assert [r.status for r in results] == [Status.FAIL, Status.FAIL, Status.PASS]
    assert all("the check itself failed" in r.seen for r in results[:2])


class _SlowResolver:
    def resolve(self, name, rdtype, lifetime=None):
        time.sleep(0.6)
        raise dns.resolver.LifetimeTimeout(timeout=0.6, errors={})


def test_a_resolver_that_does_not_answer_costs_the_checks_making_one_timeout_not_two(example):
    """The outside checks are made from each MX's A and AAAA before any check runs: asked one
    after the other, a dead resolver added two timeouts to a run promised in three."""
    view = SiteView(example, "example", _SlowResolver(), lambda h: None, lambda: None, None, NOW, 0.6)
    started = time.monotonic()
    assert view.addresses(example.host("mx1")) == []
    assert time.monotonic() - started < 1.1


# --- the command, as cron and a monitor run it ---------------------------------------------------

def _doctor_with(checks_code: str, *args: str) -> subprocess.Popen:
    """`python -m mailsite doctor` whose areas are the checks `checks_code` makes."""
    script = textwrap.dedent(f"""
        import sys, threading, time
        from types import ModuleType
        import mailsite.doctor.core as core
        from mailsite.doctor.core import Check
        from mailsite.results import Status
        from mailsite.cli import main
        module = ModuleType("mailsite.doctor.stand_in")
        module.checks = lambda view: {checks_code}
        core.areas = lambda: [module]
        sys.exit(main(["doctor", "--config", {str(EXAMPLE)!r}, "--nameserver", "127.0.0.1", *{list(args)!r}]))
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_json_into_a_reader_that_stops_after_one_line_ends_quietly():
    """`doctor --json | head -1`: no 'error: a file: Broken pipe', no Python complaint at exit."""
    process = _doctor_with('[Check(f"check {i}", "dns", None, lambda: (Status.PASS, "x" * 2000, "")) for i in range(300)]',
                           "--json")
    first = process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=30) == 141
    assert json.loads(first)["name"] == "check 0"
    assert err == ""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_monitor_ending_doctor_gets_one_line(stop):
    process = _doctor_with('[Check("quick", "dns", None, lambda: (Status.PASS, "ok", "")),'
                           ' Check("hung", "inside", "mx1", lambda: (threading.Event().wait(), (Status.PASS, "", ""))[1])]',
                           "--json", "--timeout", "60")
    assert json.loads(process.stdout.readline())["name"] == "quick"
    process.send_signal(stop)
    assert process.wait(timeout=30) == 130
    err = process.stderr.read()
    assert err.splitlines() == ["interrupted; no check changes anything, run doctor again"]


def test_a_host_reached_over_ssh_never_reads_the_callers_stdin():
    """`while read stack; do doctor --config $stack; done < stacks`: ssh forwarded the loop's own
    input to the host, so the loop saw one stack and stopped."""
    script = textwrap.dedent("""
        import sys
        from mailsite.hosts import CommandControl
        said = CommandControl(["sh", "-c", 'read line; echo "host read:$line"', "sh"]).run()
        print(said.strip(), "|", "caller read:" + sys.stdin.readline().strip())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, input="Pulumi.second.yaml\n", capture_output=True,
                          text=True, timeout=30)
    assert done.stdout.strip() == "host read: | caller read:Pulumi.second.yaml", done.stderr


def test_every_host_hanging_at_once_ends_in_three_timeouts_naming_each_host(example):
    """ssh that never returns, on every MX at once: each host's first check names it, the run
    ends in its time."""
    from mailsite.hosts import CommandControl

    view = SiteView(example, "example", _NoResolver(), lambda h: CommandControl(["sh", "-c", "exec sleep 30", "sh"], timeout=0.3),
                    lambda: None, None, NOW, 0.3)
    started = time.monotonic()
    results = run_checks(inside.checks(view), 0.9)
    assert time.monotonic() - started < 2.5
    reach = {r.name: r for r in results if r.name.endswith("answers over ssh")}
    assert set(reach) == {f"{h.name}: answers over ssh" for h in example.hosts}
    for name, result in reach.items():
        assert result.status is Status.FAIL and name.split(":")[0] in result.seen and "within" in result.seen
    assert all(r.status is not Status.PASS for r in results)


def _running_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_command_hung_on_a_host_does_not_outlive_the_run():
    """A host whose df hangs (a stuck file system): the check is left behind at its deadline, and
    so was its ssh, alive after doctor exited, one more with every run cron started."""
    marker = f"sleep {os.getpid() % 1000 + 200}.25"
    hung = (f'[Check("mx1: free space", "inside", "mx1", lambda: (Status.PASS, __import__("mailsite.hosts").hosts'
            f'.CommandControl(["sh", "-c", "exec {marker}"], timeout=60).run(), ""))]')
    process = _doctor_with(hung, "--json", "--timeout", "0.2")
    try:
        out, _ = process.communicate(timeout=30)
        assert json.loads(out)["seen"] == "no answer within 0.6 s"
        time.sleep(0.3)
        left = _running_with(marker)
    finally:
        for pid in _running_with(marker):
            os.kill(pid, signal.SIGKILL)
    assert left == []


def test_doctor_run_in_a_process_leaves_that_process_its_own_sigterm(monkeypatch):
    import mailsite.doctor.core as core
    from types import ModuleType

    from mailsite.cli import main

    module = ModuleType("mailsite.doctor.stand_in")
    module.checks = lambda view: [Check("one", "dns", None, lambda: (Status.PASS, "ok", ""))]
    monkeypatch.setattr(core, "areas", lambda: [module])
    before = signal.getsignal(signal.SIGTERM)
    assert main(["doctor", "--config", str(EXAMPLE), "--nameserver", "127.0.0.1", "--json"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_on_lab_doctor_is_one_line():
    """`lab doctor` runs doctor as a child in the internet node's namespace: a Ctrl-C reaches both,
    and each said 'interrupted'. A stand-in lab: the child is doctor's own interrupt handling."""
    child = textwrap.dedent(f"""
        import sys, threading
        from mailsite.cli import main
        import mailsite.doctor.core as core
        from mailsite.doctor.core import Check
        from mailsite.results import Status
        from types import ModuleType
        module = ModuleType("mailsite.doctor.stand_in")
        module.checks = lambda view: [Check("hung", "dns", None,
                                            lambda: (print("started", flush=True), threading.Event().wait(), (Status.PASS, "", ""))[2])]
        core.areas = lambda: [module]
        sys.exit(main(["doctor", "--config", {str(EXAMPLE)!r}, "--nameserver", "127.0.0.1", "--timeout", "60"]))
    """)
    parent = textwrap.dedent(f"""
        import contextlib, sys
        from types import SimpleNamespace
        import mailsite.commands.lab as command
        import mailsite.lab.doctor as lab_doctor
        command.Lab = SimpleNamespace(attach=lambda: None)
        command._refuse_if_abandoned = lambda lab: None
        lab_doctor.policy_served = lambda lab: contextlib.nullcontext()
        lab_doctor.doctor_argv = lambda lab, *options: [sys.executable, "-c", {child!r}]
        command.run_doctor = lab_doctor.run_doctor
        from mailsite.cli import main
        sys.exit(main(["lab", "doctor"]))
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert process.stdout.readline() == "started\n"
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert err.splitlines() == ["interrupted; no check changes anything, run doctor again"]


def test_spamd_flags_with_a_stray_quote_are_read_not_a_crash():
    status, seen, _ = inside.spamd_outcome("mx2", '-v -y 192.0.2.12 -Y "192.0.2.11', "192.0.2.12", {"mx1": ["192.0.2.11"]})
    assert status is Status.FAIL and "sends no sync to mx1" in seen


def test_the_queue_of_a_host_whose_smtpd_does_not_answer_is_not_called_empty(example):
    """smtpctl without smtpd walks the queue itself and skips each encrypted envelope (OpenBSD's
    smtpctl.c: "offline encrypted queue is not supported yet"), printing none and exiting 0."""
    down = ControlError("`smtpctl show status` failed: smtpctl: smtpd doesn't seem to be running")
    result = _inside(example, {"true": "", "smtpctl show status": down, "smtpctl show queue": ""}, "queue moves", "mx1")
    assert result.status is Status.WARN and "cannot tell" in result.seen and "empty" not in result.seen


def test_the_lab_primary_with_smtpd_stopped_has_no_empty_queue(lab):
    from dataclasses import replace

    from mailsite.hosts import lab_control
    from mailsite.lab.procs import wait_until

    view = SiteView(lab.plan.site, lab.state.stack, _NoResolver(), lambda h: lab_control(lab.holder(h.name).pid, timeout=10),
                    lambda: None, None, datetime.now(timezone.utc), 10.0, in_lab=True)
    lab.stop_daemon("mx1", "smtpd")
    try:
        (queue,) = [c for c in inside.checks(view) if c.name == "mx1: queue moves (envelopes, oldest's age)"]
        result = run_checks([queue], 30)[0]
    finally:
        lab.start_daemon("mx1", "smtpd")
        assert wait_until(lambda: lab.smtpd_listening("mx1"), 30)
    assert result.status is not Status.PASS, result
    assert replace(result, seconds=0).seen.startswith("cannot tell")


def test_a_certificate_date_doctor_cannot_read_is_not_called_missing(example):
    answers = {**HEALTHY, "openssl x509": "notAfter=Dec  3 11:40:12.250 2026 GMT\n"}
    result = _inside(example, answers, "certificate file for mx2")
    assert result.status is Status.WARN and "cannot tell its expiry" in result.seen and "no certificate" not in result.seen
