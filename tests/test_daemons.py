"""The daemon registry is the one source: what the lab starts, what pf and the cloud firewall
open, which files a host carries and which parsers check them all come from mailsite.daemons."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

import pytest

import mailsite.daemons
from mailsite.configtest import host_configtests
from mailsite.daemons import DAEMONS, Daemon, LabRun, daemons_on
from mailsite.firewall import cloud_rules, inbound_services
from mailsite.render import render_host
from mailsite.service import ANYWHERE, Service
from mailsite.templates import TEMPLATES, RenderedFile
from mailsite.trees import write_trees
from tests.sites import addresses, fake_secrets, site_of, sized_settings
from tests.test_render import render_site


def test_daemon_names_are_unique():
    names = [daemon.name for daemon in DAEMONS]
    assert len(names) == len(set(names)), names


def test_each_daemon_has_its_templates_folder_and_no_folder_is_nobodys():
    """configs/<daemon>/ holds every file body a daemon renders; configs/lab/ is the lab's own."""
    folders = {path.name for path in TEMPLATES.iterdir() if path.is_dir()} - {"lab"}
    assert folders == {daemon.name for daemon in DAEMONS}


def test_lab_starts_each_daemon_on_the_config_file_the_host_carries(example_site):
    """The lab starts each daemon on the file its LabRun says it reads, named in its argv, at the
    path the rendered tree puts it: OpenBSD's, not Debian's. Each daemon spells its own flags."""
    secrets = fake_secrets(example_site)
    for host in example_site.hosts:
        tree = render_host(example_site, host, addresses(example_site), secrets[host.name])
        runs = {daemon.name: daemon.lab for daemon in daemons_on(example_site, host) if daemon.lab}
        assert {"smtpd", "bgpd"} <= set(runs), host.name
        for name, run in runs.items():
            # redis's program is redis-server.
            assert isinstance(run, LabRun) and run.argv[0] in (name, f"{name}-server"), (host.name, name)
            if run.config is None:  # its package's own config, which reads the tree's (rspamd's local.d)
                assert any(path.startswith(f"etc/{name}/") for path in tree), f"{host.name}: no etc/{name}/ for {name}"
                continue
            assert run.config in run.argv, f"{name}'s argv does not name {run.config}"
            assert run.config.lstrip("/") in tree, f"{host.name}: the lab starts {name} on {run.config}, which the host does not carry"


def _pf_ports(pf: str) -> set[tuple[str, str, str]]:
    """(protocol, sources, port name) of every pass-in rule to a port: sources "any" or a macro."""
    rules = set()
    for protocol, sources, port in re.findall(r"^pass in on \$ext_if (?:inet6? )?proto (\w+) (?:from (\S+|\{[^}]*\}) )?to \(\$ext_if\) port (\S+)", pf, re.M):
        rules.add((protocol, sources or "any", port))
    return rules


@pytest.mark.parametrize("count", [2, 3, 5])
def test_pf_and_the_cloud_firewall_open_what_the_daemons_declare_and_nothing_else(count):
    site = site_of(sized_settings(count))
    for host, tree in render_site(site).items():
        declared = [s for d in daemons_on(site, site.host(host)) for s in d.services(site, site.host(host), addresses(site))]
        assert inbound_services(site, site.host(host), addresses(site)) == sorted(declared, key=lambda s: not s.from_anywhere)
        pf = tree["etc/pf.conf"].text
        assert {port for _, _, port in _pf_ports(pf)} == {s.name for s in declared}, host
        for service in declared:
            if service.greylisted:
                continue
            sources = "any" if service.from_anywhere else f"${service.sources_name}"
            assert (service.protocol, sources, service.name) in _pf_ports(pf), (host, service)
            if not service.from_anywhere:
                assert f'{service.sources_name} = "{{ {" ".join(service.sources)} }}"' in pf
        opened = {(r.protocol, r.port, f"{r.subnet}/{r.subnet_size}") for r in cloud_rules(declared) if r.protocol != "icmp"}
        assert opened == {(s.protocol, str(s.port), str(ipaddress.ip_network(source))) for s in declared for source in s.sources}


def _mailbox(site, host, addresses):
    return [Service("imaps", "tcp", 993, ANYWHERE, "mailbox access (IMAP over TLS)", rate_limited=True)]


MAILBOX = Daemon(
    "mailbox-test",
    runs_on=lambda site, host: host.is_primary,
    files=lambda context: {"etc/mailbox-test.conf": RenderedFile(f"# {context.host.mx_name}\n")},
    services=_mailbox,
    rc_conf_local=lambda context: 'mailbox_test_flags=""\n',
    crontab=lambda context: "@daily\t-n /usr/local/sbin/mailbox-test-expire\n",
)


def test_a_daemon_in_the_registry_is_rendered_opened_and_listed_only_on_the_hosts_it_runs_on(monkeypatch, example_site):
    """Adding a daemon is its module and its place in DAEMONS: its files, its firewall rules (pf's,
    rate limits included, and the cloud's) and its lines in rc.conf.local and root's crontab
    follow on the hosts it runs on, and a host it does not run on carries none of it."""
    monkeypatch.setattr(mailsite.daemons, "DAEMONS", (*DAEMONS, MAILBOX))
    site = example_site
    for host, tree in render_site(site).items():
        runs = site.host(host).is_primary
        assert ("etc/mailbox-test.conf" in tree) == runs, host
        pf = tree["etc/pf.conf"].text
        assert ("pass in on $ext_if proto tcp from any to ($ext_if) port imaps \\\n\tkeep state" in pf) == runs, host
        blocked = re.search(r"^block in quick .* from <bruteforce> .* port \{[^}]*\bimaps\b", pf, re.M)
        assert bool(blocked) == runs and ("imaps" in pf) == runs, host
        rules = cloud_rules(inbound_services(site, site.host(host), addresses(site)))
        assert any(rule.port == "993" for rule in rules) == runs, host
        assert tree["etc/rc.conf.local"].text.endswith('mailbox_test_flags=""\n') == runs, host
        assert ("mailbox-test-expire" in tree["etc/mailsite/crontab"].text) == runs, host


def test_imaps_is_open_only_where_dovecot_serves_it(example_site):
    """993 is Dovecot's, on the primary: a backup keeps no mailboxes and opens no imaps."""
    for host in example_site.hosts:
        ports = {s.port for s in inbound_services(example_site, host, addresses(example_site))}
        assert (993 in ports) == host.is_primary and ports >= {25}, host.name
    trees = render_site(example_site)
    assert all(("imaps" in trees[host.name]["etc/pf.conf"].text) == host.is_primary for host in example_site.hosts)


def test_configtest_runs_the_checks_of_the_daemons_whose_files_a_host_carries(tmp_path: Path, example_site):
    write_trees(tmp_path, render_site(example_site))
    tests = [(test.parser, test.path) for test in host_configtests(tmp_path / "mx2")]
    assert sorted(tests) == [("bgpd -n", "etc/bgpd.conf"), ("sh -n", "etc/rc.conf.local"),
                             ("sh -n", "usr/local/sbin/bgp-spamd-update"), ("sh -n", "usr/local/sbin/mailsite-certificates"),
                             ("smtpd -n", "etc/mail/smtpd.conf")]
    (tmp_path / "mx2/etc/bgpd.conf").unlink()
    assert "bgpd -n" not in [test.parser for test in host_configtests(tmp_path / "mx2")]


def _package_daemon(name: str, package: str) -> Daemon:
    return Daemon(name, runs_on=lambda site, host: host.is_primary, package=package,
                  rc_conf_local=lambda context: f'{name}_flags=""\n')


def _pkg_scripts(rc_conf_local: str) -> list[list[str]]:
    return [line.split("=", 1)[1].strip('"').split() for line in rc_conf_local.splitlines() if line.startswith("pkg_scripts=")]


def test_package_daemons_start_from_one_pkg_scripts_line_in_start_order(monkeypatch, example_site):
    """rc(8) starts a package's daemon only when pkg_scripts names it, and every package daemon
    shares that one variable: one line, in registry order, on the hosts that run them; none on
    a host whose daemons all come with the base system."""
    # Their package is Dovecot's, which images.packages pins: this is about pkg_scripts.
    first, second = _package_daemon("mailbox-test", "dovecot"), _package_daemon("filter-test", "dovecot")
    monkeypatch.setattr(mailsite.daemons, "DAEMONS", (*DAEMONS[:-1], first, second, DAEMONS[-1]))
    for host, tree in render_site(example_site).items():
        rc = tree["etc/rc.conf.local"].text
        expected = [["redis", "rspamd", "dovecot", "mailbox-test", "filter-test"]] if example_site.host(host).is_primary else []
        assert _pkg_scripts(rc) == expected, (host, rc)
        result = subprocess.run(["sh", "-c", f"{rc}\necho \"$pkg_scripts\""], capture_output=True, text=True, check=True)
        assert result.stdout.split() == (expected[0] if expected else []), host


def test_only_the_primary_starts_a_package_daemon(example_site):
    """redis, rspamd and Dovecot are the daemons from packages, and the backups run none: no
    pkg_scripts there."""
    assert [daemon.name for daemon in DAEMONS if daemon.package] == ["redis", "rspamd", "dovecot"]
    trees = render_site(example_site)
    for host in example_site.hosts:
        assert _pkg_scripts(trees[host.name]["etc/rc.conf.local"].text) == ([["redis", "rspamd", "dovecot"]] if host.is_primary else []), host.name
