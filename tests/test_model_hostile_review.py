"""Values a review of issue 12 found accepted although they break a host (R7): an IPv6 zone index
that writes lines of its own, a bgp table under a name pf.conf already uses, a pseudo-interface as
the egress, a queue ttl smtpd refuses, a key file that is a system file or the certificate, an
alias that shadows a user. Each is refused in one line naming the setting, with the fix."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mailsite import cli, local
from mailsite.config import load_site
from mailsite.render import render_host
from mailsite.templates import UnsafeValue
from tests.sites import ROOT, addresses, example_settings, fake_secrets, refusal_lines


def _refusal(settings: dict) -> list[str]:
    """The lines the tool would print for these settings (none: accepted), each one line."""
    lines = refusal_lines(settings)
    for line in lines:
        assert line.isprintable(), line  # one line, whatever the value holds
    return lines


def _refused(settings: dict, setting: str, *words: str) -> str:
    lines = [line for line in _refusal(settings) if line.startswith(f"{setting} = ")]
    assert len(lines) == 1, (setting, _refusal(settings))
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _stack(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "Pulumi.review.yaml"
    path.write_text(yaml.safe_dump({"config": {f"mailsite:{k}": v for k, v in settings.items()}}))
    return path


def _render(tmp_path: Path, settings: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailsite", "render", "--config", str(_stack(tmp_path, settings)),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=120)


# --- A: an IPv6 zone index ("%" and anything after it) is text of the value's own -------------

ZONE = "%x\n!cd;cd ..;cd tmp;touch pwned #"


def _set(settings: dict, path: tuple, value) -> None:
    place = settings
    for part in path[:-1]:
        place = place[part]
    place[path[-1]] = value


EVERY_IPV6_SETTING = [
    (("hosts", 1, "ipv6"), "2001:db8::20", "mailsite:hosts[1].ipv6"),
    (("network", "nameservers", 0), "2001:db8::1", "mailsite:network.nameservers[0]"),
    (("network", "ipv6Gateway"), "2001:db8::1", "mailsite:network.ipv6Gateway"),
    (("adminCidrs", 1), "2001:db8:ad::", "mailsite:adminCidrs[1]"),
    (("vultr", "bgp", "prefixes"), "2001:db8:500::", "mailsite:vultr.bgp.prefixes[0]"),
]


@pytest.mark.parametrize("path,address,setting", EVERY_IPV6_SETTING, ids=[case[2] for case in EVERY_IPV6_SETTING])
@pytest.mark.parametrize("zone", [ZONE, "%vmx0", '%x }"\npass in quick all\n#'])
def test_an_ipv6_zone_id_is_refused_in_every_address_setting(path, address, setting, zone):
    settings = example_settings()
    value = address + zone
    if path[-1] == "prefixes":
        value = [f"{address}{zone}/48"]
    elif path[0] == "adminCidrs":
        value = f"{address}{zone}/48"
    _set(settings, path, value)
    _refused(settings, setting, "%", "zone index", "alone")


def test_a_zone_id_never_writes_a_line_into_hostname_if(tmp_path):
    # netstart(8) runs a `!` line of hostname.if as root: the reviewer's value made mx2 touch a file.
    settings = example_settings()
    settings["hosts"][1]["ipv6"] = "2001:db8::20" + ZONE
    result = _render(tmp_path, settings)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: mailsite:hosts[1].ipv6 = 2001:db8::20%x\\n!cd"), line
    assert not (tmp_path / "out").exists()


def test_a_value_past_the_model_never_writes_a_line_into_resolv_conf():
    # The renderers' second line of defence covers the files made of plain lines too (resolv.conf,
    # smtpd's tables, authorized_keys), not only the templates.
    site = load_site(example_settings())
    slipped = ipaddress.IPv6Address("2001:db8::1%x\nnameserver 203.0.113.66")
    broken = site.model_copy(update={"network": site.network.model_copy(update={"nameservers": [slipped]})})
    with pytest.raises(UnsafeValue):
        render_host(broken, broken.primary, addresses(broken), fake_secrets(broken)[broken.primary.name])


def test_a_value_past_the_model_is_one_line_exit_2_not_a_traceback(tmp_path, monkeypatch, capsys):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    stack = _stack(tmp_path, settings)
    assert cli.main(["secrets", "init", "--config", str(stack)]) == 0
    capsys.readouterr()
    loaded = local.load_site_file

    def slipped_past(path):
        site = loaded(path)
        nameservers = [ipaddress.IPv6Address("2001:db8::1%x\nnameserver 203.0.113.66")]
        return site.model_copy(update={"network": site.network.model_copy(update={"nameservers": nameservers})})

    monkeypatch.setattr(local, "load_site_file", slipped_past)
    assert cli.main(["render", "--config", str(stack), "--out", str(tmp_path / "out")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and line.isprintable(), line
    assert "203.0.113.66" not in line
    assert not (tmp_path / "out").exists()


# --- B: accepted, but wrong on the host ---------------------------------------------------------

@pytest.mark.parametrize("table", ["blacklist", "bypass"])
@pytest.mark.parametrize("name", ["nospamd", "bruteforce"])
def test_pf_tables_of_pf_conf_own_are_reserved(table, name):
    # pf.conf passes <nospamd> straight to smtpd and fills <bruteforce> itself: a listed spammer
    # put into either would skip spamd, or a bypassed sender lose ssh.
    settings = example_settings()
    settings["bgpSpamd"]["pfTables"][table] = name
    _refused(settings, f"mailsite:bgpSpamd.pfTables.{table}", name, "pf.conf", "choose another")


@pytest.mark.parametrize("interface", ["lo0", "pflog1", "enc0", "pfsync0", "carp1", "bridge0", "vlan10", "wg0", "vmx", "vio01"])
def test_egress_interface_is_a_nic_not_a_pseudo_interface(interface):
    settings = example_settings()
    settings["hosts"][0]["egressInterface"] = interface
    _refused(settings, "mailsite:hosts[0].egressInterface", interface, "vio0", "vmx0")


@pytest.mark.parametrize("interface", ["vmx0", "vio0", "em1", "re0", "vmx12"])
def test_egress_interface_takes_every_nic_the_bake_can_give(interface):
    from mailsite.images.bake import QEMU_NICS

    assert interface.rstrip("0123456789") in QEMU_NICS
    settings = example_settings()
    for host in settings["hosts"]:
        host["egressInterface"] = interface
    assert _refusal(settings) == []


@pytest.mark.parametrize("ttl", ["99999999999999999999d", "31d", "745h", "44641m", "2678401s"])
def test_queue_ttl_is_bounded_as_smtpd_takes_it(ttl):
    settings = example_settings()
    settings["queue"]["ttl"] = ttl
    _refused(settings, "mailsite:queue.ttl", ttl, "30d")


@pytest.mark.parametrize("ttl", ["30d", "720h", "43200m", "2592000s", "4d", "1h"])
def test_queue_ttl_up_to_a_month_is_taken(ttl):
    settings = example_settings()
    settings["queue"]["ttl"] = ttl
    assert _refusal(settings) == []


@pytest.mark.parametrize("key", ["/etc/pf.conf", "/etc/ssl/{fqdn}.key", "/etc/mail/smtpd.conf", "/etc/ssl/privatekeys/{fqdn}.key"])
def test_tls_key_is_a_private_file_apart_from_the_certificate(key):
    settings = example_settings()
    settings["tls"]["key"] = key
    _refused(settings, "mailsite:tls.key", key, "private", "/etc/ssl/private/{fqdn}.key")


def test_tls_key_is_not_the_certificate_file():
    settings = example_settings()
    settings["tls"] = {"certificate": "/etc/ssl/private/{fqdn}.pem", "key": "/etc/ssl/private/{fqdn}.pem"}
    _refused(settings, "mailsite:tls.key", "tls.certificate", "its own file")


@pytest.mark.parametrize("key", ["/etc/ssl/private/{fqdn}.key", "/etc/ssl/private/mail-{fqdn}.key", "/etc/mail/private/{fqdn}.key"])
def test_tls_key_below_a_private_directory_is_taken(key):
    settings = example_settings()
    settings["tls"]["key"] = key
    assert _refusal(settings) == []


def test_an_alias_named_like_a_user_is_refused():
    # Two virtuals lines for alice@: which one smtpd uses is not the admin's choice to make.
    settings = example_settings()
    settings["recipients"]["aliases"]["alice"] = "mallory@attacker.example"
    _refused(settings, "mailsite:recipients.aliases.alice", "mallory@attacker.example", "user", "recipients.users")
