"""The example site in the lab, on the real daemons: mail flow, the backup queue, no open relay,
bgp-spamd and the list update job. One lab for the whole module: it comes up in about a second.

These need root (network namespaces, mounts) and the Debian packages in the Makefile's DEBS;
CI runs as root and never skips them.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

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

