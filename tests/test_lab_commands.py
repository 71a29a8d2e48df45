"""`lab status` and `lab demo` as their reader sees them: what they print and their exit status,
on a lab stood in for (no root, no namespaces; tests/test_lab_lifecycle.py runs the real one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import mailsite.commands.lab as lab_command
from mailsite.cli import main
from mailsite.lab.procs import record_of
from mailsite.lab.scenarios import Scenario
from mailsite.lab.site import lab_plan
from mailsite.lab.state import LabState
from mailsite.results import Status
from tests.sites import EXAMPLE

HOSTILE_STACK = "evil\x1b]0;owned\x07\x1b[2J"


def stood_in(example_site, stack="example", owner=None, left=()):
    state = LabState("/srv/Pulumi.example.yaml", stack, owner, blacklist=[], bypass=[], up_seconds=1.2)
    return SimpleNamespace(plan=lab_plan(example_site, Path("/nonexistent/lab-secrets")), state=state,
                           dir=Path("/var/lib/mailsite-lab"), daemons=lambda: {}, down=lambda: list(left))


@pytest.fixture
def lab_is(monkeypatch):
    """Make `lab status` attach to, and `lab demo` bring up, the lab given."""
    def use(lab, demonstration=()):
        monkeypatch.setattr(lab_command, "Lab", SimpleNamespace(attach=lambda: lab, up=lambda config: lab))
        monkeypatch.setattr(lab_command, "DEMONSTRATION", list(demonstration))
        monkeypatch.setattr(lab_command, "_interruptible", lambda: None)
    return use


def passing(name):
    return Scenario(name, "what a stand-in scenario proves, long enough to say it", lambda lab: (True, "fine"))


def test_status_and_up_show_a_stack_name_s_escape_never_obey_it(lab_is, example_site, capsys):
    lab = stood_in(example_site, stack=HOSTILE_STACK)
    lab_is(lab)
    assert main(["lab", "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lab of stack evil\\x1b]0;owned\\x07\\x1b[2J, up in 1.2 s, daemons from the Debian trixie root: opensmtpd 7.")
    assert "\x1b" not in out
    assert main(["lab", "demo", "--config", str(EXAMPLE)]) == 1  # no scenario
    out = capsys.readouterr().out
    assert "(stack evil\\x1b]0;owned\\x07\\x1b[2J), daemons from" in out and "\x1b" not in out and "\x07" not in out


def test_status_of_a_lab_left_by_a_killed_run_says_so_and_to_run_down(lab_is, example_site, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = record_of(gone.pid)
    gone.wait()
    assert owner is not None
    lab_is(stood_in(example_site, owner=owner))
    assert main(["lab", "status"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: the lab of stack example was left by a killed run (pid {owner.pid}); run lab down\n"
    lab_is(stood_in(example_site, owner=record_of(os.getpid())))  # its run still going: up
    assert main(["lab", "status"]) == 0


def json_results(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_demo_json_says_every_reason_it_fails_as_a_fail_object(lab_is, example_site, capsys):
    lab_is(stood_in(example_site, left=["network namespace mslab-mx2"]), [passing("dns"), passing("bgp")])
    assert main(["lab", "demo", "--config", str(EXAMPLE), "--json"]) == 1
    results = json_results(capsys.readouterr().out)
    assert [(r["name"], r["status"]) for r in results] == [
        ("dns", "PASS"), ("bgp", "PASS"), ("lab down: nothing of the lab left on this machine", "FAIL")]
    assert results[-1]["seen"] == "network namespace mslab-mx2" and "lab down" in results[-1]["fix"]

    lab_is(stood_in(example_site), [])
    assert main(["lab", "demo", "--config", str(EXAMPLE), "--json"]) == 1
    assert [(r["status"], r["seen"]) for r in json_results(capsys.readouterr().out)] == [("FAIL", "no scenario ran")]

    lab_is(stood_in(example_site), [passing("dns")])
    assert main(["lab", "demo", "--config", str(EXAMPLE), "--json"]) == 0
    assert [r["status"] for r in json_results(capsys.readouterr().out)] == ["PASS"]


def test_demo_goes_on_after_a_scenario_that_raises_and_reports_it_failed(lab_is, example_site, capsys):
    def broken(lab):
        return {}["mx9"]
    failing = Scenario("mx9: a host the site lacks", "what a stand-in scenario proves, long enough to say it", broken)
    lab_is(stood_in(example_site), [passing("dns"), failing, passing("bgp")])
    assert main(["lab", "demo", "--config", str(EXAMPLE), "--json"]) == 1
    results = json_results(capsys.readouterr().out)
    assert [(r["name"], r["status"]) for r in results] == [
        ("dns", "PASS"), ("mx9: a host the site lacks", "FAIL"), ("bgp", "PASS")]
    assert results[1]["seen"] == "KeyError: 'mx9'" and "lab up --config" in results[1]["fix"]
    assert Status(results[1]["status"]) is Status.FAIL


def test_status_of_a_lab_still_coming_up_says_so(lab_is, example_site, capsys):
    lab = stood_in(example_site)
    lab.state.up_seconds = None  # `up` runs in another process and has not finished
    lab_is(lab)
    assert main(["lab", "status"]) == 0
    assert capsys.readouterr().out.startswith("lab of stack example, still coming up, daemons from the Debian trixie root")
