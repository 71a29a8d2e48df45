"""The demonstration's scenarios as declared: each once, with what it proves, and the docs'
list generated from them. Pure: no lab is brought up here (tests/test_lab.py runs them)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mailsite.lab import scenarios
from mailsite.lab.procs import LabError
from mailsite.lab.scenarios import DEMONSTRATION, Scenario, scenarios_markdown
from mailsite.lab.site import lab_plan
from mailsite.results import Status
from tests.sites import ROOT, site_of, sized_settings


def test_docs_list_of_scenarios_is_generated_from_the_declarations():
    docs = ROOT / scenarios.DOCS
    assert docs.exists() and docs.read_text() == scenarios_markdown(), (
        f"{scenarios.DOCS} differs from the scenarios declared in mailsite/lab/scenarios.py: run "
        f".venv/bin/python -m mailsite.lab.scenarios > {scenarios.DOCS}")


def test_each_scenario_declared_once_with_what_it_proves():
    names, ids = [s.name for s in DEMONSTRATION], [s.id for s in DEMONSTRATION]
    assert len(set(names)) == len(names) and len(set(ids)) == len(ids)
    assert all(len(s.proves) > 40 and "\n" not in s.proves for s in DEMONSTRATION)
    # A scenario function that is not registered would never run in `make lab` nor in the tests.
    declared = {name for name, value in vars(scenarios).items() if isinstance(value, Scenario)}
    assert declared == set(ids)
    assert not [s for s in DEMONSTRATION if s.check.__doc__], "what a scenario proves is said once, in proves="


def test_worst_backup_scenario_on_a_site_with_one_backup_is_a_warning_not_a_pass():
    plan = lab_plan(site_of(sized_settings(2)), Path("/nonexistent/lab-secrets"))
    result = scenarios.worst_backup_relays_to_primary(SimpleNamespace(plan=plan))
    assert result.status is Status.WARN and result.seen == "not tried: needs two backups; this site has 1"
    assert result.ok  # said, and not a failure of the site


def test_a_scenario_that_cannot_finish_fails_with_where_to_look():
    def unreachable(lab):
        raise LabError("mx2: bgpctl show summary: connection refused")
    lab = SimpleNamespace(state=SimpleNamespace(config="/srv/Pulumi.example.yaml"), dir=Path("/var/lib/mailsite-lab"))
    result = Scenario("bgp: sessions", "what a test scenario proves, long enough to say it", unreachable)(lab)
    assert result.status is Status.FAIL and result.seen == "mx2: bgpctl show summary: connection refused"
    assert "lab up --config /srv/Pulumi.example.yaml" in result.fix and "/var/lib/mailsite-lab/nodes/" in result.fix
