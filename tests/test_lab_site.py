"""The lab's site, pure: the stack's site on lab addresses, and files that differ from the
images' only where LINUX says (no root, no daemons)."""

from __future__ import annotations

import re
from pathlib import Path

from mailsite.dns import dns_records
from mailsite.lab.site import (
    BLACKLIST, BYPASS, LAB_IPV4, LINUX, host_environment, lab_plan, mailbox_owners, render_dnsmasq_conf,
    render_lab_host, render_route_server_conf,
)
from mailsite.render import render_host
from mailsite.templates import LinuxDifferences
from tests.sites import fake_secrets, site_of, sized_settings

SECRETS = Path("/nonexistent/lab-secrets")


def test_lab_site_keeps_everything_but_addresses(example_site):
    plan = lab_plan(example_site, SECRETS)
    lab = plan.site
    assert [(h.name, h.role, h.preference, h.mx_name, h.egress_interface) for h in lab.hosts] == [
        (h.name, h.role, h.preference, h.mx_name, h.egress_interface) for h in example_site.hosts
    ]
    assert lab.mx_records() == example_site.mx_records()
    assert lab.recipients == example_site.recipients and lab.bgp_spamd.local_as == example_site.bgp_spamd.local_as
    assert all(host.ipv4 in LAB_IPV4 for host in lab.hosts)
    assert [s.address for s in lab.bgp_spamd.route_servers] == [n.ipv4 for n in plan.of_kind("route-server")]
    assert lab.delivery.method == "maildir"  # no Dovecot in the lab
    assert lab.secrets.backend == "file" and lab.secrets.path == str(SECRETS)


def test_lab_links_are_named_as_on_openbsd():
    settings = sized_settings(2)
    settings["hosts"][1]["egressInterface"] = "vio0"
    plan = lab_plan(site_of(settings), SECRETS)
    assert [(n.link, n.loopback) for n in plan.of_kind("mx")] == [("vmx0", "lo0"), ("vio0", "lo0")]


def test_each_linux_difference_changes_only_its_own_lines(example_site):
    """The lab's files are the images' files but for LINUX: plain_smtp drops TLS and nothing else,
    pftable blanks `set pftable` lines and nothing else."""
    plan = lab_plan(example_site, SECRETS)
    secrets = fake_secrets(plan.site)
    for host in plan.site.hosts:
        openbsd = render_host(plan.site, host, plan.addresses(), secrets[host.name])
        lab = render_lab_host(plan, host, secrets[host.name])
        plain = render_host(plan.site, host, plan.addresses(), secrets[host.name], LinuxDifferences(plain_smtp=True))
        assert {path for path in openbsd if openbsd[path].text != lab[path].text} == {
            "etc/mail/smtpd.conf", "etc/rc.conf.local", "etc/bgpd.conf"}
        for path in ("etc/mail/smtpd.conf", "etc/rc.conf.local"):
            assert lab[path].text == plain[path].text
            before, after = openbsd[path].text.splitlines(), plain[path].text.splitlines()
            without_tls = [re.sub(r' tls pki \S+| -C [^\s"]+ -K [^\s"]+', "", line) for line in before
                           if not re.search(r"^pki |port submission|smtps|TLS and auth", line) and line.strip()]
            assert without_tls == [line for line in after if line.strip()], f"{host.name}:{path}"
        bgpd = zip(openbsd["etc/bgpd.conf"].text.splitlines(), lab["etc/bgpd.conf"].text.splitlines(), strict=True)
        assert [(a, b) for a, b in bgpd if a != b] == [(a, "#") for a in openbsd["etc/bgpd.conf"].text.splitlines() if "set pftable" in a]
    assert LINUX == LinuxDifferences(plain_smtp=True, pftable=False)


def test_dnsmasq_serves_every_dns_record(example_site):
    plan = lab_plan(example_site, SECRETS)
    conf = render_dnsmasq_conf(plan)
    for record in dns_records(plan.site, plan.addresses()):
        line = (f"mx-host={record.name},{record.value},{record.priority}" if record.type == "MX"
                else f"host-record={record.name},{record.value}")
        assert line in conf.splitlines()
    assert "no-resolv" in conf  # nothing beyond the site's own names resolves


def test_route_server_announces_each_list_with_its_community(example_site):
    plan = lab_plan(example_site, SECRETS)
    server = plan.of_kind("route-server")[0]
    conf = render_route_server_conf(plan, server, BLACKLIST, BYPASS)
    networks = re.findall(r"^network (\S+) set community (\S+)$", conf, re.M)
    assert networks == [(p, "65066:666") for p in BLACKLIST] + [(p, "65066:42") for p in BYPASS]
    neighbors = re.findall(r"neighbor (\S+) \{\s+remote-as (\d+)", conf)
    assert neighbors == [(str(n.ipv4), "65500") for n in plan.of_kind("mx")]
    assert "multihop 64" in conf and "allow to any" in conf and "deny from any" in conf


def test_primary_gets_mailbox_users_replacing_same_named_accounts(example_site):
    plan = lab_plan(example_site, SECRETS)
    passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n"
    group = "root:x:0:\nalice:x:1000:\n"
    primary = host_environment(plan, plan.site.primary, passwd, group)
    owners = mailbox_owners(primary)
    assert sorted(owners) == ["alice", "bob"] and len(set(owners.values())) == 2 and 1000 not in owners.values()
    assert re.findall(r"^alice:", primary["etc/passwd"].text, re.M) == ["alice:"] and primary["etc/passwd"].text.startswith("root:")
    backup = host_environment(plan, plan.site.backups[0], passwd, group)
    assert "etc/passwd" not in backup and mailbox_owners(backup) == {}
    assert backup["etc/resolv.conf"].text.startswith(f"nameserver {plan.dns.ipv4}\n")
