"""Rendered host trees: golden files for the example stack, and the facts files must agree on."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest

from mailsite.firewall import inbound_services
from mailsite.model import HostAddresses
from mailsite.render import render_host
from mailsite.service import ANYWHERE
from tests.sites import addresses, example_settings, fake_key, fake_secrets, site_of, sized_settings

GOLDEN = Path(__file__).parent / "golden"


def render_site(site):
    secrets = fake_secrets(site)
    return {h.name: render_host(site, h, addresses(site), secrets[h.name]) for h in site.hosts}


def _modes(tree) -> str:
    """Each file's mode and path, and its owner where it is not root's: reviewed with the files."""
    return "".join(f"{rendered.mode:04o} {path}{'' if rendered.owner == 'root' else ' ' + rendered.owner}\n"
                   for path, rendered in tree.items())


@pytest.mark.parametrize("host", ["mx1", "mx2", "mx3"])
def test_example_host_matches_golden_tree(example_site, host):
    """A diff here is a change in behaviour: review it like code (UPDATE_GOLDEN=1 rewrites)."""
    tree = render_site(example_site)[host]
    root = GOLDEN / "example" / host
    if os.environ.get("UPDATE_GOLDEN"):
        for path, rendered in tree.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(rendered.text.encode())  # as is: a CRLF (the MTA-STS policy's) stays
        (GOLDEN / "example" / f"{host}.modes").write_text(_modes(tree))
    golden_paths = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert golden_paths == sorted(tree), "the set of files a host carries changed"
    for path, rendered in tree.items():
        assert rendered.text == (root / path).read_bytes().decode(), f"{host}:{path} differs from its golden file"
    assert _modes(tree) == (GOLDEN / "example" / f"{host}.modes").read_text()


def _smtpd(tree) -> str:
    return tree["etc/mail/smtpd.conf"].text


SIZES = [2, 3, 5]


@pytest.mark.parametrize("count", SIZES)
def test_backup_relays_to_better_mx_naming_its_own_mx_target(count):
    site = site_of(sized_settings(count))
    targets = {target for _, _, target in site.mx_records()}
    for host, tree in render_site(site).items():
        relay = re.findall(r'relay backup mx "([^"]+)"', _smtpd(tree))
        if site.host(host).is_primary:
            assert relay == [], "the primary must deliver, never relay as a backup"
        else:
            assert relay == [site.host(host).mx_name], f"{host} must name its own MX target in relay backup mx"
            assert relay[0] in targets, f"{host}'s relay backup mx name is not an MX target in DNS"


@pytest.mark.parametrize("count", SIZES)
def test_pf_tables_are_the_tables_bgpd_and_spamd_fill(count):
    site = site_of(sized_settings(count))
    for host, tree in render_site(site).items():
        pf_tables = set(re.findall(r"^table <([^>]+)>", tree["etc/pf.conf"].text, re.M))
        bgpd_tables = set(re.findall(r'set pftable "([^"]+)"', tree["etc/bgpd.conf"].text))
        assert bgpd_tables == {"bgp_spamd", "bgp_spamd_bypass"}
        assert bgpd_tables <= pf_tables, f"{host}: bgpd fills pf tables that pf.conf does not declare"
        assert {"spamd", "spamd-white"} <= pf_tables, f"{host}: pf.conf lacks spamd's compiled-in tables"


def test_renamed_pf_tables_reach_both_pf_and_bgpd():
    settings = example_settings()
    settings["bgpSpamd"]["pfTables"] = {"blacklist": "rs_black", "bypass": "rs_white"}
    tree = render_site(site_of(settings))["mx2"]
    assert 'set pftable "rs_black"' in tree["etc/bgpd.conf"].text
    assert "table <rs_black> persist" in tree["etc/pf.conf"].text
    assert "<bgp_spamd>" not in tree["etc/pf.conf"].text


@pytest.mark.parametrize("count", SIZES)
def test_spamd_sync_peers_agree_in_spamd_spamlogd_pf_and_firewall(count):
    site = site_of(sized_settings(count))
    for host, tree in render_site(site).items():
        rc = tree["etc/rc.conf.local"].text
        spamd_flags = re.search(r'^spamd_flags="([^"]*)"', rc, re.M)[1]
        spamlogd_flags = re.search(r'^spamlogd_flags="([^"]*)"', rc, re.M)[1]
        spamd_peers = set(re.findall(r"-Y (\S+)", spamd_flags))
        spamlogd_peers = set(re.findall(r"-Y (\S+)", spamlogd_flags))
        pf = tree["etc/pf.conf"].text
        pf_sources = set(re.search(r'^spamd_sync_sources = "\{ (.*) \}"', pf, re.M)[1].removesuffix("/32").split("/32 "))
        (sync,) = [s for s in inbound_services(site, site.host(host), addresses(site)) if s.name == "spamd-sync"]
        firewall_sources = {source.removesuffix("/32") for source in sync.sources}
        others = {str(h.ipv4) for h in site.hosts if h.name != host}
        assert spamd_peers == others, f"{host}: spamd -Y targets are not every other MX"
        assert spamlogd_peers == spamd_peers, f"{host}: spamlogd syncs with other peers than spamd"
        assert pf_sources == spamd_peers, f"{host}: pf lets spamd-sync in from other hosts than spamd syncs with"
        assert firewall_sources == spamd_peers, f"{host}: the firewall's udp/8025 sources differ from spamd's peers"
        assert f"-y {site.host(host).ipv4} " in spamd_flags


def test_backup_exposes_smtp_only_and_primary_adds_msa(example_site):
    """A backup MX is an MTA: smtp is all it opens to the world, with http for its certificate's
    http-01 challenges. The primary opens more (its MSA, mailbox access, the MTA-STS policy over
    https), every one that takes a password rate limited."""
    mta = [("tcp", 25), ("tcp", 80)]
    unauthenticated = {("tcp", 80), ("tcp", 443)}  # httpd: the CA's challenges, the MTA-STS policy
    for host in example_site.hosts:
        services = inbound_services(example_site, host, addresses(example_site))
        public = sorted((s.protocol, s.port) for s in services if s.sources == ANYWHERE)
        if not host.is_primary:
            assert public == mta, f"{host.name} exposes {public}"
            continue
        extra = [s for s in services if s.sources == ANYWHERE and (s.protocol, s.port) not in set(mta) | unauthenticated]
        assert set(mta) < set(public) and extra, f"{host.name} exposes {public}"
        assert all(s.rate_limited for s in extra), [s.name for s in extra if not s.rate_limited]
        limited = {s.name: s.sources for s in services if s.sources != ANYWHERE}
        assert limited["bgp"] == ("198.51.100.100/32", "203.0.113.100/32")
        assert limited["ssh"] == ("198.51.100.0/28", "2001:db8:ad::/48")


def test_backup_smtpd_has_no_submission_or_auth(example_site):
    trees = render_site(example_site)
    for name in ("mx2", "mx3"):
        smtpd = _smtpd(trees[name])
        assert "auth" not in smtpd and "submission" not in smtpd and "smtps" not in smtpd
        assert "rcpt-to <recipients>" in smtpd
    primary = _smtpd(trees["mx1"])
    assert "listen on vmx0 port submission tls-require pki mx1.example.org auth" in primary
    assert "match from auth for any action \"outbound\"" in primary
    assert not re.search(r"match from any for any", primary), "the primary must not be an open relay"


def test_backup_accepts_exactly_the_site_recipients(example_site):
    recipients = render_site(example_site)["mx2"]["etc/mail/recipients"].text.splitlines()[1:]
    expected = [f"{part}@{domain}" for domain in ("example.org", "example.net")
                for part in ("abuse", "alice", "bob", "hostmaster", "postmaster")]
    expected.append("@example.net")  # the example's catch-all domain: any name there
    assert recipients == expected


def test_secrets_only_in_root_only_files(example_site):
    site = example_site
    for host, tree in render_site(site).items():
        queue_key = fake_key(host)
        holders = {path for path, rendered in tree.items() if queue_key in rendered.text}
        assert holders == {"etc/mail/queue-key.conf"}
        sync_holders = {path for path, rendered in tree.items() if fake_key("spamd-sync") in rendered.text}
        assert sync_holders == {"etc/mail/spamd.key"}
        for path in holders | sync_holders:
            assert tree[path].mode == 0o600 and tree[path].secret
        assert 'include "/etc/mail/queue-key.conf"' in _smtpd(tree)


def test_interface_name_is_a_per_host_setting():
    settings = example_settings()
    for host in settings["hosts"]:
        host["egressInterface"] = "vio0"
    tree = render_site(site_of(settings))["mx1"]
    assert "etc/hostname.vio0" in tree and "etc/hostname.vmx0" not in tree
    assert 'ext_if = "vio0"' in tree["etc/pf.conf"].text
    assert "listen on vio0 tls" in _smtpd(tree)
    assert not any("vmx0" in rendered.text for rendered in tree.values())


def test_autoconf_addressing_has_no_static_address():
    settings = example_settings()
    settings.update(target="vultr", network={"addressing": "autoconf"})
    for host in settings["hosts"]:
        host.update(egressInterface="vio0", ipv4="allocate", ipv6="allocate")
    site = site_of(settings)
    allocated = {h.name: HostAddresses(ipaddress.IPv4Address(f"203.0.113.{n}")) for n, h in enumerate(site.hosts, 1)}
    tree = render_host(site, site.host("mx2"), allocated, fake_secrets(site)["mx2"])
    assert tree["etc/hostname.vio0"].text.splitlines()[0] == "inet autoconf"
    assert tree["etc/hostname.vio0"].text.splitlines()[-1] == "inet6 autoconf -soii -temporary"
    assert "etc/mygate" not in tree


def _bruteforce_blocks(pf: str) -> list[tuple[str, list[str]]]:
    """(protocol, ports) of every rule that blocks <bruteforce>."""
    return [(protocol, ports.split()) for protocol, ports in
            re.findall(r"^block in .*proto (\w+) from <bruteforce> to \S+ port \{ ([^}]*) \}$", pf, re.M)]


@pytest.mark.parametrize("admin_cidrs", [True, False])
def test_bruteforce_blocks_only_the_rate_limited_ports(admin_cidrs):
    """An entry in <bruteforce> shuts its source out of exactly the services whose rules put it
    there (ssh, submission, ...), never smtp: an office behind one NAT address that mistypes a
    password still sends and receives mail."""
    settings = example_settings()
    if not admin_cidrs:
        settings["adminCidrs"] = []
    site = site_of(settings)
    for host, tree in render_site(site).items():
        pf = tree["etc/pf.conf"].text
        overloading = re.findall(r"port (\S+) \\\n\tkeep state \([^)]*overload <bruteforce>", pf)
        blocks = _bruteforce_blocks(pf)
        assert [port for _, ports in blocks for port in ports] == overloading, host
        assert all(protocol == "tcp" for protocol, _ in blocks)
        assert "smtp" not in overloading
        assert not re.search(r"from <bruteforce>(?! to \(\$ext_if\) port \{)", pf), f"{host}: a rule blocks <bruteforce> on every port"
        assert not re.search(r"^[^#]*flush global", pf, re.M), f"{host}: an overload would cut the offender's smtp connections too"
    trees = render_site(site)
    for host in site.hosts:
        blocked = [p for _, ports in _bruteforce_blocks(trees[host.name]["etc/pf.conf"].text) for p in ports]
        declared = [s for s in inbound_services(site, host, addresses(site)) if s.rate_limited]
        assert blocked == list(dict.fromkeys(s.name for s in declared)), host.name
        # A backup takes no password from the world (an MTA only): its rate limits guard only
        # what adminCidrs reach, and there are none without them.
        if not host.is_primary:
            assert all(not s.from_anywhere for s in declared) and bool(declared) == bool(admin_cidrs), host.name
        else:
            assert any(s.from_anywhere for s in declared), host.name


def test_bruteforce_entries_expire_from_roots_crontab(example_site):
    for host, tree in render_site(example_site).items():
        assert "table <bruteforce> persist" in tree["etc/pf.conf"].text
        jobs = [line.split("\t") for line in tree["etc/mailsite/crontab"].text.splitlines() if not line.startswith("#")]
        expire = [job for job in jobs if "-T expire" in job[-1]]
        assert expire == [["*/10", "*", "*", "*", "*", "-n /sbin/pfctl -q -t bruteforce -T expire 3600"]], host


def test_route_servers_give_only_host_routes_within_a_prefix_limit():
    """A route server's 0.0.0.0/0 or /24 tagged as listed would blacklist whole networks: bgpd
    takes only /32s from the feed, and ends a session that sends more than pf can hold."""
    settings = example_settings()
    settings["bgpSpamd"]["tableEntries"] = 600000
    site = site_of(settings)
    for host, tree in render_site(site).items():
        bgpd = tree["etc/bgpd.conf"].text
        allows = re.findall(r"^allow from .*$", bgpd, re.M)
        assert allows == ['allow from group "bgp-spamd" prefix 0.0.0.0/0 prefixlen = 32'], host
        group = re.search(r'^group "bgp-spamd" \{(.*?)^\}', bgpd, re.M | re.S)[1]
        assert re.findall(r"^\tmax-prefix (\d+) restart (\d+)$", group, re.M) == [("300000", "30")], host


def test_recipient_names_cannot_hold_the_subaddress_delimiter(settings):
    """smtpd reads "c+d" as user c with tag d: the primary refuses it while a backup's table holds
    it as written and takes the mail, which then bounces (seen in the lab with smtpd 6.8)."""
    from mailsite.problems import SiteConfigError

    settings["recipients"]["users"].append("c+d")
    settings["recipients"]["aliases"]["sales+eu"] = "bob"
    with pytest.raises(SiteConfigError) as error:
        site_of(settings)
    assert [(p.setting, p.value) for p in error.value.problems] == [
        ("mailsite:recipients.users[2]", "c+d"), ("mailsite:recipients.aliases.sales+eu", "sales+eu")]
    assert all("sub-address" in p.message for p in error.value.problems)


def test_site_accepts_plus_forms_and_capitals_of_its_recipients_only(example_site):
    accepts = example_site.accepts
    assert accepts("alice@example.org") and accepts("alice+lists@example.net") and accepts("Abuse+X@EXAMPLE.ORG")
    assert accepts("postmaster@example.net") and accepts("bob+@example.org")
    assert not accepts("nobody@example.org") and not accepts("nobody+alice@example.org")
    assert not accepts("alice@unknown.test") and not accepts("alice@sub.example.org") and not accepts("postmaster")


@pytest.mark.parametrize("count", SIZES)
def test_backup_recipients_are_the_primarys_virtual_addresses(count):
    """A backup's rcpt-to table and the primary's virtual table list the same addresses, so that
    (smtpd cutting +tags the same way on both) every MX takes the same recipients."""
    site = site_of(sized_settings(count))
    trees = render_site(site)
    table = lambda tree, path: sorted(line.split()[0] for line in tree[path].text.splitlines() if line and not line.startswith("#"))
    virtual = table(trees[site.primary.name], "etc/mail/virtuals")
    assert virtual == sorted(site.valid_recipients())
    for backup in site.backups:
        assert table(trees[backup.name], "etc/mail/recipients") == virtual, backup.name


def test_an_office_behind_one_address_keeps_its_imap_connections(example_site):
    """IMAP clients hold several connections each for hours (IDLE; Thunderbird caches five): the
    primary's pf lets an office of dozens of users behind one NAT address hold them all, where
    submission keeps its tight limit, so a normal working day never lands the office in
    <bruteforce> (which would take IMAP, submission and ssh from it for an hour)."""
    pf = render_site(example_site)[example_site.primary.name]["etc/pf.conf"].text
    limits = dict(re.findall(r"port (\S+) \\\n\tkeep state \(max-src-conn (\d+),", pf))
    assert int(limits["imaps"]) >= 30 * 5, limits
    assert int(limits["submission"]) == int(limits["smtps"]) == 20, limits
