"""Rules that span settings: each a small function that stands alone, collected in one list."""

from __future__ import annotations

import random

import pytest

from mailsite import rules
from mailsite.model import Site
from tests.sites import example_settings, fake_key


def _host(settings, index):
    return settings["hosts"][index]


def _vultr(settings):
    settings.update(target="vultr", network={"addressing": "autoconf"})
    for host in settings["hosts"]:
        host.update(ipv4="allocate", ipv6="allocate", egressInterface="vio0")
    return settings


def _inline(settings, **changes):
    keys = {h["name"]: fake_key(h["name"]) for h in settings["hosts"]}
    settings["secrets"] = {"backend": "inline", "spamdSyncKey": fake_key("sync"), "queueKeys": keys, **changes}
    return settings


# For every rule, a change to the example stack that this rule alone reports, and the setting it names.
CASES = {
    "one_primary": (lambda s: _host(s, 1).update(role="primary"), "mailsite:hosts[1].role"),
    "hosts_have_their_own_names": (lambda s: _host(s, 2).update(name="mx2", fqdn="mx3.example.org"), "mailsite:hosts[2].name"),
    "mx_names_in_the_site_domains": (lambda s: _host(s, 2).update(fqdn="mx3.example.com"), "mailsite:hosts[2].fqdn"),
    "host_addresses_reachable_and_their_own": (lambda s: _host(s, 1).update(ipv6="2001:db8::10"), "mailsite:hosts[1].ipv6"),
    "every_mx_has_ipv4": (lambda s: _host(s, 1).pop("ipv4"), "mailsite:hosts[1].ipv4"),
    "backups_after_the_primary": (lambda s: _host(s, 2).update(preference=5), "mailsite:hosts[2].preference"),
    "domains_listed_once": (lambda s: s["domains"].append("example.org"), "mailsite:domains[2]"),
    "ssh_not_open_to_the_internet": (lambda s: s["adminCidrs"].append("0.0.0.0/0"), "mailsite:adminCidrs[2]"),
    "postmaster_received": (lambda s: s["recipients"]["aliases"].pop("postmaster"), "mailsite:recipients"),
    "aliases_reach_a_user": (lambda s: s["recipients"]["aliases"].update(abuse="carol"), "mailsite:recipients.aliases.abuse"),
    "tls_key_its_own_file": (lambda s: s["tls"].update(certificate="/etc/ssl/private/{fqdn}.key"), "mailsite:tls.key"),
    "tls_paths_name_each_certificate": (lambda s: s["tls"].update(certificate="/etc/ssl/mail.crt"), "mailsite:tls.certificate"),
    "bgp_spamd_sessions_are_ebgp": (lambda s: s["bgpSpamd"].update(localAs=65066), "mailsite:bgpSpamd.localAs"),
    "route_servers_outside_the_site": (lambda s: s["bgpSpamd"]["routeServers"][1].update(address="192.0.2.20"),
                                       "mailsite:bgpSpamd.routeServers[1].address"),
    "announced_prefixes_routable": (lambda s: _vultr(s)["vultr"].update(bgp={"enabled": True, "localAs": 4200000001, "prefixes": ["0.0.0.0/0"]}),
                                    "mailsite:vultr.bgp.prefixes[0]"),
    "communities_differ": (lambda s: s["bgpSpamd"].update(bypassCommunity="65066:666"), "mailsite:bgpSpamd.bypassCommunity"),
    "pf_tables_of_their_own": (lambda s: s["bgpSpamd"]["pfTables"].update(bypass="nospamd"), "mailsite:bgpSpamd.pfTables.bypass"),
    "static_addresses_fixed": (lambda s: _host(s, 2).update(ipv6="allocate"), "mailsite:hosts[2].ipv6"),
    "vultr_bgp_only_on_vultr": (lambda s: s["vultr"]["bgp"].update(enabled=True, localAs=4200000001, prefixes=["198.51.100.0/24"]),
                                "mailsite:vultr.bgp.enabled"),
    "libvirt_addressing_static": (lambda s: s["network"].update(addressing="autoconf"), "mailsite:network.addressing"),
    "libvirt_hosts_in_the_site_network": (lambda s: _host(s, 2).update(ipv4="192.0.3.30"), "mailsite:hosts[2].ipv4"),
    "libvirt_hosts_have_a_resolver": (lambda s: s["network"].update(nameservers=[]), "mailsite:network.nameservers"),
    "users_listed_once": (lambda s: s["recipients"]["users"].append({"name": "alice", "quota": "5G"}), "mailsite:recipients.users[2]"),
    "quotas_hold_the_largest_message": (lambda s: s["recipients"]["users"].__setitem__(1, {"name": "bob", "quota": "10M"}),
                                        "mailsite:recipients.users[1].quota"),
    "quotas_fit_the_mail_volume": (lambda s: (s["recipients"]["users"].__setitem__(1, {"name": "bob", "quota": "30G"})),
                                   "mailsite:recipients.users[1].quota"),
    "catch_alls_for_the_site_domains": (lambda s: s["recipients"].update(catchAll={"example.com": "alice"}),
                                        "mailsite:recipients.catchAll.example.com"),
    "catch_alls_reach_a_user": (lambda s: s["recipients"].update(catchAll={"example.org": "postmaster"}),
                                "mailsite:recipients.catchAll.example.org"),
    "recipients_fit_the_tables": (lambda s: s.update(domains=[f"d{n}.example" for n in range(11)])
                                  or s["recipients"].update(users=[f"u{n}" for n in range(10000)]), "mailsite:recipients"),
    "libvirt_site_network_has_room": (lambda s: s["network"].update(ipv4PrefixLength=32), "mailsite:network.ipv4PrefixLength"),
    "libvirt_gateway_in_the_site_network": (lambda s: s["network"].update(ipv4Gateway="192.0.3.1"), "mailsite:network.ipv4Gateway"),
    "vultr_addressing_autoconf": (lambda s: _vultr(s)["network"].update(addressing="static"), "mailsite:network.addressing"),
    "vultr_bgp_has_its_as_and_prefixes": (lambda s: _vultr(s)["vultr"].update(bgp={"enabled": True}), "mailsite:vultr.bgp"),
    "vultr_assigns_addresses": (lambda s: _host(_vultr(s), 1).update(ipv4="203.0.113.5"), "mailsite:hosts[1].ipv4"),
    "vultr_egress_is_virtio": (lambda s: _host(_vultr(s), 0).update(egressInterface="vmx0"), "mailsite:hosts[0].egressInterface"),
    "keys_only_inline_in_the_stack_file": (lambda s: s["secrets"].update(spamdSyncKey=fake_key("sync")), "mailsite:secrets.spamdSyncKey"),
    "inline_queue_keys_one_per_host": (lambda s: _inline(s)["secrets"]["queueKeys"].pop("mx2"), "mailsite:secrets.queueKeys.mx2"),
    "inline_spamd_sync_key": (lambda s: _inline(s, spamdSyncKey="ABC"), "mailsite:secrets.spamdSyncKey"),
    "disk_holds_the_partitions": (lambda s: s["images"].update(diskSize="4G"), "mailsite:images.diskSize"),
    "dns_reports_received": (lambda s: s.update(dns={"tlsReports": "tls-reports@example.org"}), "mailsite:dns.tlsReports"),
    "dns_nameservers_with_an_address": (lambda s: s.update(dns={"nameservers": ["ns1.example.com", "ns1.example.net"]}),
                                        "mailsite:dns.nameservers"),
    "mx_names_not_mta_sts_hosts": (lambda s: _host(s, 2).update(fqdn="mta-sts.example.net"), "mailsite:hosts[2].fqdn"),
    "caa_issuer_known": (lambda s: s.update(acme={"directory": "https://acme.example.net/directory"}), "mailsite:acme.caaIssuer"),
    "dns_nameservers_only_for_zone_files": (lambda s: _vultr(s).update(dns={"nameservers": ["ns1.example.com"]}),
                                            "mailsite:dns.nameservers"),
}


def _site(change) -> Site:
    """The example site with one change, each setting valid on its own: no rule has run on it."""
    settings = example_settings()
    change(settings)
    return Site.model_validate(settings)


def test_rules_are_one_list_of_named_functions():
    names = [check.__name__ for check in rules.RULES]
    assert len(set(names)) == len(names)
    assert set(names) == set(CASES), "every rule has a case below, and every case a rule"


def test_the_example_breaks_no_rule():
    site = _site(lambda s: None)
    assert {check.__name__: check(site) for check in rules.RULES if check(site)} == {}


@pytest.mark.parametrize("name", list(CASES))
def test_each_rule_finds_its_problem_on_its_own(name):
    """Called alone, with no other rule run before it, a rule reports what it checks; and it is
    the only rule that reports it."""
    change, setting = CASES[name]
    site = _site(change)
    check = next(check for check in rules.RULES if check.__name__ == name)
    assert setting in [problem.setting for problem in check(site)]
    others = [other.__name__ for other in rules.RULES if other is not check
              and setting in [problem.setting for problem in other(site)]]
    assert others == []


@pytest.mark.parametrize("seed", range(5))
def test_rules_find_the_same_problems_in_any_order(seed):
    every_case = example_settings()
    for name in ("one_primary", "mx_names_in_the_site_domains", "postmaster_received", "communities_differ",
                 "pf_tables_of_their_own", "libvirt_hosts_in_the_site_network", "disk_holds_the_partitions", "domains_listed_once"):
        CASES[name][0](every_case)
    site = Site.model_validate(every_case)
    shuffled = list(rules.RULES)
    random.Random(seed).shuffle(shuffled)
    assert sorted(map(str, (p for check in shuffled for p in check(site)))) == sorted(map(str, rules.site_problems(site)))


def test_site_network_rules_wait_for_one_primary():
    """With two primaries there is no one site network to check against: one_primary says so, and
    the rules that read the network say nothing until it is fixed (explicitly, not by order)."""
    site = _site(lambda s: (_host(s, 1).update(role="primary"), _host(s, 2).update(ipv4="192.0.3.30")))
    assert rules.libvirt_site_network(site) is None
    assert rules.libvirt_hosts_in_the_site_network(site) == []
    assert [p.setting for p in rules.one_primary(site)] == ["mailsite:hosts[1].role"]
    fixed = _site(lambda s: _host(s, 2).update(ipv4="192.0.3.30"))
    assert [p.setting for p in rules.libvirt_hosts_in_the_site_network(fixed)] == ["mailsite:hosts[2].ipv4"]


def test_disk_too_small_is_reported_with_the_other_rules():
    """The disk's size is a rule like the others: a stack with a small disk and a second problem
    hears of both at once, each line as before."""
    from mailsite.config import load_site
    from mailsite.problems import SiteConfigError

    settings = example_settings()
    settings["images"].update(diskSize="4G", queueSpace="3G")
    settings["bgpSpamd"]["bypassCommunity"] = "65066:666"
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    lines = [str(p) for p in raised.value.problems]
    assert [line.split(" = ")[0] for line in lines] == ["mailsite:bgpSpamd.bypassCommunity", "mailsite:images.diskSize"]
    assert "the queue's queueSpace 3G included" in lines[1]


def test_a_targets_own_settings_are_refused_on_every_other_target(monkeypatch):
    """Vultr's BGP session exists on Vultr only: a site on any other target (a third one too, not
    only libvirt) that enables it is told so, rather than silently announcing nothing."""
    from mailsite.targets import TARGETS, TargetFacts

    monkeypatch.setitem(TARGETS, "elsewhere", TargetFacts(image_format="raw", vm_suffix="server"))
    site = _site(CASES["vultr_bgp_only_on_vultr"][0]).model_copy(update={"target": "elsewhere"})
    assert site.provider_bgp is None
    assert "mailsite:vultr.bgp.enabled" in [p.setting for p in rules.site_problems(site)]


def test_a_rule_naming_a_target_that_does_not_exist_is_a_bug_not_a_rule_that_never_applies():
    with pytest.raises(KeyError, match="vultrr"):
        _site(lambda s: None).runs_on("vultrr")


# -- accounts: quotas and catch-alls ----------------------------------------------------------

def _problems(change) -> list[str]:
    return [str(problem) for problem in rules.site_problems(_site(change))]


def test_a_quota_below_the_largest_message_is_one_line_with_the_size_to_use():
    """A mailbox that cannot hold the largest message the MXes accept would leave that message
    in a backup's queue until it bounces: refused, naming maxMessageSize."""
    lines = _problems(lambda s: s.update(maxMessageSize="20M") or s["recipients"]["users"].__setitem__(1, {"name": "bob", "quota": "19M"}))
    assert lines == ["mailsite:recipients.users[1].quota = 19M: smaller than maxMessageSize (20M), the largest message "
                     "the site accepts; raise it to 20M or more, like 5G"]
    assert _problems(lambda s: s.update(maxMessageSize="20M") or s["recipients"]["users"].__setitem__(1, {"name": "bob", "quota": "20M"})) == []


def test_a_catch_all_names_a_site_domain_and_a_mailbox_user():
    assert _problems(lambda s: s["recipients"].update(catchAll={"example.net": "bob"})) == []
    outside = _problems(lambda s: s["recipients"].update(catchAll={"example.com": "alice"}))
    assert outside == ["mailsite:recipients.catchAll.example.com = example.com: not one of the site's domains "
                       "(example.org, example.net); add it to domains, or remove the catch-all"]
    # An alias is no mailbox: a catch-all forwarded on would relay every guessed name's spam.
    for target in ("postmaster", "carol"):
        lines = _problems(lambda s, target=target: s["recipients"].update(catchAll={"example.org": target}))
        assert lines == [f"mailsite:recipients.catchAll.example.org = {target}: not a user; name one of recipients.users"]


def test_a_user_listed_twice_is_refused_whichever_way_each_is_written():
    lines = _problems(lambda s: s["recipients"]["users"].extend([{"name": "bob", "quota": "1G"}, "alice"]))
    assert lines == ["mailsite:recipients.users[2] = bob: already users[1]; list each user once",
                     "mailsite:recipients.users[3] = alice: already users[0]; list each user once"]
