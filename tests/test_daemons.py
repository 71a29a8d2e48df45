"""The daemon registry is the one source: what the lab starts, what the firewall opens and which
files a host carries all come from mailsite.daemons."""

from __future__ import annotations

from mailsite.daemons import DAEMONS, LabRun, daemons_on
from mailsite.render import render_host
from tests.sites import addresses, fake_secrets


def test_daemon_names_are_unique():
    names = [daemon.name for daemon in DAEMONS]
    assert len(names) == len(set(names)), names


def test_lab_starts_each_daemon_in_the_foreground_on_the_file_the_host_carries(example_site):
    """The lab holds each daemon's pid and log, so it runs it in the foreground (-d), and on the
    path its rendered tree puts the config at: OpenBSD's, not Debian's."""
    secrets = fake_secrets(example_site)
    for host in example_site.hosts:
        tree = render_host(example_site, host, addresses(example_site), secrets[host.name])
        runs = {daemon.name: daemon.lab for daemon in daemons_on(example_site, host) if daemon.lab}
        assert {"smtpd", "bgpd"} <= set(runs), host.name
        for name, run in runs.items():
            assert isinstance(run, LabRun) and run.argv[0] == name and "-d" in run.argv
            config = run.argv[run.argv.index("-f") + 1]
            assert config.lstrip("/") in tree, f"{host.name}: the lab starts {name} on {config}, which the host does not carry"
