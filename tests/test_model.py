"""The site model: what a valid stack means, and one clear line for every bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mailsite.config import load_site
from mailsite.problems import SiteConfigError
from tests.sites import ROOT, example_settings, site_of, sized_settings, fake_key


def test_example_stack_is_a_three_host_site(example_site):
    assert [h.name for h in example_site.hosts] == ["mx1", "mx2", "mx3"]
    assert example_site.primary.name == "mx1"
    assert [h.preference for h in example_site.hosts] == [10, 20, 30]
    assert example_site.mx_records()[:3] == [
        ("example.org", 10, "mx1.example.org"),
        ("example.org", 20, "mx2.example.org"),
        ("example.org", 30, "mx3.example.org"),
    ]


def test_defaults_follow_host_order_and_first_domain():
    site = site_of(sized_settings(5))
    assert [h.preference for h in site.hosts] == [10, 20, 30, 40, 50]
    assert [h.mx_name for h in site.hosts] == [f"mx{n}.example.org" for n in range(1, 6)]
    assert all(h.egress_interface == "vmx0" for h in site.hosts)


def test_spamd_sync_peers_are_every_other_mx(example_site):
    mx2 = example_site.host("mx2")
    assert [h.name for h in example_site.spamd_sync_peers(mx2)] == ["mx1", "mx3"]


def test_backup_relays_naming_itself(example_site):
    assert example_site.relay_backup_mx(example_site.host("mx3")) == "mx3.example.org"


def _host(settings, index):
    return settings["hosts"][index]


BAD = [
    # (what to change, setting named in the error, words of the fix)
    ("duplicate host", lambda s: _host(s, 2).update(name="mx2"), "mailsite:hosts[2].name", "give each host its own"),
    ("no primary", lambda s: _host(s, 0).update(role="backup"), "mailsite:hosts", "give exactly one host role: primary"),
    ("two primaries", lambda s: _host(s, 1).update(role="primary"), "mailsite:hosts[1].role", "make this host role: backup"),
    ("backup not worse", lambda s: _host(s, 1).update(preference=10), "mailsite:hosts[1].preference", "set it above 10"),
    ("backup better", lambda s: _host(s, 2).update(preference=5), "mailsite:hosts[2].preference", "set it above 10"),
    ("bad domain", lambda s: s["domains"].__setitem__(0, "example..org"), "mailsite:domains[0]", "like example.org"),
    ("unicode domain", lambda s: s["domains"].__setitem__(0, "bücher.example"), "mailsite:domains[0]", "A-labels), xn--bcher-kva.example"),
    ("address as domain", lambda s: s["domains"].__setitem__(1, "192.0.2.1"), "mailsite:domains[1]", "like example.org"),
    ("resolver not an address", lambda s: s["network"].update(nameservers=["ns1"]), "mailsite:network.nameservers[0]",
     "not an IP address; write one like 192.0.2.10 or 2001:db8::10"),
    ("bad CIDR", lambda s: s["adminCidrs"].__setitem__(0, "198.51.100.7/24"), "mailsite:adminCidrs[0]", "no host bits"),
    ("ssh to world", lambda s: s["adminCidrs"].append("0.0.0.0/0"), "mailsite:adminCidrs[2]", "list only your admin networks"),
    ("public AS", lambda s: s["bgpSpamd"].update(localAs=3320), "mailsite:bgpSpamd.localAs", "use a private one"),
    ("bad size", lambda s: s.update(maxMessageSize="50MB"), "mailsite:maxMessageSize", "like 50M"),
    ("huge size", lambda s: s.update(maxMessageSize="9G"), "mailsite:maxMessageSize", "between 64K and 2G"),
    ("unknown key", lambda s: s.update(maxMesageSize="50M"), "mailsite:maxMesageSize", "remove it or correct its spelling"),
    ("unknown host key", lambda s: _host(s, 0).update(prefrence=5), "mailsite:hosts[0].prefrence", "unknown setting"),
    ("bad address", lambda s: _host(s, 1).update(ipv4="192.0.2.300"), "mailsite:hosts[1].ipv4", "not an IPv4 address"),
    ("same address", lambda s: _host(s, 1).update(ipv4="192.0.2.10"), "mailsite:hosts[1].ipv4", "already the address of mx1"),
    ("no IPv4", lambda s: _host(s, 1).pop("ipv4"), "mailsite:hosts[1].ipv4", "every MX needs IPv4"),
    ("bad role", lambda s: _host(s, 1).update(role="secondary"), "mailsite:hosts[1].role", "not one of the allowed values"),
    ("bad interface", lambda s: _host(s, 1).update(egressInterface="eth 0"), "mailsite:hosts[1].egressInterface", "write it like vmx0"),
    ("missing recipients", lambda s: s.pop("recipients"), "mailsite:recipients", "required; add it"),
    ("no postmaster", lambda s: s["recipients"]["aliases"].pop("postmaster"), "mailsite:recipients", "add postmaster"),
    ("alias to nobody", lambda s: s["recipients"]["aliases"].update(abuse="carol"), "mailsite:recipients.aliases.abuse", "not a user"),
    ("bad community", lambda s: s["bgpSpamd"].update(blacklistCommunity="65066:70000"), "mailsite:bgpSpamd.blacklistCommunity", "like 65066:666"),
    ("same communities", lambda s: s["bgpSpamd"].update(bypassCommunity="65066:666"), "mailsite:bgpSpamd.bypassCommunity", "opposite lists"),
    ("spamd's table", lambda s: s["bgpSpamd"]["pfTables"].update(blacklist="spamd"), "mailsite:bgpSpamd.pfTables.blacklist", "spamd owns this table"),
    ("eBGP to itself", lambda s: s["bgpSpamd"].update(localAs=65066), "mailsite:bgpSpamd.localAs", "eBGP"),
    ("greylist zero", lambda s: s["greylist"].update(passMinutes=0), "mailsite:greylist.passMinutes", "too small"),
    ("bad queue ttl", lambda s: s["queue"].update(ttl="7 days"), "mailsite:queue.ttl", "like 7d"),
    ("relative tls path", lambda s: s["tls"].update(key="private/x.key"), "mailsite:tls.key", "absolute path"),
    ("allocate with static", lambda s: _host(s, 2).update(ipv4="allocate"), "mailsite:hosts[2].ipv4", "give a fixed address"),
    ("vultr bgp on libvirt", lambda s: s.update(vultr={"bgp": {"enabled": True, "localAs": 4200000001, "prefixes": ["198.51.100.0/24"]}}),
     "mailsite:vultr.bgp.enabled", "vultr target only"),
    ("libvirt autoconf", lambda s: s["network"].update(addressing="autoconf"), "mailsite:network.addressing", "set static"),
    ("host outside network", lambda s: _host(s, 2).update(ipv4="192.0.3.30"), "mailsite:hosts[2].ipv4", "outside the site network 192.0.2.0/24"),
    ("inline key in file backend", lambda s: s["secrets"].update(spamdSyncKey="x" * 32), "mailsite:secrets.spamdSyncKey", "not the stack file"),
]


@pytest.mark.parametrize("change,setting,fix", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_value_is_one_line_naming_setting_and_fix(settings, change, setting, fix):
    change(settings)
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    problems = raised.value.problems
    assert len(problems) == 1, [str(p) for p in problems]
    line = str(problems[0])
    assert line.startswith(f"{setting} = "), line
    assert fix in line, line
    assert "\n" not in line


def test_every_problem_is_reported_at_once(settings):
    settings["hosts"][1]["role"] = "primary"
    settings["hosts"][2]["preference"] = 5
    settings["bgpSpamd"]["pfTables"]["bypass"] = "spamd-white"
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    assert {p.setting for p in raised.value.problems} == {
        "mailsite:hosts[1].role",
        "mailsite:hosts[2].preference",
        "mailsite:bgpSpamd.pfTables.bypass",
    }


def _inline(settings, **keys):
    settings["secrets"] = {"backend": "inline", "spamdSyncKey": fake_key("sync"), "queueKeys": keys}
    return settings


@pytest.mark.parametrize("bad", ["0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdef0", "0123456789ABCDEF0123456789ABCDEZ"])
def test_queue_key_must_be_32_hex_characters_and_is_never_shown(settings, bad):
    _inline(settings, mx1=bad, mx2=fake_key("mx2"), mx3=fake_key("mx3"))
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    (problem,) = raised.value.problems
    assert problem.setting == "mailsite:secrets.queueKeys.mx1"
    assert "openssl rand -hex 16" in str(problem)
    assert bad not in str(problem)
    assert f"<secret of {len(bad)} characters>" in str(problem)


def test_inline_keys_for_tests_are_accepted(settings):
    site = load_site(_inline(settings, mx1=fake_key("mx1"), mx2=fake_key("mx2"), mx3=fake_key("mx3")))
    assert site.secrets.queue_keys["mx1"].get_secret_value() == fake_key("mx1")
    assert fake_key("mx1") not in repr(site)


def _write_stack(tmp_path, settings):
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump({"config": {f"mailsite:{k}": v for k, v in settings.items()}}))
    return path


def test_cli_bad_stack_exits_2_with_one_line_each_and_writes_nothing(tmp_path, settings):
    settings["hosts"][1]["preference"] = 10
    settings["maxMessageSize"] = "lots"
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mailsite", "render", "--config", str(_write_stack(tmp_path, settings)), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        "error: mailsite:maxMessageSize = lots: not a size; write a whole number with K, M or G, like 50M",
    ]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def _render_cli(tmp_path, settings):
    """`mailsite render` of these settings, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mailsite", "render", "--config", str(_write_stack(tmp_path, settings)), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT,
    )


def test_cli_reports_cross_setting_problems_too(tmp_path, settings):
    settings["hosts"][1]["preference"] = 10
    result = _render_cli(tmp_path, settings)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: mailsite:hosts[1].preference = 10: a backup's preference must be worse (higher) than the primary's 10; set it above 10"
    ]


def test_a_stack_file_still_choosing_a_delivery_method_is_one_line(tmp_path, settings):
    """Dovecot is always the primary's mail store now: a stack file written when smtpd could
    deliver to maildir itself keeps its delivery: section, and hears which setting to remove."""
    settings["delivery"] = {"method": "maildir", "lmtpSocket": "/var/dovecot/lmtp", "maildir": "~/Maildir"}
    result = _render_cli(tmp_path, settings)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: mailsite:delivery = <not shown>: unknown setting; remove it or correct its spelling (see Pulumi.example.yaml)"
    ]


@pytest.mark.parametrize("text,message", [
    ("config: [unclosed", "not valid YAML at line"),
    ("name: x\n", "has no config: section"),
    ("config:\n  mailsite:maxMessageSize:\n    secure: v1:abc\n", "only the Pulumi CLI and the stack's secrets provider can decrypt"),
])
def test_cli_unreadable_stack_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "Pulumi.odd.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "mailsite", "render", "--config", str(path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


def _fields(model, prefix=""):
    """Every setting's camelCase path in a settings model, nested ones included."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, path + ".")
        else:
            yield path


def test_example_stack_has_every_setting():
    """Pulumi.example.yaml is the reference: every setting is in it (the hosts' too)."""
    from mailsite.model import Host, Site
    from tests.sites import example_settings

    settings = example_settings()

    def present(path: str, data) -> bool:
        for part in path.split("."):
            if not isinstance(data, dict) or part not in data:
                return False
            data = data[part]
        return True

    # Inline keys are for tests only: the example must not carry any.
    test_only = {"secrets.queueKeys", "secrets.spamdSyncKey"}
    missing = [p for p in _fields(Site) if p not in test_only and not present(p, settings)]
    missing += [f"hosts[{i}].{p}" for i, host in enumerate(settings["hosts"]) for p in _fields(Host) if p not in host]
    assert missing == []


def test_misspelt_secret_setting_never_shows_its_value(settings):
    key = "fedcba9876543210fedcba9876543210"
    settings["secrets"] = {"backend": "inline", "queueKey": {"mx1": key}, "spamdSynckey": key}
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    text = "\n".join(map(str, raised.value.problems))
    assert "mailsite:secrets.queueKey = <not shown>" in text and "mailsite:secrets.spamdSynckey = <not shown>" in text
    assert key not in text


# Issue 12: values that wrote lines of their own into root-run files, and values accepted although
# wrong. Each is refused in one line that names the setting and says the fix.
INJECTED = [
    ("command in tls path (rc.conf.local is sourced by /etc/rc)",
     lambda s: s["tls"].update(certificate="/etc/ssl/$(touch${IFS}/tmp/pwned).crt"), "mailsite:tls.certificate", "like /etc/ssl/{fqdn}.crt"),
    ("a bgp neighbor through a description",
     lambda s: s["bgpSpamd"]["routeServers"][0].update(description='rs1"\n\t}\n\tneighbor 192.0.2.66 {\n\t\tdescr "evil'),
     "mailsite:bgpSpamd.routeServers[0].description", "like bgp-spamd rs1"),
    ("a catch-all through an alias target",
     lambda s: s["recipients"]["aliases"].update(abuse="alice@example.org\n@example.org alice"),
     "mailsite:recipients.aliases.abuse", "bob@example.net"),
    ("user with a final newline (a YAML | block)", lambda s: s["recipients"]["users"].__setitem__(1, "bob\n"),
     "mailsite:recipients.users[1]", "lower-case letters"),
    ("alias with a final newline", lambda s: s["recipients"]["aliases"].update({"sales\n": "bob"}),
     "mailsite:recipients.aliases.sales\n", "lower-case letters"),
    ("domain with a final newline", lambda s: s["domains"].__setitem__(1, "example.net\n"), "mailsite:domains[1]", "like example.org"),
    ("MX name with a final newline", lambda s: _host(s, 1).update(fqdn="mx2.example.org\n"), "mailsite:hosts[1].fqdn", "like example.org"),
    ("community with a final newline", lambda s: s["bgpSpamd"].update(bypassCommunity="65066:42\n"),
     "mailsite:bgpSpamd.bypassCommunity", "like 65066:666"),
    ("size with a final newline", lambda s: s.update(maxMessageSize="50M\n"), "mailsite:maxMessageSize", "like 50M"),
    ("host name with a final newline", lambda s: _host(s, 2).update(name="mx3\n"), "mailsite:hosts[2].name", "like mx1"),
    ("interface with a final newline", lambda s: _host(s, 2).update(egressInterface="vmx0\n"), "mailsite:hosts[2].egressInterface", "like vmx0"),
    ("pf table with a final newline", lambda s: s["bgpSpamd"]["pfTables"].update(bypass="bgp_spamd_bypass\n"),
     "mailsite:bgpSpamd.pfTables.bypass", "like bgp_spamd_bypass"),
    ("queue ttl with a final newline", lambda s: s["queue"].update(ttl="7d\n"), "mailsite:queue.ttl", "like 7d"),
    # Python's ipaddress keeps whatever follows % as a zone index; netstart(8) runs a `!` line as root.
    ("IPv6 zone index with a line of its own", lambda s: _host(s, 1).update(ipv6="2001:db8::20%x\n!touch /tmp/pwned #"),
     "mailsite:hosts[1].ipv6", "write the address alone"),
    ("IPv6 zone index in a resolver", lambda s: s["network"]["nameservers"].append("2001:db8::1%vmx0"),
     "mailsite:network.nameservers[1]", "write the address alone"),
]

WRONG = [
    ("MX name outside the site's domains", lambda s: _host(s, 2).update(fqdn="mx3.example.com"),
     "mailsite:hosts[2].fqdn", "outside the site's domains (example.org, example.net); use a name in one of them, like mx3.example.org"),
    ("admin networks that are the whole internet together",
     lambda s: s.update(adminCidrs=["0.0.0.0/1", "128.0.0.0/1", "2001:db8:ad::/48"]),
     "mailsite:adminCidrs", "together open ssh to more than a /8 of IPv4"),
    ("host on the gateway's address", lambda s: _host(s, 1).update(ipv4="192.0.2.1"), "mailsite:hosts[1].ipv4",
     "the gateway's address (network.ipv4Gateway); give the host an address of its own in 192.0.2.0/24"),
    ("host on the network address", lambda s: _host(s, 2).update(ipv4="192.0.2.0"), "mailsite:hosts[2].ipv4", "the network's own address"),
    ("host on the broadcast address", lambda s: _host(s, 2).update(ipv4="192.0.2.255"), "mailsite:hosts[2].ipv4", "the network's broadcast address"),
    ("host on the IPv6 gateway's address", lambda s: _host(s, 2).update(ipv6="2001:db8::1"), "mailsite:hosts[2].ipv6", "network.ipv6Gateway"),
    ("route server on loopback", lambda s: s["bgpSpamd"]["routeServers"][1].update(address="127.0.0.1"),
     "mailsite:bgpSpamd.routeServers[1].address", "a loopback address, which no MX reaches"),
    ("route server listed twice", lambda s: s["bgpSpamd"]["routeServers"][1].update(address="198.51.100.100"),
     "mailsite:bgpSpamd.routeServers[1].address", "same route server as routeServers[0]; list each once"),
    ("the whole internet announced", lambda s: s["vultr"]["bgp"].update(prefixes=["0.0.0.0/0"]),
     "mailsite:vultr.bgp.prefixes[0]", "wider than a /24"),
    ("pf tables far below the lists", lambda s: s["bgpSpamd"].update(tableEntries=10000),
     "mailsite:bgpSpamd.tableEntries", "too small for the bgp-spamd lists"),
    ("true as a network (YAML's yes)", lambda s: s["vultr"]["bgp"].update(prefixes=[True]), "mailsite:vultr.bgp.prefixes[0]",
     "not a network in CIDR form"),
    ("true as an admin network", lambda s: s["adminCidrs"].__setitem__(0, True), "mailsite:adminCidrs[0]", "not a network in CIDR form"),
    ("a number as an address", lambda s: _host(s, 1).update(ipv4=3221225492), "mailsite:hosts[1].ipv4", "not an IPv4 address"),
    ("description bgpd cuts", lambda s: s["bgpSpamd"]["routeServers"][0].update(description="bgp-spamd route server one of two"),
     "mailsite:bgpSpamd.routeServers[0].description", "at most 31"),
]


@pytest.mark.parametrize("change,setting,fix", [case[1:] for case in INJECTED + WRONG], ids=[case[0] for case in INJECTED + WRONG])
def test_hostile_or_wrong_value_is_refused_in_one_line(settings, change, setting, fix):
    change(settings)
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    problems = raised.value.problems
    assert len(problems) == 1, [str(p) for p in problems]
    assert problems[0].setting == setting
    line = str(problems[0])
    assert fix in line, line
    assert "\n" not in line and line.isprintable(), line


def test_safe_values_of_the_same_settings_are_taken(settings):
    """The types refuse what would break a file, not what a site may need."""
    settings["tls"].update(certificate="/etc/ssl/acme/{fqdn}.fullchain.pem", key="/etc/ssl/private/{fqdn}_2026.key")
    settings["bgpSpamd"]["routeServers"][0]["description"] = "bgp-spamd.net rs1 (Amsterdam)"
    settings["recipients"]["aliases"].update(sales="Bob.Smith+site@Example.NET", abuse="alice")
    settings["adminCidrs"] = ["10.0.0.0/8", "2001:db8::/32"]
    settings["bgpSpamd"]["tableEntries"] = 400000
    settings["vultr"]["bgp"]["prefixes"] = ["198.51.100.0/24", "2001:db8:77::/48"]
    site = load_site(settings)
    assert site.recipients.aliases["sales"] == "Bob.Smith+site@example.net"
    assert site.tls.certificate_for(site.primary) == "/etc/ssl/acme/mx1.example.org.fullchain.pem"


# The example's key as it stood before issue 12: 30 bytes where ed25519 has 32, no base64 padding.
_TRUNCATED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJ0ZXN0a2V5Zm9ybWFpbHNpdGVleGFtcGxlb25seQ admin@example.org"


@pytest.mark.parametrize("key,why", [
    (_TRUNCATED_KEY, "cut short"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1haWxzaXRlLWV4YW1wbGUta2V5LW5vdC1mb3ItdX admin@example.org", "cut short"),
    ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIG1haWxzaXRlLWV4YW1wbGUta2V5LW5vdC1mb3ItdXNl admin@example.org", "does not hold a ssh-rsa key"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1haWxzaXRlLWV4YW1wbGUta2V5LW5vdC1mb3ItdXNl admin@example.org\rroot", "paste one whole line"),
])
def test_admin_ssh_key_must_decode_to_its_own_type(settings, key, why):
    """A key cut short in the paste would lock the admins out of every new VM (root's
    authorized_keys is baked); ssh-keygen -l refuses each of these too."""
    settings["adminSshKeys"] = [key]
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    (problem,) = raised.value.problems
    assert problem.setting == "mailsite:adminSshKeys[0]"
    assert why in str(problem) and "paste one whole line of a .pub file" in str(problem)


def test_example_admin_key_is_one_ssh_keygen_reads(example_site):
    (key,) = example_site.admin_ssh_keys
    listed = subprocess.run(["ssh-keygen", "-l", "-f", "/dev/stdin"], input=key + "\n", capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.rstrip().endswith("admin@example.org (ED25519)"), listed.stderr


def _vultr_settings(bgp: dict) -> dict:
    settings = example_settings()
    settings.update(target="vultr", network={"addressing": "autoconf"}, vultr={"bgp": bgp})
    for host in settings["hosts"]:
        host.update(ipv4="allocate", ipv6="allocate", egressInterface="vio0")
    return settings


def test_provider_bgp_is_the_vultr_session_only_when_enabled_there(example_site):
    session = {"enabled": True, "localAs": 4200000042, "prefixes": ["198.51.100.0/24"]}
    vultr = site_of(_vultr_settings(session))
    assert vultr.provider_bgp is vultr.vultr.bgp and vultr.provider_bgp.local_as == 4200000042
    assert site_of(_vultr_settings({"enabled": False})).provider_bgp is None
    # libvirt has no provider session (vultr.bgp.enabled there is refused by the model).
    assert example_site.target == "libvirt" and example_site.provider_bgp is None


def test_bad_settings_are_a_user_error_exiting_2(settings):
    from mailsite.errors import UserError

    settings["hosts"][0]["role"] = "backup"
    with pytest.raises(UserError) as raised:
        load_site(settings)
    assert isinstance(raised.value, SiteConfigError) and raised.value.exit_code == 2


def test_allocated_ipv6_on_a_static_site_is_one_line_not_a_traceback(settings):
    """A backup's ipv6: allocate beside the primary's fixed IPv6 used to be compared with the site
    network as if it were an address, and crashed the tool."""
    settings["hosts"][1]["ipv6"] = "allocate"
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    assert [str(p) for p in raised.value.problems] == [
        "mailsite:hosts[1].ipv6 = allocate: network.addressing is static; give a fixed address"]
