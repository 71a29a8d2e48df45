"""doctor's frame: checks run at once, each bounded, reported in the order given; the areas'
checks gathered (one host's alone with --host); the command's exit status, its two printed
forms, and its one line for a bad command line. The areas' own checks have tests of their own."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from types import ModuleType, SimpleNamespace

import dns.resolver
import pytest
import yaml

import mailsite.doctor.core as core
from mailsite.cli import main
from mailsite.doctor.core import Check, all_checks, run_checks
from mailsite.doctor.view import SiteView
from mailsite.hosts import CommandControl
from mailsite.results import Result, Status
from mailsite.secrets.file import FileStore
from tests.sites import EXAMPLE, ROOT, example_settings


def check(name: str, status: Status = Status.PASS, seconds: float = 0.0, host: str | None = None,
          area: str = "dns") -> Check:
    def run():
        time.sleep(seconds)
        return status, f"{name} seen", "" if status is Status.PASS else f"fix {name}"
    return Check(name, area, host, run)


# --- run_checks ----------------------------------------------------------------------------------

def test_checks_run_at_once_and_are_reported_in_the_order_given():
    """Three checks of a second each take about a second, not three; the one that ends first
    (the last given) is still reported last, so a monitor reads a stable order."""
    checks = [check("slow", seconds=1.0), check("slower", seconds=1.2), check("quick", seconds=0.1)]
    reported: list[Result] = []
    started = time.monotonic()
    results = run_checks(checks, timeout=10, report=reported.append)
    assert time.monotonic() - started < 2.5  # generous: one after another is 2.3 s at the least
    assert [r.name for r in results] == ["slow", "slower", "quick"]
    assert reported == results
    assert all(r.status is Status.PASS and r.seen == f"{r.name} seen" for r in results)
    assert results[2].seconds < results[0].seconds


def test_a_hung_check_is_a_fail_naming_the_timeout_and_stalls_no_other():
    never = threading.Event()
    try:
        hung = Check("mx9.example.org: port 25 answers", "smtp", "mx9", lambda: (never.wait(), (Status.PASS, "", ""))[1])
        started = time.monotonic()
        results = run_checks([check("before"), hung, check("after", Status.WARN)], timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        never.set()
    assert [(r.name, r.status) for r in results] == [
        ("before", Status.PASS), ("mx9.example.org: port 25 answers", Status.FAIL), ("after", Status.WARN)]
    assert results[1].seen == "no answer within 0.5 s"
    assert results[1].fix


def test_a_check_that_raises_is_one_fail_line_and_the_others_still_run():
    def broken():
        raise KeyError("mx1")
    results = run_checks([check("first"), Check("mx1: queue", "inside", "mx1", broken), check("last")], timeout=5)
    assert [r.status for r in results] == [Status.PASS, Status.FAIL, Status.PASS]
    assert results[1].seen == "the check itself failed: KeyError: 'mx1'"
    assert "\n" not in results[1].seen + results[1].fix and "Traceback" not in results[1].seen


# --- all_checks ----------------------------------------------------------------------------------

def area(name: str, *made: Check) -> ModuleType:
    module = ModuleType(f"mailsite.doctor.{name}")
    module.checks = lambda view: list(made)
    return module


SITE_WIDE = check("example.org: MX records as in the stack")
OF_MX1 = check("mx1.example.org: port 25 answers", host="mx1", area="smtp")
OF_MX2 = check("mx2.example.org: port 25 answers", host="mx2", area="smtp")
INSIDE_MX1 = check("mx1: queue", host="mx1", area="inside")
AREAS = [area("dns", SITE_WIDE), area("smtp", OF_MX1, OF_MX2), area("inside", INSIDE_MX1)]


def test_all_checks_are_every_areas_in_order_and_host_keeps_that_hosts_alone():
    assert all_checks(None, modules=AREAS) == [SITE_WIDE, OF_MX1, OF_MX2, INSIDE_MX1]
    assert all_checks(None, "mx1", modules=AREAS) == [OF_MX1, INSIDE_MX1]
    assert all_checks(None, "mx2", modules=AREAS) == [OF_MX2]


def test_an_area_that_cannot_make_its_checks_is_one_fail_and_the_others_still_run():
    def broken(view):
        raise AttributeError("'Site' object has no attribute 'doktor'")
    bad = ModuleType("mailsite.doctor.blocklists")
    bad.checks = broken
    for only in (None, "mx1"):
        found = all_checks(None, only, modules=[AREAS[0], bad, AREAS[1]])
        unbuilt = found[1 if only is None else 0]
        status, seen, fix = unbuilt.run()
        assert status is Status.FAIL and unbuilt.name == "doctor's blocklists checks"
        assert seen == "its checks could not be made from the stack: AttributeError: 'Site' object has no attribute 'doktor'"
        assert found[-2:] == ([OF_MX1, OF_MX2] if only is None else [unbuilt, OF_MX1])


def test_every_area_module_gives_checks_of_a_known_area_and_a_host_of_the_site(example_site):
    """The modules that are in: each gives Check objects, about a host of the stack or the site,
    and reaches nothing while making them but the MX names' addresses (which decide the checks
    of each address family), asked through the view."""
    resolver = _Addresses()
    # Backups on, so that every area has checks to make.
    site = example_site.model_copy(update={"backup": example_site.backup.model_copy(update={"bucket": "example-mail-backups"})})
    view = SiteView(site, "example", resolver, lambda host: _Unasked(), lambda: _Unasked(), None,
                    datetime.now(timezone.utc), 1.0)
    assert [module.__name__ for module in core.areas()] == [
        "mailsite.doctor.dns", "mailsite.doctor.smtp", "mailsite.doctor.blocklists", "mailsite.doctor.inside",
        "mailsite.doctor.backup"]
    for module in core.areas():
        made = module.checks(view)
        assert made and all(isinstance(c, Check) for c in made), module.__name__
        assert {c.area for c in made} == {module.__name__.rsplit(".", 1)[-1]}
        assert {c.host for c in made} <= {None, *(h.name for h in example_site.hosts)}
        assert len({c.name for c in made}) == len(made), f"{module.__name__}: two checks of one name"
    assert set(resolver.asked) <= {(host.mx_name, rdtype) for host in example_site.hosts for rdtype in ("A", "AAAA")}


class _Unasked:
    """A host or a secrets backend that must not be reached while checks are made."""

    def __getattr__(self, name):
        raise AssertionError(f"reached the network while making checks ({name})")


class _Addresses:
    """A resolver knowing each MX name's IPv4 address (TEST-NET-1), and nothing else."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    def resolve(self, name, rdtype, lifetime=None):
        self.asked.append((str(name), rdtype))
        if rdtype == "A" and str(name).startswith("mx"):
            return [SimpleNamespace(address=f"192.0.2.{10 + int(str(name)[2])}")]
        raise dns.resolver.NoAnswer()


# --- the command ---------------------------------------------------------------------------------

@pytest.fixture
def areas_are(monkeypatch):
    """Make doctor run these areas' checks, and keep the view it built."""
    seen: list[SiteView] = []

    def use(*checks: Check) -> list[SiteView]:
        module = ModuleType("mailsite.doctor.stand_in")

        def made(view):
            seen.append(view)
            return list(checks)
        module.checks = made
        monkeypatch.setattr(core, "areas", lambda: [module])
        return seen
    return use


def doctor(capsys, *args: str) -> tuple[int, str, str]:
    try:
        status = main(["doctor", "--config", str(EXAMPLE), *args], prog="python -m mailsite")
    except SystemExit as exit:  # argparse's refusal of the command line
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("statuses, exit", [
    ((Status.PASS, Status.PASS), 0), ((Status.PASS, Status.WARN), 0), ((Status.WARN, Status.FAIL), 1)])
def test_exit_status_is_1_only_when_a_check_fails(areas_are, capsys, statuses, exit):
    areas_are(*(check(f"check {i}", status) for i, status in enumerate(statuses)))
    status, out, err = doctor(capsys)
    assert (status, err) == (exit, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{statuses[0].value}  check 0")
    assert lines[-1].startswith(f"{sum(s is Status.PASS for s in statuses)} of 2 passed")


def test_json_is_one_object_per_check_in_order_with_its_area_and_host_and_nothing_else(areas_are, capsys):
    areas_are(check("mx1.example.org: port 25 answers", host="mx1", area="smtp"), check("example.org: SPF", Status.FAIL))
    status, out, err = doctor(capsys, "--json")
    assert status == 1 and err == ""
    objects = [json.loads(line) for line in out.splitlines()]
    assert [(o["name"], o["status"], o["seen"], o["area"], o["host"]) for o in objects] == [
        ("mx1.example.org: port 25 answers", "PASS", "mx1.example.org: port 25 answers seen", "smtp", "mx1"),
        ("example.org: SPF", "FAIL", "example.org: SPF seen", "dns", None)]
    assert objects[1]["fix"] == "fix example.org: SPF" and all(isinstance(o["seconds"], float) for o in objects)
    assert Result.from_json(objects[0]) == Result("mx1.example.org: port 25 answers", Status.PASS,
                                                  "mx1.example.org: port 25 answers seen", "", objects[0]["seconds"])


def test_host_runs_that_hosts_checks_alone(areas_are, capsys):
    areas_are(SITE_WIDE, OF_MX1, OF_MX2, INSIDE_MX1)
    status, out, _ = doctor(capsys, "--host", "mx1", "--json")
    assert status == 0
    assert [json.loads(line)["name"] for line in out.splitlines()] == [OF_MX1.name, INSIDE_MX1.name]


def test_a_run_with_nothing_to_check_fails(areas_are, capsys):
    """Exit 0 with no line would read as a healthy site to cron."""
    areas_are()
    status, out, _ = doctor(capsys)
    assert status == 1 and out.startswith("FAIL  doctor: the site's checks") and "no check to run" in out


def test_a_hung_check_is_reported_after_three_timeouts_and_the_rest_still_print(areas_are, capsys):
    never = threading.Event()
    try:
        areas_are(check("quick"), Check("mx2: queue", "inside", "mx2", lambda: (never.wait(), (Status.PASS, "", ""))[1]))
        status, out, _ = doctor(capsys, "--timeout", "0.2", "--json")
    finally:
        never.set()
    assert status == 1
    assert [(o["name"], o["status"], o["seen"]) for o in map(json.loads, out.splitlines())] == [
        ("quick", "PASS", "quick seen"), ("mx2: queue", "FAIL", "no answer within 0.6 s")]


def test_the_view_asks_the_nameserver_given_and_reaches_hosts_over_ssh(areas_are, capsys):
    views = areas_are(check("one"))
    assert doctor(capsys, "--nameserver", "2001:db8::53", "--timeout", "4")[0] == 0
    view = views[0]
    assert view.resolver.nameservers == ["2001:db8::53"] and view.resolver.lifetime == 4
    assert (view.stack, view.timeout, view.cafile, view.in_lab) == ("example", 4.0, None, False)
    mx2 = view.site.host("mx2")
    control = view.control(mx2)
    assert isinstance(control, CommandControl) and control.prefix[0] == "ssh"
    assert control.prefix[-1] == f"root@{mx2.mx_name}" and control.timeout == 4
    # The stack's backend, a relative path anchored at the stack file's directory, as every command does.
    store = view.store()
    assert isinstance(store, FileStore) and store.root == (EXAMPLE.parent / view.site.secrets.path).resolve()


def _one_line(status: int, err: str, *words: str) -> None:
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    (["--host", "mx9"], ["--host = mx9", "use one of mx1, mx2, mx3"]),
    (["--nameserver", "ns1.example.net"], ["--nameserver = ns1.example.net", "not an IP address"]),
    (["--nameserver", "192.0.2.300"], ["--nameserver = 192.0.2.300", "not an IP address"]),
    (["--timeout", "ten"], ["--timeout = ten", "use one like 10"]),
    (["--timeout", "0"], ["--timeout = 0", "above 0"]),
    (["--timeout", "-3"], ["--timeout = -3", "above 0"]),
    (["--timeout", "nan"], ["--timeout = nan"]),
    (["--timeout", "inf"], ["--timeout = inf"]),
    (["--timeout", "301"], ["--timeout = 301", "at most 300"]),
])
def test_a_bad_option_is_one_line_and_exit_2(areas_are, capsys, args, words):
    views = areas_are(check("never run"))
    status, out, err = doctor(capsys, *args)
    _one_line(status, err, *words)
    assert out == "" and views == []


def test_an_unreadable_or_broken_stack_file_is_one_line_and_exit_2(areas_are, capsys, tmp_path):
    areas_are(check("never run"))
    for config, word in [(tmp_path / "Pulumi.gone.yaml", "No such file"), (tmp_path, "Pulumi.<stack>.yaml")]:
        status, out, err = doctor(capsys, "--config", str(config))
        _one_line(status, err, str(config), word)
    settings = example_settings()
    settings["doctor"] = {"freeSpaceWarnPercent": 60}
    broken = tmp_path / "Pulumi.broken.yaml"
    broken.write_text(yaml.safe_dump({"config": {f"mailsite:{k}": v for k, v in settings.items()}}))
    status, out, err = doctor(capsys, "--config", str(broken))
    _one_line(status, err, "doctor.freeSpaceWarnPercent", "60")


def test_doctor_settings_have_their_defaults_in_the_example_site(example_site):
    assert example_site.doctor.blocklists == ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "psbl.surriel.com"]
    assert (example_site.doctor.certificate_warn_days, example_site.doctor.queue_age_warn_minutes,
            example_site.doctor.free_space_warn_percent) == (14, 60, 10)


# --- the lab -------------------------------------------------------------------------------------

def _lab_doctor(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailsite", "lab", "doctor", *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_lab_doctor_passes_on_the_healthy_lab_one_json_line_per_check(lab):
    """The same command, from the lab's internet node, against the lab's DNS, CA and hosts: every
    area's checks, none FAILs; --host keeps one host's, and a host the lab lacks is one line."""
    done = _lab_doctor("--json")
    objects = [json.loads(line) for line in done.stdout.splitlines()]
    results = [Result.from_json(o) for o in objects]
    failed = [f"{r.name}: {r.seen}" for r in results if r.status is Status.FAIL]
    assert (done.returncode, failed, done.stderr) == (0, [], "")
    assert len({r.name for r in results}) == len(results)
    assert {o["area"] for o in objects} == {"dns", "smtp", "blocklists", "inside"}
    assert {o["host"] for o in objects} == {None, "mx1", "mx2", "mx3"}

    one = _lab_doctor("--json", "--host", "mx2")
    assert one.returncode == 0, one.stderr
    assert [json.loads(line)["name"] for line in one.stdout.splitlines()] == [o["name"] for o in objects if o["host"] == "mx2"]
    unknown = _lab_doctor("--host", "mx9")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == "error: --host = mx9: not a host of the site; use one of mx1, mx2, mx3\n"
