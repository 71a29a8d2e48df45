"""The policy pack on the stacks the program makes: each passes every policy, and each breakage a
policy exists for is caught by that policy. Every check goes through the pack's own analyzer
process, with the program's resources serialized as the engine sends them (tests/test_analyzer.py);
here every value is known (a preview of a stack that already exists and changes nothing else)."""

from __future__ import annotations

import copy
import json

import pytest

from tests.sites import example_settings
from tests.test_analyzer import DYNAMIC, Analyzer, Registered, _find, policy_pack_process, preview
from tests.test_program import inline_secrets, vultr_settings

import mailsite_policies  # noqa: E402  (on sys.path through tests.test_analyzer)
from mailsite.mta_sts import policy_text  # noqa: E402


@pytest.fixture(scope="module")
def pack():
    with policy_pack_process() as stub:
        yield Analyzer(stub)


def _known(settings: dict) -> list[Registered]:
    return preview(settings, image_change=False)


@pytest.fixture(scope="module", params=["vultr", "libvirt"])
def stack(request) -> list[Registered]:
    settings = inline_secrets(example_settings())
    return _known(vultr_settings(settings) if request.param == "vultr" else settings)


@pytest.fixture(scope="module")
def vultr_stack() -> list[Registered]:
    return _known(vultr_settings(inline_secrets(example_settings())))


@pytest.fixture(scope="module")
def libvirt_stack() -> list[Registered]:
    return _known(inline_secrets(example_settings()))


def violations(pack: Analyzer, resources: list[Registered]) -> dict[str, list[str]]:
    """Mandatory findings by policy, without the policy's description line."""
    findings = pack.preview(resources)
    assert findings.not_applicable == [], "every value is known: every policy must run"
    assert all(level == "MANDATORY" for _, level, _ in findings.diagnostics)
    return {policy: [m.split("\n", 1)[1] for m in messages] for policy, messages in findings.mandatory().items()}


def _zone(resources, suffix: str) -> Registered:
    return _find(resources, DYNAMIC, lambda r: str(r.inputs.get("path", "")).endswith(suffix))


def _unset(resource: Registered, key: str) -> None:
    """An optional input left out (the SDK sends no key for it)."""
    resource.inputs.pop(key, None)
    resource.outputs.pop(key, None)


def test_the_programs_stacks_pass_every_policy(pack, stack):
    assert violations(pack, stack) == {}


def test_backup_preference_not_worse_than_primary_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.DNS_RECORD, lambda r: r.inputs.get("data") == "mx3.example.org" and r.inputs["domain"] == "example.org").set("priority", 10)
    assert violations(pack, broken) == {"primary-mx-preference": [
        "example.org: backup mx3.example.org has preference 10, not worse than the primary's 10: mail would loop or bypass the primary"]}


def test_mx_record_without_a_preference_is_a_violation_not_a_crash_of_the_pack(pack, vultr_stack):
    # Vultr makes a priority-less record preference 0: better than the primary's.
    broken = copy.deepcopy(vultr_stack)
    record = _find(broken, mailsite_policies.DNS_RECORD, lambda r: r.inputs.get("data") == "mx3.example.org" and r.inputs["domain"] == "example.org")
    _unset(record, "priority")
    assert violations(pack, broken) == {"primary-mx-preference": [f"example.org: MX {record.name} (mx3.example.org) has no preference; give every MX record one (priority)"]}


def test_backup_preference_in_a_zone_file_is_caught(pack, libvirt_stack):
    broken = copy.deepcopy(libvirt_stack)
    zone = _zone(broken, "example.net.zone")
    zone.set("text", zone.inputs["text"].replace("MX\t20\tmx2", "MX\t5\tmx2"))
    assert list(violations(pack, broken)) == ["primary-mx-preference"]


def test_wrong_ptr_in_a_reverse_zone_is_caught(pack, libvirt_stack):
    broken = copy.deepcopy(libvirt_stack)
    zone = _zone(broken, "in-addr.arpa.zone")
    zone.set("text", zone.inputs["text"].replace("PTR\tmx3.example.org.", "PTR\thost-30.example.com."))
    assert list(violations(pack, broken)) == ["mx-forward-confirmed"]


def test_mx_target_without_matching_ptr_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.REVERSE_V4, lambda r: r.inputs["reverse"] == "mx2.example.org").set("reverse", "vultr-guest.example.com")
    assert list(violations(pack, broken)) == ["mx-forward-confirmed"]
    broken = copy.deepcopy(vultr_stack)
    broken.remove(_find(broken, mailsite_policies.DNS_RECORD, lambda r: r.inputs.get("type") == "A" and r.inputs["name"] == "mx3"))
    broken.remove(_find(broken, mailsite_policies.DNS_RECORD, lambda r: r.inputs.get("type") == "AAAA" and r.inputs["name"] == "mx3"))
    assert "MX target mx3.example.org has no A or AAAA record" in " ".join(violations(pack, broken)["mx-forward-confirmed"])


@pytest.mark.parametrize("port", ["8025", "179"])
def test_sync_or_bgp_open_to_the_world_is_caught(pack, vultr_stack, port):
    broken = copy.deepcopy(vultr_stack)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: str(r.inputs.get("port")) == port)
    rule.set("subnet", "0.0.0.0")
    rule.set("subnetSize", 0)
    assert list(violations(pack, broken)) == ["no-world-spamd-sync-or-bgp"]


@pytest.mark.parametrize("port", ["8025", "179"])
@pytest.mark.parametrize("opening", ["1:65535", None], ids=["port-range", "every-port"])
def test_sync_or_bgp_open_to_the_world_through_a_range_or_every_port_is_caught(pack, vultr_stack, port, opening):
    # Vultr reads `a:b` as a range, and a tcp/udp rule without a port as every port. The primary's
    # rule: on a backup, every port would also expose 465/587 (another policy's finding).
    broken = copy.deepcopy(vultr_stack)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: str(r.inputs.get("port")) == port and r.name.startswith("mail-firewall-mx1-"))
    rule.set("subnet", "0.0.0.0")
    rule.set("subnetSize", 0)
    rule.set("port", opening) if opening else _unset(rule, "port")
    assert list(violations(pack, broken)) == ["no-world-spamd-sync-or-bgp"]


def test_a_rule_of_a_protocol_without_ports_open_to_the_world_is_not_sync_or_bgp(pack, vultr_stack):
    fine = copy.deepcopy(vultr_stack)
    rule = _find(fine, mailsite_policies.FIREWALL_RULE, lambda r: str(r.inputs.get("port")) == "8025")
    rule.set("subnet", "0.0.0.0")
    rule.set("subnetSize", 0)
    rule.set("protocol", "icmp")
    _unset(rule, "port")
    assert violations(pack, fine) == {}


@pytest.mark.parametrize("opening", ["400:600", None], ids=["port-range", "every-port"])
def test_backup_exposing_submission_through_a_range_or_every_port_is_caught(pack, vultr_stack, opening):
    broken = copy.deepcopy(vultr_stack)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: r.name.startswith("mail-firewall-mx2-smtp-"))
    rule.set("port", opening) if opening else _unset(rule, "port")
    found = violations(pack, broken)
    assert "a backup MX exposes port 443 and 465 and 587" in found.pop("backups-mta-only")[0]
    # The smtp rule is open to the world: every port includes spamd-sync's and bgp's.
    assert list(found) == ([] if opening else ["no-world-spamd-sync-or-bgp"])


def test_backup_exposing_submission_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: r.name.startswith("mail-firewall-mx2-smtp-")).set("port", "587")
    assert list(violations(pack, broken)) == ["backups-mta-only"]


def test_backups_mta_only_guards_exactly_the_ports_the_daemons_open_on_the_primary_alone(example_site):
    """The pack cannot import the site, so it keeps its own list: it must be what the daemons say
    only the primary opens (a daemon that opens 993 on the primary alone fails this until the
    list says 993 too), and the policy's description names the same ports."""
    from mailsite.firewall import inbound_services
    from tests.sites import addresses

    ports = {host.name: {s.port for s in inbound_services(example_site, host, addresses(example_site))} for host in example_site.hosts}
    primary = next(host.name for host in example_site.hosts if host.is_primary)
    backups = set().union(*(opened for name, opened in ports.items() if name != primary))
    assert set(mailsite_policies.PRIMARY_ONLY_PORTS) == ports[primary] - backups
    [policy] = [p for p in mailsite_policies.POLICIES if p.name == "backups-mta-only"]
    assert policy.description == f"Backups do not expose {'/'.join(map(str, sorted(ports[primary] - backups)))}."


def test_instance_not_from_a_baked_image_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    instance = _find(broken, mailsite_policies.INSTANCE)
    del instance.inputs["snapshotId"], instance.outputs["snapshotId"]
    instance.set("osId", 2284)
    assert list(violations(pack, broken)) == ["baked-images-only"]


def test_mx_records_without_the_primary_are_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    broken.remove(_find(broken, mailsite_policies.DNS_RECORD, lambda r: r.inputs.get("data") == "mx1.example.org" and r.inputs["domain"] == "example.org"))
    assert violations(pack, broken) == {"primary-mx-preference": ["example.org: no MX record points at the primary"]}


def test_sync_open_to_the_whole_ipv6_internet_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: str(r.inputs.get("port")) == "8025")
    for key, value in (("ipType", "v6"), ("subnet", "::"), ("subnetSize", 0)):
        rule.set(key, value)
    assert list(violations(pack, broken)) == ["no-world-spamd-sync-or-bgp"]


@pytest.mark.parametrize("target, typ, key, stock", [
    ("vultr", mailsite_policies.INSTANCE, "snapshotId", "9a8c0b7e-stock-openbsd-snapshot"),
    ("libvirt", mailsite_policies.VOLUME, "source", "/var/lib/libvirt/images/openbsd77-stock.qcow2"),
], ids=["vultr-snapshot", "libvirt-disk"])
def test_a_vm_image_not_made_by_this_projects_bake_is_caught(pack, vultr_stack, libvirt_stack, target, typ, key, stock):
    # A literal id or path is set and looks like any other: what gives it away is that no bake of
    # this project makes it (the property depends on no resource).
    broken = copy.deepcopy(vultr_stack if target == "vultr" else libvirt_stack)
    vm = _find(broken, typ, lambda r: key in r.inputs)  # a boot disk, not the mail volume
    vm.set(key, stock)
    vm.property_dependencies.pop(key)
    assert violations(pack, broken) == {"baked-images-from-this-project": [
        f"{vm.name}: {key} is not made by this project's bake (it is set directly); boot only from a baked image"]}


def test_a_vultr_snapshot_from_anything_but_the_bake_is_caught(pack, vultr_stack):
    # e.g. a vultr.Snapshot of some other server, or a SnapshotFromUrl of a stock image.
    broken = copy.deepcopy(vultr_stack)
    vm = _find(broken, mailsite_policies.INSTANCE)
    other = _find(broken, "vultr:index/firewallGroup:FirewallGroup")
    vm.property_dependencies["snapshotId"] = [other.urn]
    assert violations(pack, broken) == {"baked-images-from-this-project": [
        f"{vm.name}: snapshotId is not made by this project's bake (it comes from {other.type}); boot only from a baked image"]}


def test_libvirt_volume_not_from_a_baked_image_is_caught(pack, libvirt_stack):
    broken = copy.deepcopy(libvirt_stack)
    disk = _find(broken, mailsite_policies.VOLUME, lambda r: "source" in r.inputs)  # a boot disk, not the mail volume
    _unset(disk, "source")
    disk.set("size", 8 * 2**30)
    assert violations(pack, broken) == {"baked-images-only": [f"{disk.name} must be made from this project's baked image (source)"]}


@pytest.mark.parametrize("change", [
    ("disks", "append", {"file": "/var/lib/libvirt/images/install77.iso"}),
    ("disks", "replace", {"url": "https://cdn.openbsd.org/pub/OpenBSD/7.7/amd64/miniroot77.img"}),
    ("kernel", "set", "/boot/bsd.rd"),
], ids=["stock-iso-beside-the-baked-disk", "stock-image-by-url", "kernel"])
def test_libvirt_vm_booting_anything_but_baked_volumes_is_caught(pack, libvirt_stack, change):
    broken = copy.deepcopy(libvirt_stack)
    vm = _find(broken, mailsite_policies.DOMAIN)
    key, how, value = change
    vm.set(key, [*vm.inputs["disks"], value] if how == "append" else [value] if how == "replace" else value)
    found = violations(pack, broken)
    assert list(found) == ["baked-images-only"]
    named = {"append": f"disks.{len(vm.inputs['disks']) - 1}.file", "replace": "disks.0.url", "set": "kernel"}[how]
    assert found["baked-images-only"][0].startswith(f"{vm.name} must boot only from this project's baked volumes (disks[].volumeId), not {named}")


@pytest.mark.parametrize("text", [
    "queue encryption\t" + "cd" * 16,
    'queue  encryption "' + "cd" * 16 + '"',
    json.dumps({"files": {"/etc/mail/queue-key.conf": "queue\tencryption\t" + "cd" * 16 + "\n"}}),
], ids=["tab", "quoted", "json-encoded"])
def test_a_queue_key_written_any_way_smtpd_reads_it_is_caught(pack, vultr_stack, text):
    # No resource declares this key: only its smtpd.conf line gives it away, however it is spaced,
    # quoted or escaped inside a JSON document.
    broken = copy.deepcopy(vultr_stack)
    instance = _find(broken, mailsite_policies.INSTANCE)
    instance.set("userData", text)
    assert violations(pack, broken) == {"queue-keys-secret": [f"{instance.name}: property userData holds a key in clear"]}


def test_spamd_sync_key_in_clear_elsewhere_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    bake = _find(broken, DYNAMIC, lambda r: "spamdSyncKey" in r.inputs)
    sync_key = bake.inputs["spamdSyncKey"]
    sync_key = sync_key["value"] if isinstance(sync_key, dict) else sync_key
    instance = _find(broken, mailsite_policies.INSTANCE)
    instance.set("userData", f"#!/bin/sh\necho '{sync_key}' > /etc/mail/spamd.key\n")
    assert violations(pack, broken) == {"keys-not-in-clear-elsewhere": [f"{instance.name}: property userData holds a key that is a secret elsewhere"]}


def test_key_outside_a_secret_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    bake = _find(broken, DYNAMIC, lambda r: "queueKey" in r.inputs)
    bake.secret_outputs = ["tree", "spamdSyncKey", "passwordHashes"]
    assert violations(pack, broken) == {"queue-keys-secret": [f"{bake.name}: queueKey carries a key but is not a secret"]}
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.INSTANCE).set("userData", "queue encryption " + "ab" * 16)
    assert list(violations(pack, broken)) == ["queue-keys-secret"]


@pytest.mark.parametrize("component", [False, True], ids=["volume", "component"])
def test_an_unprotected_mail_volume_is_caught(pack, stack, component):
    """Unprotected, the mail volume would go with a destroy, its removal from the program or a
    replacement (another region or block type), and the mail with it."""
    broken = copy.deepcopy(stack)
    volume = _find(broken, mailsite_policies.DATA_VOLUME) if component else \
        next(r for r in broken if f"{mailsite_policies.DATA_VOLUME}$" in r.urn)
    assert volume.protect
    volume.protect = False
    assert list(violations(pack, broken)) == ["mail-volume-protected"]
    assert violations(pack, broken)["mail-volume-protected"][0].startswith(f"{volume.name} holds the site's mail: it must be protected")


# -- the DNS records that make the site's mail trusted (issue 16.3) --------------------------------

def _record(resources, name: str, domain: str, kind: str) -> Registered:
    return _find(resources, mailsite_policies.DNS_RECORD,
                 lambda r: r.inputs.get("type") == kind and r.inputs.get("name") == name and r.inputs["domain"] == domain)


def test_an_mx_without_spf_for_its_helo_name_is_caught(pack, vultr_stack, libvirt_stack):
    broken = copy.deepcopy(vultr_stack)
    broken.remove(_record(broken, "mx2", "example.org", "TXT"))
    found = violations(pack, broken)
    assert list(found) == ["mx-spf-covered"]
    # One line per domain it is an MX of, in the order the engine registered the MX records.
    assert sorted(found["mx-spf-covered"]) == [
        f"mx2.example.org: an MX of {domain} without an SPF record for its HELO name; its bounces fail SPF (publish v=spf1 a -all)"
        for domain in ("example.net", "example.org")]
    broken = copy.deepcopy(libvirt_stack)
    zone = _zone(broken, "example.org.zone")
    zone.set("text", zone.inputs["text"].replace('mx3\t3600\tIN\tTXT\t"v=spf1 a -all"', 'mx3\t3600\tIN\tTXT\t"v=spf1 a:mx1.example.org -all"'))
    assert violations(pack, broken) == {"mx-spf-covered": [
        "mx3.example.org: its SPF record (v=spf1 a:mx1.example.org -all) does not name its own addresses; its bounces fail SPF (publish v=spf1 a -all)"] * 2}


def test_a_domain_whose_spf_leaves_out_the_primary_is_caught(pack, vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    _record(broken, "", "example.net", "TXT").set("data", '"v=spf1 a:mx2.example.org -all"')
    assert violations(pack, broken) == {"mx-spf-covered": [
        "example.net: its SPF record (v=spf1 a:mx2.example.org -all) does not name the primary mx1.example.org, which sends the domain's mail"]}


def test_a_domain_without_dmarc_is_caught(pack, vultr_stack, libvirt_stack):
    broken = copy.deepcopy(vultr_stack)
    broken.remove(_record(broken, "_dmarc", "example.org", "TXT"))
    assert list(violations(pack, broken)) == ["dmarc-published"]
    broken = copy.deepcopy(libvirt_stack)
    zone = _zone(broken, "example.net.zone")
    zone.set("text", "\n".join(line for line in zone.inputs["text"].splitlines() if not line.startswith("_dmarc")))
    assert violations(pack, broken) == {"dmarc-published": [
        "example.net: no DMARC record (_dmarc.example.net TXT v=DMARC1; p=...): receivers get no policy for mail forged "
        "in the domain, and the site gets no reports"]}


def _with_policy_file(resources, text: str) -> Registered:
    """The primary's image carrying an MTA-STS policy, as its httpd serves it."""
    bake = _find(resources, DYNAMIC, lambda r: "tree" in r.inputs and r.name.startswith("mail-mx1-"))
    tree = copy.deepcopy(bake.inputs["tree"])
    files = tree["value"] if isinstance(tree, dict) and "value" in tree else tree
    files["var/www/mta-sts/.well-known/mta-sts.txt"] = {"text": text, "mode": 0o644, "secret": False}
    bake.set("tree", tree)
    return bake


def test_an_mta_sts_policy_naming_a_name_that_is_no_mx_is_caught(pack, stack, example_site):
    fine = copy.deepcopy(stack)
    _with_policy_file(fine, policy_text(example_site))
    assert violations(pack, fine) == {}
    broken = copy.deepcopy(stack)
    bake = _with_policy_file(broken, policy_text(example_site).replace("mx: mx3.example.org", "mx: mx9.example.org"))
    path = "var/www/mta-sts/.well-known/mta-sts.txt"
    assert violations(pack, broken) == {"mta-sts-names-the-mxes": [
        f"{bake.name}: the MTA-STS policy {path} names mx9.example.org, which is no MX of the site's domains",
        f"{bake.name}: the MTA-STS policy {path} leaves out the MX mx3.example.org: senders that enforce it refuse to deliver there"]}
