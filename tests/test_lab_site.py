"""The lab's site, pure: the stack's site on lab addresses, and files that differ from the
images' only where LINUX says (no root, no daemons)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


from mailsite.dns import dns_records, dnsmasq_options
from mailsite.lab.ca import LabCA
from mailsite.lab.site import (
    BLACKLIST, BYPASS, CA_BUNDLE, LAB_CA, LAB_IPV4, LINUX, account_ids, host_environment, lab_plan, pki_files,
    render_dnsmasq_conf, render_lab_host, render_outside_smtpd_conf, render_route_server_conf, trust_store,
)
from mailsite.daemonroot import ROOTS
from mailsite.daemons import DAEMONS
from mailsite.problems import SiteConfigError
from mailsite.model import MAIL_UID, MAIL_USER
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
    assert lab.secrets.backend == "file" and lab.secrets.path == str(SECRETS)


def test_lab_links_are_named_as_on_openbsd():
    settings = sized_settings(2)
    settings["hosts"][1]["egressInterface"] = "vio0"
    plan = lab_plan(site_of(settings), SECRETS)
    assert [(n.link, n.loopback) for n in plan.of_kind("mx")] == [("vmx0", "lo0"), ("vio0", "lo0")]


def test_lab_files_are_the_images_files_but_for_the_pftable_lines(example_site):
    """The lab runs the images' own files, TLS listeners and `relay ... tls` included; LINUX only
    blanks `set pftable` lines (Linux has no pf), keeping every other line where it was."""
    plan = lab_plan(example_site, SECRETS)
    secrets = fake_secrets(plan.site)
    for host in plan.site.hosts:
        openbsd = render_host(plan.site, host, plan.addresses(), secrets[host.name])
        lab = render_lab_host(plan, host, secrets[host.name])
        assert {path for path in openbsd if openbsd[path].text != lab[path].text} == {"etc/bgpd.conf"}
        bgpd = zip(openbsd["etc/bgpd.conf"].text.splitlines(), lab["etc/bgpd.conf"].text.splitlines(), strict=True)
        assert [(a, b) for a, b in bgpd if a != b] == [(a, "#") for a in openbsd["etc/bgpd.conf"].text.splitlines() if "set pftable" in a]
        smtpd = lab["etc/mail/smtpd.conf"].text
        assert f"listen on {host.egress_interface} tls pki {host.mx_name}" in smtpd
        assert (f"pki {host.mx_name} cert \"{plan.site.tls.certificate_for(host)}\"") in smtpd
    assert LINUX == LinuxDifferences(pftable=False)


def test_dnsmasq_serves_every_dns_record(example_site):
    plan = lab_plan(example_site, SECRETS)
    conf = render_dnsmasq_conf(plan)
    # What dnsmasq then answers: tests/test_dns.py asks it.
    assert set(dnsmasq_options(dns_records(plan.site, plan.addresses()))) <= set(conf.splitlines())
    assert "no-resolv" in conf  # nothing beyond the site's own names resolves


def test_the_outside_world_is_one_domain_whose_mx_is_the_internet_node(example_site):
    """Besides the site's names the DNS answers only for outside.test, whose MX is the internet
    node: where the primary relays a user's mail to an outside address, and an smtpd there
    takes it for that domain only."""
    plan = lab_plan(example_site, SECRETS)
    lines = render_dnsmasq_conf(plan).splitlines()
    assert "local=/outside.test/" in lines and "mx-host=outside.test,mail.outside.test,10" in lines
    assert f"host-record=mail.outside.test,{plan.internet.ipv4}" in lines
    conf = render_outside_smtpd_conf(plan)
    assert f"listen on {plan.internet.link}\n" in conf
    assert 'match from any for domain "outside.test" action "outside"' in conf and "relay" not in conf


def test_a_site_whose_domain_is_the_labs_outside_world_is_refused_in_one_line(settings):
    settings["domains"].append("outside.test")
    with pytest.raises(SiteConfigError) as refused:
        lab_plan(site_of(settings), SECRETS)
    assert str(refused.value) == ("mailsite:domains = outside.test: the lab's outside world is that domain;"
                                  " try the lab with another")


def test_every_lab_run_names_a_daemon_root():
    """A daemon's LabRun.root is a root mailsite.daemonroot builds: Dovecot's is "dovecot" (2.3,
    as OpenBSD ships it), every other the "daemons" root."""
    runs = {daemon.name: daemon.lab.root for daemon in DAEMONS if daemon.lab}
    assert set(runs.values()) <= set(ROOTS)
    assert runs["dovecot"] == "dovecot" and {root for name, root in runs.items() if name != "dovecot"} == {"daemons"}


def test_route_server_announces_each_list_with_its_community(example_site):
    plan = lab_plan(example_site, SECRETS)
    server = plan.of_kind("route-server")[0]
    conf = render_route_server_conf(plan, server, BLACKLIST, BYPASS)
    networks = re.findall(r"^network (\S+) set community (\S+)$", conf, re.M)
    assert networks == [(p, "65066:666") for p in BLACKLIST] + [(p, "65066:42") for p in BYPASS]
    neighbors = re.findall(r"neighbor (\S+) \{\s+remote-as (\d+)", conf)
    assert neighbors == [(str(n.ipv4), "65500") for n in plan.of_kind("mx")]
    assert "multihop 64" in conf and "allow to any" in conf and "deny from any" in conf


def test_primary_gets_the_mail_user_and_dovecots_users_not_one_account_per_mailbox(example_site):
    """Every mailbox belongs to the one virtual mail user: the primary's trees get it (smtpd
    delivers as it, Dovecot stores as it) and Dovecot's own users, beside the root's accounts;
    a mailbox user is no system account. A backup keeps the root's accounts."""
    plan = lab_plan(example_site, SECRETS)
    passwd = "root:x:0:0:root:/root:/bin/bash\n_vmail:x:999:999::/x:/bin/sh\n"
    group = "root:x:0:\n"
    primary = host_environment(plan, plan.site.primary, passwd, group)
    ids = account_ids(primary["etc/passwd"].text)
    assert ids == {"root": 0, MAIL_USER: MAIL_UID, "_dovecot": 518, "_dovenull": 666}
    assert not {"alice", "bob"} & set(ids)
    assert f"{MAIL_USER}:x:{MAIL_UID}:" in primary["etc/group"].text.splitlines()
    backup = host_environment(plan, plan.site.backups[0], passwd, group)
    assert "etc/passwd" not in backup and "etc/group" not in backup
    assert backup["etc/resolv.conf"].text.startswith(f"nameserver {plan.dns.ipv4}\n")


def test_every_node_trusts_debian_and_the_lab_ca():
    debian = "-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----\n"
    lab_ca = LabCA.new("example").pem.decode()
    files = trust_store(debian, lab_ca)
    assert files[CA_BUNDLE].text == debian + lab_ca and files[LAB_CA].text == lab_ca
    assert CA_BUNDLE == "etc/ssl/certs/ca-certificates.crt"  # Debian's smtpd's compiled-in CA file


def test_each_mx_gets_its_certificate_and_private_key_where_smtpd_conf_names_them(example_site):
    plan = lab_plan(example_site, SECRETS)
    host = plan.site.backups[0]
    issued = LabCA.new("example").issue([host.mx_name])
    files = pki_files(plan, host, issued)
    certificate, key = files[plan.site.tls.certificate_for(host).lstrip("/")], files[plan.site.tls.key_for(host).lstrip("/")]
    smtpd = render_lab_host(plan, host, fake_secrets(plan.site)[host.name])["etc/mail/smtpd.conf"].text
    assert f'pki {host.mx_name} cert "/{plan.site.tls.certificate_for(host).lstrip("/")}"' in smtpd
    assert certificate.text == issued.certificate.decode() and certificate.mode == 0o644 and not certificate.secret
    assert key.text == issued.key.decode() and key.mode == 0o600 and key.secret
