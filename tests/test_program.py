"""The Pulumi program's resource graph, under Pulumi's own mocks (no cloud, no CLI): what
`pulumi preview` would show for each target."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import runpy
from dataclasses import dataclass, field

import pulumi
import pytest
from google.protobuf import json_format
from pulumi.output import Unknown

from mailsite.config import load_site
from mailsite.keys import new_key
from mailsite.secrets import FileStore, host_label, init_secrets, queue_key_id, spamd_sync_key_id
from tests.hooks import HookMonitor, Registered
from tests.sites import ROOT, example_settings, fake_key, sized_settings

PROGRAM = ROOT / "__main__.py"
# The example stack's resources for each target as the program made them before issue 13's
# restructuring (whose two imaps rules of the primary's cloud firewall Dovecot opened again).
URNS = ROOT / "tests/fixtures/state/example-stack-urns.json"
DYNAMIC = "pulumi-python:dynamic:Resource"
SECRET_SIGNATURE, SECRET_MARK = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"


@dataclass
class Recorded:
    resources: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    registered: Registered = field(default_factory=Registered)  # hooks, and what state records of each resource
    graph: dict = field(default_factory=dict)  # URN -> {"parent": its parent's URN, "provider": an explicit provider's reference, options, a component's outputs}

    def of(self, typ: str) -> list:
        return [r for r in self.resources if r.typ == typ]

    def named(self, part: str) -> list:
        return [r for r in self.resources if part in r.name]


class SiteMocks(pulumi.runtime.Mocks):
    """Stands in for the providers: echoes inputs and makes up what only a cloud would know."""

    def __init__(self, recorded: Recorded, first_preview: bool = False):
        self.recorded = recorded
        self.next_ipv4 = ipaddress.IPv4Address("203.0.113.10")
        self.first_preview = first_preview  # nothing exists yet: what only the cloud knows is unknown

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outputs = dict(args.inputs)
        if self.first_preview:
            self.recorded.resources.append(args)
            return [f"{args.name}-id", outputs]
        if args.typ == "vultr:index/reservedIp:ReservedIp":
            # mxN's is 203.0.113.N0, whatever order the SDK registers them in (each resource's
            # inputs resolve in their own time); another name's, the next free one.
            numbered = re.fullmatch(r".*-mx(\d+)-ipv4", args.name)
            address = ipaddress.IPv4Address("203.0.113.0") + 10 * int(numbered[1]) if numbered else self.next_ipv4
            outputs["subnet"] = str(address)
            self.next_ipv4 = max(self.next_ipv4, address) + 10
        if args.typ == "vultr:index/instance:Instance":
            outputs["v6MainIp"] = f"2001:db8:77::{len(self.recorded.of(args.typ)) + 1}"
        if args.typ == DYNAMIC and "identity" in args.inputs:
            outputs["path"] = f"/cache/{args.inputs['identity']}/image"
            outputs["url"] = "https://objects.example/presigned"
            outputs["objectKey"] = f"mailsite/images/{args.inputs['identity']}.raw"
        self.recorded.resources.append(args)
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


class GraphMonitor(HookMonitor):
    """Also keeps each resource's URN with its parent and explicit provider, as state records them."""

    def __init__(self, mocks, recorded: Recorded):
        super().__init__(mocks, recorded.registered)
        self.graph = recorded.graph

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        # The options the engine acts on, as state records them: a flipped `protect` or a lost
        # `ignoreChanges` is a deleted reserved IP or a replaced network on the next `up`.
        self.graph[response.urn] = {
            "parent": request.parent, "provider": request.provider, "protect": request.protect,
            "replaceOnChanges": sorted(request.replaceOnChanges), "ignoreChanges": sorted(request.ignoreChanges),
            "deleteBeforeReplace": request.deleteBeforeReplace,
            "additionalSecretOutputs": sorted(request.additionalSecretOutputs),
            "beforeDelete": list(request.hooks.before_delete), "dependencies": sorted(set(request.dependencies)),
        }
        return response

    def RegisterResourceOutputs(self, request):
        # A component's outputs, by name, as state records them.
        self.graph[request.urn]["outputs"] = sorted(json_format.MessageToDict(request.outputs))
        return super().RegisterResourceOutputs(request)


def inline_secrets(settings: dict, version: str = "v1", rotated: str | None = None) -> dict:
    settings["secrets"] = {
        "backend": "inline",
        "spamdSyncKey": fake_key("spamd-sync"),
        "queueKeys": {h["name"]: fake_key(h["name"] + ("-rotated" if h["name"] == rotated else "")) for h in settings["hosts"]},
    }
    return settings


def vultr_settings(settings: dict) -> dict:
    settings.update(target="vultr", network={"addressing": "autoconf"})
    settings["images"] = {"isoSha256": "1" * 64, "objectStorage": {"bucket": "images", "endpointUrl": "https://ams1.vultrobjects.com"}}
    for host in settings["hosts"]:
        host.update(ipv4="allocate", ipv6="allocate", egressInterface="vio0")
    return settings


def evaluate(settings: dict, first_preview: bool = False) -> Recorded:
    """Run the program under mocks with these `mailsite:` settings; return what it registered.
    `first_preview`: as `pulumi preview` of a new stack, where every cloud-made output is unknown."""
    recorded = Recorded()
    mocks = SiteMocks(recorded, first_preview)
    pulumi.runtime.set_mocks(mocks, project="mailsite", stack="test", preview=first_preview,
                             monitor=GraphMonitor(mocks, recorded))
    pulumi.runtime.set_all_config({f"mailsite:{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in settings.items()})

    @pulumi.runtime.test
    def run():
        mail = runpy.run_path(str(PROGRAM), run_name="mailsite_program")["main"]()

        def keep(values):
            recorded.outputs.update(hosts=values[0], mx=mail.mx_table)

        return pulumi.Output.all(mail.host_outputs).apply(keep)

    run()
    return recorded


# How each target's program is evaluated: a target in components.targets without its settings
# here fails test_every_resource_keeps_its_name_options_parent_and_provider.
SETTINGS = {
    "libvirt": lambda hosts: inline_secrets(sized_settings(hosts) if hosts != 3 else example_settings()),
    "vultr": lambda hosts: vultr_settings(inline_secrets(sized_settings(hosts) if hosts != 3 else example_settings())),
}
_EVALUATED: dict[tuple[str, int], Recorded] = {}


def site_on(target: str, hosts: int = 3) -> Recorded:
    """The program evaluated once per test process for each target and host count."""
    if (target, hosts) not in _EVALUATED:
        _EVALUATED[target, hosts] = evaluate(SETTINGS[target](hosts))
    return _EVALUATED[target, hosts]


@pytest.fixture(scope="module")
def libvirt_site() -> Recorded:
    return site_on("libvirt")


@pytest.fixture(scope="module")
def vultr_site() -> Recorded:
    return site_on("vultr")


def _without_the_stack(graph: dict) -> dict:
    # The stack resource is the engine's, and the SDK registers it once per test process under
    # whichever stack name ran first: the stack is left out, and a parent that is it is named so.
    root = re.compile(r"urn:pulumi:[^:]+::mailsite::pulumi:pulumi:Stack::[^:]+")
    stack = lambda urn: "(the stack)" if root.fullmatch(urn) else urn
    return {urn: {**r, "parent": stack(r["parent"]), "dependencies": [stack(d) for d in r["dependencies"]]}
            for urn, r in graph.items() if not root.fullmatch(urn)}


def _fixture_key(target: str, hosts: int) -> str:
    return target if hosts == 3 else f"{target}-{hosts}hosts"


def _every_target() -> list[str]:
    from components.targets import PACKAGES

    return sorted(PACKAGES)


@pytest.mark.parametrize("hosts", [3, 5])
@pytest.mark.parametrize("target", _every_target())
def test_every_resource_keeps_its_name_options_parent_and_provider(target, hosts):
    """The engine knows a resource by its URN (its name and its parents' types): a renamed or
    re-parented one is deleted and made anew on the next `up`, a VM with it (an MX down, its
    queue drained or lost); one moved to another provider is made anew too; a changed option
    (protect, replaceOnChanges, ignoreChanges, deleteBeforeReplace, the drain hook, the VM
    chain's dependencies) changes what the next `up` does to resources users already hold.
    A resource added on purpose: UPDATE_URNS=1 rewrites the fixture (review its diff); a gone
    or changed one is never rewritten."""
    key = _fixture_key(target, hosts)
    fixture = json.loads(URNS.read_text())
    now = _without_the_stack(site_on(target, hosts).graph)
    before = _without_the_stack(fixture.get(key, {}))
    assert sorted(set(before) - set(now)) == [], "gone (or renamed)"
    changed = {urn: (before[urn], now[urn]) for urn in set(before) & set(now) if before[urn] != now[urn]}
    assert changed == {}, "another parent, provider or option"
    new = sorted(set(now) - set(before))
    if new and os.environ.get("UPDATE_URNS") == "1":
        fixture[key] = {**fixture.get(key, {}), **{urn: site_on(target, hosts).graph[urn] for urn in new}}
        URNS.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
        return
    assert new == [], f"{key}: new (or renamed); if added on purpose, UPDATE_URNS=1 pytest tests/test_program.py records them in {URNS.relative_to(ROOT)}"
    assert len(before) > 20


def test_every_target_the_settings_accept_has_its_package_and_its_facts():
    """A target named in the settings but missing from components.targets would fail the program
    with a KeyError; one without its facts (image format, VM name) would fail the drain hook."""
    from typing import get_args

    from components.targets import PACKAGES
    from mailsite.model import Site
    from mailsite.targets import TARGETS as FACTS

    accepted = set(get_args(Site.model_fields["target"].annotation))
    assert accepted == set(PACKAGES) == set(FACTS) == set(SETTINGS)


def test_libvirt_site_has_three_vms_on_vmxnet3_on_the_routed_network(libvirt_site):
    domains = libvirt_site.of("libvirt:index/domain:Domain")
    assert sorted(d.inputs["name"] for d in domains) == ["mx1.example.org", "mx2.example.org", "mx3.example.org"]
    for domain in domains:
        assert "vmxnet3" in domain.inputs["xml"]["xslt"]
        (nic,) = domain.inputs["networkInterfaces"]
        assert nic["networkId"] == "mail-addresses-network-id"
    (network,) = libvirt_site.of("libvirt:index/network:Network")
    assert network.inputs["mode"] == "route" and network.inputs["addresses"] == ["192.0.2.0/24", "2001:db8::/64"]
    # Each VM's boot disk from its image (the primary's mail volume beside them: tests/test_data_volume.py).
    volumes = [v for v in libvirt_site.of("libvirt:index/volume:Volume") if "source" in v.inputs]
    assert len(volumes) == 3 and all(v.inputs["format"] == "qcow2" and v.inputs["source"].startswith("/cache/") for v in volumes)


def test_libvirt_leaves_the_addresses_to_the_image(libvirt_site):
    """libvirt is never asked for an address: the provider would write a DHCP host entry with a
    MAC for the IPv6 address (libvirt refuses it) and read addresses back from DHCP leases a
    static OpenBSD never takes (a diff on every refresh)."""
    for domain in libvirt_site.of("libvirt:index/domain:Domain"):
        (nic,) = domain.inputs["networkInterfaces"]
        assert set(nic) == {"networkId"}, f"{domain.inputs['name']}: {sorted(nic)}"
    (network,) = libvirt_site.of("libvirt:index/network:Network")
    assert network.inputs["dhcp"] == {"enabled": False}


def test_turning_dhcp_off_does_not_replace_an_existing_network(libvirt_site):
    """`dhcp` is ForceNew in terraform-provider-libvirt 0.8.1 (libvirt/resource_libvirt_network.go),
    and a network made by an earlier version of this program has it on: replacing the network
    under three running MXes takes the whole site off the net at once, with no drain."""
    (network,) = libvirt_site.of("libvirt:index/network:Network")
    assert "dhcp" in libvirt_site.registered.ignore_changes[network.name]


def test_libvirt_zone_files_hold_every_record_and_ptr(libvirt_site):
    zones = {r.inputs["path"]: r.inputs["text"] for r in libvirt_site.of(DYNAMIC) if "path" in r.inputs and r.inputs["path"].endswith(".zone")}
    org = zones["zones/example.org.zone"]
    assert "@\t3600\tIN\tMX\t10\tmx1.example.org." in org and "@\t3600\tIN\tMX\t30\tmx3.example.org." in org
    assert "mx2\t3600\tIN\tA\t192.0.2.20" in org and "mx2\t3600\tIN\tAAAA\t2001:db8::20" in org
    assert '_dmarc\t3600\tIN\tTXT\t"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"' in org
    assert "@\t3600\tIN\tMX\t20\tmx2.example.org." in zones["zones/example.net.zone"]
    assert "20.2.0.192.in-addr.arpa.\t3600\tIN\tPTR\tmx2.example.org." in zones["zones/2.0.192.in-addr.arpa.zone"]
    ptr6 = zones["zones/0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.zone"]
    assert ipaddress.ip_address("2001:db8::30").reverse_pointer + ".\t3600\tIN\tPTR\tmx3.example.org." in ptr6
    # Without dns.nameservers, files to $INCLUDE: the user's zone keeps its SOA (tests/test_dns.py loads them with nsd).
    assert all("\tSOA\t" not in text for text in zones.values())


def test_vultr_dns_takes_every_record_in_its_apis_shapes(vultr_site):
    records = {(r.inputs["domain"], r.inputs["name"], r.inputs["type"]): r.inputs for r in vultr_site.of("vultr:index/dnsRecord:DnsRecord")}
    assert records[("example.org", "", "TXT")]["data"] == '"v=spf1 a:mx1.example.org -all"'
    assert records[("example.org", "mx2", "TXT")]["data"] == '"v=spf1 a -all"'
    submissions = records[("example.net", "_submissions._tcp", "SRV")]
    assert (submissions["priority"], submissions["data"]) == (0, "1 465 mx1.example.org")
    assert records[("example.net", "_imap._tcp", "SRV")]["data"] == "0 0 ."
    assert records[("example.org", "mx3", "CAA")]["data"] == '0 issue "letsencrypt.org"'
    assert records[("example.net", "mta-sts", "A")]["data"] == "203.0.113.10", "the primary serves the MTA-STS policy"
    assert {r["ttl"] for r in records.values()} == {3600}


def test_vultr_site_instances_boot_from_baked_snapshots_with_reserved_ips(vultr_site):
    instances = vultr_site.of("vultr:index/instance:Instance")
    snapshots = vultr_site.of("vultr:index/snapshotFromUrl:SnapshotFromUrl")
    reserved = vultr_site.of("vultr:index/reservedIp:ReservedIp")
    assert len(instances) == len(snapshots) == len(reserved) == 3
    snapshot_ids = {f"{s.name}-id" for s in snapshots}
    for instance in instances:
        assert instance.inputs["snapshotId"] in snapshot_ids, "every instance boots from a baked image"
        assert instance.inputs["reservedIpId"].endswith("-ipv4-id") and instance.inputs["enableIpv6"] is True
    assert all(r.inputs["ipType"] == "v4" for r in reserved)
    assert all(s.inputs["url"] == "https://objects.example/presigned" for s in snapshots)
    releases = [r for r in vultr_site.of(DYNAMIC) if r.name.endswith("-release")]
    assert len(releases) == 3, "each uploaded image is deleted once its snapshot exists"
    waits = sorted(r.inputs["snapshotId"] for r in vultr_site.of(DYNAMIC) if r.name.endswith("-ready"))
    assert waits == sorted(snapshot_ids), "every snapshot is waited for until Vultr has made it"


def test_vultr_dns_mx_preferences_point_at_names_with_a_aaaa_and_ptr(vultr_site):
    records = vultr_site.of("vultr:index/dnsRecord:DnsRecord")
    mx = sorted((r.inputs["domain"], r.inputs["priority"], r.inputs["data"]) for r in records if r.inputs["type"] == "MX")
    assert mx == [(d, p, f"mx{p // 10}.example.org") for d in ("example.net", "example.org") for p in (10, 20, 30)]
    a = {r.inputs["name"]: r.inputs["data"] for r in records if r.inputs["type"] == "A" and r.inputs["name"] != "mta-sts"}
    aaaa = {r.inputs["name"]: r.inputs["data"] for r in records if r.inputs["type"] == "AAAA" and r.inputs["name"] != "mta-sts"}
    assert a == {"mx1": "203.0.113.10", "mx2": "203.0.113.20", "mx3": "203.0.113.30"}
    assert set(aaaa) == {"mx1", "mx2", "mx3"}
    ptr4 = {r.inputs["ip"]: r.inputs["reverse"] for r in vultr_site.of("vultr:index/reverseIpv4:ReverseIpv4")}
    ptr6 = {r.inputs["ip"]: r.inputs["reverse"] for r in vultr_site.of("vultr:index/reverseIpv6:ReverseIpv6")}
    assert ptr4 == {a[name]: f"{name}.example.org" for name in a}, "PTR must answer the name A points at"
    assert ptr6 == {aaaa[name]: f"{name}.example.org" for name in aaaa}


def _rules(recorded: Recorded, host: str) -> set[tuple]:
    return {
        (r.inputs["ipType"], r.inputs["protocol"], f"{r.inputs['subnet']}/{int(r.inputs['subnetSize'])}", r.inputs.get("port"))
        for r in recorded.of("vultr:index/firewallRule:FirewallRule")
        if r.name.startswith(f"mail-firewall-{host}-")
    }


def test_vultr_firewall_is_exactly_the_rule_set_and_nothing_wider(vultr_site):
    common = {
        ("v4", "icmp", "0.0.0.0/0", None), ("v6", "icmp", "::/0", None),
        ("v4", "tcp", "0.0.0.0/0", "25"), ("v6", "tcp", "::/0", "25"),
        ("v4", "tcp", "198.51.100.100/32", "179"), ("v4", "tcp", "203.0.113.100/32", "179"),
        ("v4", "tcp", "198.51.100.0/28", "22"), ("v6", "tcp", "2001:db8:ad::/48", "22"),
    }
    # http for the CA's http-01 challenges: every MX.
    common |= {("v4", "tcp", "0.0.0.0/0", "80"), ("v6", "tcp", "::/0", "80")}
    # Submission, IMAPS and the MTA-STS policy (https): the primary's alone.
    msa = {(family, "tcp", world, port) for family, world in (("v4", "0.0.0.0/0"), ("v6", "::/0")) for port in ("443", "465", "587", "993")}
    sync = lambda *peers: {("v4", "udp", f"203.0.113.{p}/32", "8025") for p in peers}
    assert _rules(vultr_site, "mx1") == common | msa | sync(20, 30)
    assert _rules(vultr_site, "mx2") == common | sync(10, 30)
    assert _rules(vultr_site, "mx3") == common | sync(10, 20)
    groups = {r.name: f"{r.name}-id" for r in vultr_site.of("vultr:index/firewallGroup:FirewallGroup")}
    for instance in vultr_site.of("vultr:index/instance:Instance"):
        host = instance.name.split("-")[1]
        assert instance.inputs["firewallGroupId"] == groups[f"mail-firewall-{host}"]


def test_first_preview_shows_every_firewall_port_and_source_but_the_peers_addresses(vultr_site):
    """A new stack's preview knows no reserved IP yet. Only a spamd-sync rule's source (a peer's
    address) waits for one: every port, protocol and prefix length, and every other source, is
    the model's, so the policy pack can judge the firewall in the pull request's preview."""
    preview = evaluate(vultr_settings(inline_secrets(example_settings())), first_preview=True)
    rules = preview.of("vultr:index/firewallRule:FirewallRule")
    assert {r.name for r in rules} == {r.name for r in vultr_site.of("vultr:index/firewallRule:FirewallRule")}
    for rule in rules:
        fields = rule.inputs
        assert {"ipType", "protocol", "subnetSize", "notes"} <= set(fields), f"{rule.name}: {sorted(fields)}"
        assert not any(isinstance(v, Unknown) for k, v in fields.items() if k != "subnet"), f"{rule.name}: {fields}"
        assert fields["protocol"] == "icmp" or isinstance(fields.get("port"), str), f"{rule.name}: no port at preview"
        if fields["notes"].startswith("spamd-sync:"):
            assert isinstance(fields["subnet"], Unknown), f"{rule.name}: a peer's address known before its reserved IP exists?"
            assert (fields["ipType"], fields["protocol"], fields["port"], int(fields["subnetSize"])) == ("v4", "udp", "8025", 32)
        else:
            assert isinstance(fields.get("subnet"), str), f"{rule.name}: source unknown at preview"
    ports = {(r.name.split("-")[2], r.inputs["protocol"], r.inputs.get("port")) for r in rules}
    assert ("mx1", "tcp", "587") in ports and ("mx2", "tcp", "587") not in ports


def test_rewording_a_firewall_rules_description_keeps_the_rule(vultr_site, monkeypatch):
    """A rule's notes are what Vultr's console shows; its resource name is what state knows it by.
    Rewording the notes must not rename (delete and make anew) every rule of every MX."""
    import dataclasses

    import components.mail_site
    from mailsite.firewall import cloud_rules

    monkeypatch.setattr(components.mail_site, "cloud_rules",
                        lambda services: [dataclasses.replace(r, notes=f"reworded {r.notes}") for r in cloud_rules(services)])
    reworded = evaluate(vultr_settings(inline_secrets(example_settings())))
    rules = reworded.of("vultr:index/firewallRule:FirewallRule")
    assert rules and all(r.inputs["notes"].startswith("reworded ") for r in rules)
    assert sorted(r.name for r in rules) == sorted(r.name for r in vultr_site.of("vultr:index/firewallRule:FirewallRule"))


VMS = ("vultr:index/instance:Instance", "libvirt:index/domain:Domain")


def _vms(recorded: Recorded) -> dict[str, str]:
    """Host name -> VM resource name."""
    return {r.name.split("-")[1]: r.name for r in recorded.resources if r.typ in VMS}


def test_every_vm_is_drained_before_it_is_deleted(vultr_site, libvirt_site):
    for recorded in (vultr_site, libvirt_site):
        registered = recorded.registered
        vms = _vms(recorded)
        assert sorted(vms) == ["mx1", "mx2", "mx3"]
        assert {registered.before_delete[vm][0] for vm in vms.values()} == {"mailsite-drain"}
        assert all(len(registered.before_delete[vm]) == 1 for vm in vms.values())
        assert set(registered.hooks) == {"mailsite-drain"}


def test_a_stack_without_mx3_still_registers_the_hook_its_state_names():
    """The engine runs a deleted VM's hooks by the names its state recorded; the `up` that
    removes mx3 must still register them, or it fails (`hook "..." was not registered`)."""
    three = evaluate(inline_secrets(example_settings())).registered
    recorded_in_state = {name for vm in _vms_of(three) for name in three.before_delete[vm]}
    settings = inline_secrets(example_settings())
    settings["hosts"] = [h for h in settings["hosts"] if h["name"] != "mx3"]
    two = evaluate(inline_secrets(settings)).registered
    assert not any(vm.startswith("mail-mx3") for vm in _vms_of(two)), "mx3 has left the stack"
    assert recorded_in_state <= set(two.hooks)


def _vms_of(registered: Registered) -> list[str]:
    return [name for name in registered.before_delete if name.endswith(("-vm", "-instance"))]


def test_vms_are_created_primary_first_and_deleted_backups_first(vultr_site, libvirt_site):
    """A chain of VMs: a change to every image replaces them one after the other whatever
    `--parallel` says, and a destroy deletes the backups (which drain to the primary) first."""
    for recorded in (vultr_site, libvirt_site):
        registered, vms = recorded.registered, _vms(recorded)
        urn = {host: registered.urns[vm] for host, vm in vms.items()}
        assert urn["mx1"] in registered.dependencies[vms["mx2"]]
        assert urn["mx2"] in registered.dependencies[vms["mx3"]]
        assert not {urn["mx2"], urn["mx3"]} & set(registered.dependencies[vms["mx1"]])


def test_replacing_one_vm_old_first_takes_no_other_vm_down(vultr_site, libvirt_site):
    """Each VM is replaced old-first (its reserved IP or fixed address belongs to one VM at a
    time). Before deleting it, the engine deletes whatever would be replaced with it: the
    resources whose inputs come from it (calculateDependentReplacements follows property
    dependencies, not `depends_on`). The chain is `depends_on` alone, so the next MX stays up."""
    for recorded in (vultr_site, libvirt_site):
        registered, vms = recorded.registered, _vms(recorded)
        vm_urns = {registered.urns[vm] for vm in vms.values()}
        for host, vm in vms.items():
            assert registered.delete_before_replace[vm], f"{host}: a new VM before the old one is gone"
            assert not registered.property_dependencies[vm] & vm_urns, f"{host}: an input comes from another VM"


def test_keys_stay_secret_and_outputs_are_complete(vultr_site):
    bakes = [r for r in vultr_site.of(DYNAMIC) if "queueKey" in r.inputs]
    assert len(bakes) == 3
    for resource in bakes:
        # Pulumi's wire form of a secret: the engine stores it encrypted and previews show [secret].
        for name in ("queueKey", "spamdSyncKey", "tree"):
            assert resource.inputs[name].get(SECRET_SIGNATURE) == SECRET_MARK, name
        assert resource.inputs["queueKey"]["value"] == fake_key(resource.inputs["host"]["name"])
    for resource in vultr_site.resources:
        if resource.typ == DYNAMIC:
            continue
        assert fake_key("mx1") not in json.dumps(resource.inputs, default=str), resource.typ
    hosts = vultr_site.outputs["hosts"]
    assert set(hosts) == {"mx1", "mx2", "mx3"}
    for name, host in hosts.items():
        assert set(host) == {"ipv4", "ipv6", "imageId", "imageIdentity", "queueKeyVersion"}
        assert host["queueKeyVersion"] == "inline" and len(host["imageIdentity"]) == 64
        assert fake_key(name) not in json.dumps(host)
    assert vultr_site.outputs["mx"][0] == {"domain": "example.org", "preference": 10, "target": "mx1.example.org"}


def test_secret_inputs_are_marked_secret():
    """The bake's key inputs are secret Outputs, so state and previews hold them encrypted."""
    recorded = Recorded()
    pulumi.runtime.set_mocks(SiteMocks(recorded), project="mailsite", stack="test", preview=True)
    settings = inline_secrets(example_settings())
    pulumi.runtime.set_all_config({f"mailsite:{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in settings.items()})
    seen = {}

    @pulumi.runtime.test
    def run():
        mail = runpy.run_path(str(PROGRAM), run_name="mailsite_program")["main"]()
        image = mail.images["mx2"]
        return pulumi.Output.all(image.identity.is_secret(), mail.hosts["mx2"].ipv4.is_secret()).apply(lambda v: seen.update(identity=v[0], ipv4=v[1]))

    run()
    assert seen == {"identity": False, "ipv4": False}, "derived, non-secret values stay readable"


@pytest.mark.parametrize("count", [2, 5])
def test_other_site_sizes_by_config_alone(count):
    recorded = evaluate(inline_secrets(sized_settings(count)))
    assert len(recorded.of("libvirt:index/domain:Domain")) == count
    assert len(recorded.outputs["hosts"]) == count


def _identities(settings: dict) -> dict[str, str]:
    return {name: host["imageIdentity"] for name, host in evaluate(settings).outputs["hosts"].items()}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {host for host in before if before[host] != after[host]}


def test_new_queue_key_changes_that_host_image_only(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    init_secrets(load_site(settings), "test", ROOT)
    before = _identities(settings)
    store = FileStore(tmp_path / "keys")
    # A rotation under way: the pending key is what the new image carries...
    store.put_pending(queue_key_id("test", "mx2"), new_key())
    pending = _identities(settings)
    assert _changed(before, pending) == {"mx2"}
    # ...and promoting it once the host runs with it changes no image again.
    store.promote(queue_key_id("test", "mx2"))
    assert _identities(settings) == pending


def test_spamd_key_rollout_changes_one_host_image_at_a_time(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    init_secrets(load_site(settings), "test", ROOT)
    before = _identities(settings)
    store = FileStore(tmp_path / "keys")
    pending = store.put_pending(spamd_sync_key_id("test"), new_key())
    assert _identities(settings) == before, "a pending site key alone replaces nothing"
    store.label(spamd_sync_key_id("test"), host_label("mx3"), pending.version)
    assert _changed(before, _identities(settings)) == {"mx3"}


def test_config_change_on_one_host_changes_its_image_only():
    settings = inline_secrets(example_settings())
    before = _identities(settings)
    settings["hosts"][2]["preference"] = 40
    assert _changed(before, _identities(settings)) == {"mx3"}
    # A new MX name changes the primary's too: its httpd serves the MTA-STS policy naming every MX.
    settings["hosts"][2]["fqdn"] = "mx3.example.net"
    assert _changed(before, _identities(settings)) == {"mx1", "mx3"}


def test_site_wide_change_changes_every_image():
    settings = inline_secrets(example_settings())
    before = _identities(settings)
    settings["maxMessageSize"] = "25M"
    assert _changed(before, _identities(settings)) == {"mx1", "mx2", "mx3"}


def test_bad_stack_settings_fail_the_program_with_one_line_each():
    settings = inline_secrets(example_settings())
    settings["hosts"][1]["preference"] = 5
    with pytest.raises(Exception) as raised:
        evaluate(settings)
    assert "error: mailsite:hosts[1].preference = 5: a backup's preference must be worse" in str(raised.value)


def test_a_new_bake_gets_a_new_release_so_its_upload_is_deleted_too():
    from components.vultr.snapshots import _ReleaseProvider

    provider = _ReleaseProvider()
    old = {"objectKey": "k1", "snapshotId": "s1", "upload": {}}
    same = provider.diff("k1", old, {**old})
    assert not same.changes
    new = provider.diff("k1", old, {**old, "objectKey": "k2"})
    assert new.changes and new.replaces == ["objectKey"], "create, which deletes the object, must run for the new one"
    again = provider.diff("k1", old, {**old, "snapshotId": "s2"})
    assert again.replaces == ["snapshotId"], "a snapshot made again from the same upload deletes it again"
