"""The lab's site, pure: the stack's site on lab addresses, and files that differ from the
images' only where LINUX says (no root, no daemons)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailsite.dns import dns_records
from mailsite.lab.ca import LabCA
from mailsite.lab.site import (
    BLACKLIST, BYPASS, CA_BUNDLE, LAB_CA, LAB_IPV4, LINUX, host_environment, lab_plan, mailbox_owners, pki_files,
    refuse_system_account_users, render_dnsmasq_conf, render_lab_host, render_route_server_conf, shadow, trust_store,
)
from mailsite.problems import SiteConfigError
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


def test_primary_gets_mailbox_users_beside_the_roots_accounts(example_site):
    plan = lab_plan(example_site, SECRETS)
    passwd = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n"
    group = "root:x:0:\nuser:x:1000:\n"
    primary = host_environment(plan, plan.site.primary, passwd, group)
    owners = mailbox_owners(primary)
    assert sorted(owners) == ["alice", "bob"] and len(set(owners.values())) == 2 and 1000 not in owners.values()
    assert primary["etc/passwd"].text.startswith(passwd)
    backup = host_environment(plan, plan.site.backups[0], passwd, group)
    assert "etc/passwd" not in backup and mailbox_owners(backup) == {}
    assert backup["etc/resolv.conf"].text.startswith(f"nameserver {plan.dns.ipv4}\n")


@pytest.mark.parametrize("account", ["root", "mail", "nobody", "opensmtpd"])
def test_a_mailbox_user_named_like_a_system_account_is_refused_not_made_that_account(example_site, account):
    """A mailbox user becomes an account of the lab's primary: one named like the root's root or
    a daemon's user would replace it (and log in as it), so the lab refuses the site in one line."""
    settings = sized_settings(2)
    settings["recipients"]["users"] = ["alice", "bob", account]
    plan = lab_plan(site_of(settings), SECRETS)
    passwd = "root:x:0:0:root:/root:/bin/bash\nmail:x:8:8:mail:/var/mail:/usr/sbin/nologin\n" \
             "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nopensmtpd:x:101:102::/var/lib/opensmtpd:/usr/sbin/nologin\n"
    with pytest.raises(SiteConfigError) as refused:
        host_environment(plan, plan.site.primary, passwd, "")
    assert str(refused.value) == (f"mailsite:recipients.users = {account}: rename the user: the lab's primary has"
                                  " these system accounts")
    with pytest.raises(SiteConfigError):
        refuse_system_account_users(plan.site, passwd)
    refuse_system_account_users(example_site, passwd)  # alice and bob are nobody's system account


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


def test_mailbox_users_get_a_shadow_entry_each_replacing_same_named_ones():
    root = "root:*:20000:0:99999:7:::\nalice:!:19000::::::\n"
    hashes = {"alice": "$6$salt$hashA", "bob": "$6$salt$hashB"}
    entry = shadow(root, hashes, 20418)
    assert entry.text.splitlines() == ["root:*:20000:0:99999:7:::", "alice:$6$salt$hashA:20418:0:99999:7:::",
                                       "bob:$6$salt$hashB:20418:0:99999:7:::"]
    assert entry.secret and entry.mode == 0o640
