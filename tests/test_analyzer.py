"""The policy pack as the engine runs it: `python -u -m pulumi.policy <engine address> .` from the
pack's directory (what the engine's `pulumi-analyzer-policy-python` shim runs), spoken to over
its gRPC Analyzer protocol with the properties a real preview sends.

The properties come from the program itself, run in preview mode under Pulumi's mocks, and are
taken as the language SDK serialized them for the engine (camelCase names, the unknown sentinel
for values known only during `up`, secrets in their signature wrapper). They reach the analyzer as
the engine marshals them (`MarshalProperties` with KeepUnknowns, KeepSecrets, SkipInternalKeys):
`Remediate` then `Analyze` get a resource's inputs, `AnalyzeStack` every resource's outputs, which
in a preview are its inputs plus unknowns for whatever the provider computes (for a changed dynamic
resource, only its inputs: Python's dynamic provider has no preview, so the engine hands those back). What this cannot reproduce here:
a provider's Check adding schema defaults to the inputs (no Pulumi CLI or provider binary on these
machines).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import runpy
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import pulumi
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc, resource_pb2

from tests.sites import ROOT, example_settings
from tests.test_program import DYNAMIC, SECRET_MARK, SECRET_SIGNATURE, SiteMocks, inline_secrets, vultr_settings

sys.path.insert(0, str(ROOT / "policy"))
import mailsite_policies  # noqa: E402

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's unknown string (pulumi/sdk resource/plugin/rpc.go)
CANT_RUN = "can't run policy"


# ---- a preview of the program, as the engine receives it ----------------------------------------

@dataclass
class Registered:
    """One resource as the engine holds it after the program registered it."""
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    inputs: dict  # wire form: unknown sentinel, secrets wrapped
    outputs: dict
    secret_outputs: list[str]
    dependencies: list[str]
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    protect: bool = False  # the option, as the engine passes it to a policy

    def set(self, key: str, value: Any) -> None:
        """A change to the program: the input and, in a preview, the output it flows to."""
        self.inputs[key] = value
        self.outputs[key] = value


def _is_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(_is_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_unknown(v) for v in value)
    return False


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIGNATURE) == SECRET_MARK


def _engine_properties(props: dict) -> dict:
    # SkipInternalKeys: `__provider` (a dynamic resource's pickled provider) never reaches a policy.
    return {k: v for k, v in props.items() if not k.startswith("__")}


class PreviewMonitor(MockMonitor):
    """The mocks' resource monitor, keeping each registration as the engine would see it in a
    preview: a resource whose image changed, or whose inputs hold an unknown, is replaced, so its
    id and everything its provider computes are unknown until `up`."""

    def __init__(self, mocks, image_change: bool, new_site: bool):
        super().__init__(mocks)
        self.image_change = image_change
        self.new_site = new_site  # a first preview: every resource is created
        self.registered: list[Registered] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        inputs = json_format.MessageToDict(request.object)
        outputs = json_format.MessageToDict(response.object) if response.object else {}
        computed = [k for k in outputs if k not in inputs or _is_unknown(inputs[k])]  # known only during `up`
        rebaked = self.image_change and request.type == DYNAMIC and "identity" in inputs
        replaced = rebaked or _is_unknown(inputs) or (self.new_site and request.custom)
        if replaced and request.type == DYNAMIC:
            # Python's dynamic provider does not support previews: the engine hands its inputs back
            # as its state (provider_plugin.go, Create/Update with Preview), so a key only `up`
            # computes is absent from what AnalyzeStack gets, and unknown to the program.
            outputs = dict(inputs)
        elif replaced:
            outputs = {k: (inputs[k] if k in inputs and not _is_unknown(inputs[k]) else UNKNOWN) for k in outputs}
        secret = set(request.additionalSecretOutputs) | {k for k, v in inputs.items() if _is_secret(v)}
        outputs = {k: ({SECRET_SIGNATURE: SECRET_MARK, "value": v} if k in secret and not _is_secret(v) else v) for k, v in outputs.items()}
        self.registered.append(Registered(
            request.type, request.name, response.urn, request.parent, request.custom,
            _engine_properties(inputs), _engine_properties(outputs), list(request.additionalSecretOutputs),
            list(request.dependencies), {k: list(v.urns) for k, v in request.propertyDependencies.items()},
            request.protect,
        ))
        if replaced:
            fresh = resource_pb2.RegisterResourceResponse()
            fresh.CopyFrom(response)
            fresh.id = ""
            fresh.object.Clear()
            fresh.object.update(json_format.MessageToDict(response.object) | {k: UNKNOWN for k in computed})
            return fresh
        return response


def preview(settings: dict, image_change: bool = True, new_site: bool = False) -> list[Registered]:
    """What a preview of the program sends the engine for this stack."""
    from tests.test_program import PROGRAM, Recorded

    monitor = PreviewMonitor(SiteMocks(Recorded()), image_change, new_site)
    pulumi.runtime.set_mocks(monitor.mocks, project="mailsite", stack="pr", preview=True, monitor=monitor)
    pulumi.runtime.set_all_config({f"mailsite:{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in settings.items()})

    @pulumi.runtime.test
    def run():
        mail = runpy.run_path(str(PROGRAM), run_name="mailsite_program")["main"]()
        return pulumi.Output.all(mail.host_outputs).apply(lambda _: None)

    run()
    return monitor.registered


def _struct(props: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(props)
    return struct


def _options(r: Registered) -> analyzer_pb2.AnalyzerResourceOptions:
    return analyzer_pb2.AnalyzerResourceOptions(additionalSecretOutputs=r.secret_outputs, parent=r.parent, protect=r.protect)


# ---- the analyzer process --------------------------------------------------------------------

@dataclass
class Findings:
    diagnostics: list  # (policy, enforcement level name, message)
    not_applicable: list  # (policy, reason)

    def mandatory(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for policy, level, message in self.diagnostics:
            if level == "MANDATORY":
                found.setdefault(policy, []).append(message)
        return found


class Analyzer:
    def __init__(self, stub: analyzer_pb2_grpc.AnalyzerStub):
        self.stub = stub

    def preview(self, resources: list[Registered]) -> Findings:
        """What the engine asks during a preview: each resource as it registers (Remediate, then
        Analyze on the same inputs: step_generator.go), then the stack."""
        responses = []
        for r in resources:
            request = analyzer_pb2.AnalyzeRequest(type=r.type, name=r.name, urn=r.urn, properties=_struct(r.inputs), options=_options(r))
            remediated = self.stub.Remediate(request)
            assert not remediated.remediations, "the pack enforces; it never rewrites a resource"
            responses.append(self.stub.Analyze(request))
        responses.append(self.stub.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[
            analyzer_pb2.AnalyzerResource(
                type=r.type, name=r.name, urn=r.urn, properties=_struct(r.outputs), options=_options(r), parent=r.parent,
                dependencies=r.dependencies,
                propertyDependencies={k: analyzer_pb2.AnalyzerPropertyDependencies(urns=v) for k, v in r.property_dependencies.items()},
            ) for r in resources])))
        return Findings(
            [(d.policyName, analyzer_pb2.EnforcementLevel.Name(d.enforcementLevel), d.message) for resp in responses for d in resp.diagnostics],
            [(n.policy_name, n.reason) for resp in responses for n in resp.not_applicable],
        )


@contextlib.contextmanager
def policy_pack_process(errors=None):
    """The pack started as the engine starts it; it prints its port, and is stopped on exit. Its
    stderr goes to `errors` (a binary file): the engine shows each line of it in the preview."""
    env = {**os.environ, "PULUMI_PROJECT": "mailsite", "PULUMI_STACK": "pr", "PULUMI_DRY_RUN": "true",
           "PULUMI_ORGANIZATION": "organization", "PULUMI_CONFIG": "{}"}
    # The engine address is only handed through: the pack never calls the engine back.
    owned = errors is None
    errors = tempfile.TemporaryFile() if owned else errors  # a file, not a pipe: nobody reads it while the pack runs
    process = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "."], cwd=ROOT / "policy",
                               stdout=subprocess.PIPE, stderr=errors, env=env)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            process.kill()
            process.wait(timeout=10)
            errors.seek(0)
            raise RuntimeError(f"policy pack did not start: {line!r} {errors.read().decode()[-2000:]}")
        with grpc.insecure_channel(f"127.0.0.1:{line}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if owned:
            errors.close()


@pytest.fixture(scope="module")
def analyzer():
    with policy_pack_process() as stub:
        # The engine's opening calls, in its order: Handshake (older packs answer Unimplemented and
        # the engine carries on), then the stack it analyzes.
        try:
            stub.Handshake(analyzer_pb2.AnalyzerHandshakeRequest(engine_address="127.0.0.1:1", root_directory=str(ROOT / "policy"),
                                                                  program_directory=str(ROOT / "policy")))
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED
        stub.ConfigureStack(analyzer_pb2.AnalyzerStackConfigureRequest(stack="pr", project="mailsite", organization="organization"))
        yield Analyzer(stub)


@pytest.fixture(scope="module", params=["vultr", "libvirt"])
def image_change(request) -> list[Registered]:
    settings = inline_secrets(example_settings())
    return preview(vultr_settings(settings) if request.param == "vultr" else settings)


@pytest.fixture(scope="module")
def vultr_image_change() -> list[Registered]:
    return preview(vultr_settings(inline_secrets(example_settings())))


def _find(resources: list[Registered], typ: str, predicate: Callable[[Registered], bool] = lambda r: True) -> Registered:
    return next(r for r in resources if r.type == typ and predicate(r))


def _plain(value: Any) -> Any:
    return value["value"] if _is_secret(value) else value


# ---- what the engine is told about the pack ---------------------------------------------------

def test_analyzer_offers_every_policy_as_mandatory(analyzer):
    info = analyzer.stub.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "mailsite"
    assert {p.name: analyzer_pb2.EnforcementLevel.Name(p.enforcementLevel) for p in info.policies} == {
        p.name: "MANDATORY" for p in mailsite_policies.POLICIES}
    assert analyzer.stub.GetPluginInfo(empty_pb2.Empty()).version


# ---- a pull request that changes an image ----------------------------------------------------

def test_an_image_changing_preview_holds_unknowns_where_a_real_one_does(image_change):
    bakes = [r for r in image_change if r.type == DYNAMIC and "identity" in r.inputs]
    assert bakes and all("path" not in r.outputs and r.outputs == r.inputs for r in bakes), "a replaced dynamic resource's state is its inputs"
    vms = [r for r in image_change if r.type in (mailsite_policies.INSTANCE, mailsite_policies.VOLUME)
           and f"{mailsite_policies.DATA_VOLUME}$" not in r.urn]  # the mail volume is blank, from no image
    assert vms and all(UNKNOWN in (r.inputs.get("snapshotId"), r.inputs.get("source")) for r in vms)
    assert all(_is_secret(r.inputs["queueKey"]) for r in bakes), "keys reach the engine as secrets"
    assert not any(k.startswith("__") for r in image_change for k in r.inputs)


def test_a_clean_site_passes_an_image_changing_preview_with_no_report(analyzer, image_change):
    findings = analyzer.preview(image_change)
    assert findings.diagnostics == [], "no violation, and no advisory \"can't run during preview\""
    assert findings.not_applicable == []


def _backup_preference_equal_to_primary(resources):
    _find(resources, mailsite_policies.DNS_RECORD, lambda r: r.inputs.get("data") == "mx3.example.org" and r.inputs["domain"] == "example.org").set("priority", 10)
    return "primary-mx-preference", "backup mx3.example.org has preference 10"


def _ptr_for_a_new_ipv6_answers_another_name(resources):
    # The AAAA record and the PTR both take the new VM's address, unknown until `up`.
    _find(resources, mailsite_policies.REVERSE_V6, lambda r: r.inputs["reverse"] == "mx2.example.org").set("reverse", "vultr-guest.example.com")
    return "mx-forward-confirmed", "mx2.example.org"


def _new_ipv6_without_a_ptr(resources):
    # Whatever address the new VM gets, no PTR anywhere answers its name: decidable in the preview.
    resources.remove(_find(resources, mailsite_policies.REVERSE_V6, lambda r: r.inputs["reverse"] == "mx2.example.org"))
    return "mx-forward-confirmed", "mx2.example.org"


def _sync_open_to_the_world(resources):
    rule = _find(resources, mailsite_policies.FIREWALL_RULE, lambda r: r.inputs.get("port") == "8025")
    rule.set("subnet", "0.0.0.0")
    rule.set("subnetSize", 0)
    return "no-world-spamd-sync-or-bgp", "spamd-sync (udp/8025) open to the world"


def _backup_exposing_submission(resources):
    _find(resources, mailsite_policies.FIREWALL_RULE, lambda r: r.name.startswith("mail-firewall-mx2-smtp-")).set("port", "587")
    return "backups-mta-only", "a backup MX exposes port 587"


def _instance_from_a_stock_image(resources):
    _find(resources, mailsite_policies.INSTANCE).set("osId", 2284)
    return "baked-images-only", "must boot from this project's baked snapshot"


def _key_nested_in_a_dynamic_resource(resources):
    bake = _find(resources, DYNAMIC, lambda r: "queueKey" in r.inputs)
    key = _plain(bake.inputs["queueKey"])
    bake.set("host", {**bake.inputs["host"], "notes": [{"smtpd": f"queue encryption {key}"}]})
    return "queue-keys-secret", "property host.notes.0.smtpd holds a key in clear"


def _secret_key_in_clear_on_another_resource(resources):
    key = _plain(_find(resources, DYNAMIC, lambda r: "queueKey" in r.inputs).inputs["queueKey"])
    instance = _find(resources, mailsite_policies.INSTANCE)
    instance.set("tags", [*instance.inputs["tags"], key])
    return "keys-not-in-clear-elsewhere", "property tags.2 holds a key that is a secret elsewhere"


@pytest.mark.parametrize("breakage", [
    _backup_preference_equal_to_primary, _ptr_for_a_new_ipv6_answers_another_name, _new_ipv6_without_a_ptr, _sync_open_to_the_world,
    _backup_exposing_submission, _instance_from_a_stock_image, _key_nested_in_a_dynamic_resource,
    _secret_key_in_clear_on_another_resource,
], ids=lambda f: f.__name__.strip("_"))
def test_each_violation_is_mandatory_in_an_image_changing_preview(analyzer, vultr_image_change, breakage):
    broken = copy.deepcopy(vultr_image_change)
    policy, expected = breakage(broken)
    findings = analyzer.preview(broken)
    assert not [d for d in findings.diagnostics if CANT_RUN in d[2]]
    assert list(findings.mandatory()) == [policy]
    assert any(expected in message for message in findings.mandatory()[policy])


# ---- the first preview of a new site: nothing exists yet ----------------------------------------

@pytest.fixture(scope="module")
def new_vultr_site() -> list[Registered]:
    return preview(vultr_settings(inline_secrets(example_settings())), new_site=True)


def test_a_new_site_reports_no_violation_and_names_what_waits_for_up(analyzer, new_vultr_site):
    # Reserved addresses do not exist yet: only a spamd-sync peer's address waits for its reserved
    # IP, while every rule's port, protocol and prefix come from the model, so the firewall
    # policies decide now. Whatever still cannot be judged is named, never passed in silence.
    bake = _find(new_vultr_site, DYNAMIC, lambda r: "queueKey" in r.inputs)
    assert bake.inputs["tree"] == {SECRET_SIGNATURE: SECRET_MARK, "value": UNKNOWN}, "a secret not known yet"
    findings = analyzer.preview(new_vultr_site)
    assert findings.diagnostics == []
    waiting = {policy for policy, _ in findings.not_applicable}
    assert waiting <= {"no-world-spamd-sync-or-bgp", "backups-mta-only", "mta-sts-names-the-mxes"}
    # The images' files (the MTA-STS policy among them) hold the addresses, known at `up`.
    assert all("not verifiable before `up`" in reason and ("port" in reason or "the image's files" in reason)
               for _, reason in findings.not_applicable)


def test_what_waits_for_up_is_printed_where_the_preview_shows_it(new_vultr_site, tmp_path):
    # The engine keeps only passed/failed in its policy summary and drops not-applicable reasons;
    # the pack's stderr is what it shows, each line an info diagnostic (plugin.go, runtrace).
    # A rule whose port is made by the cloud (unknown until `up`) cannot be judged in the preview.
    waiting = copy.deepcopy(new_vultr_site)
    rule = _find(waiting, mailsite_policies.FIREWALL_RULE, lambda r: r.name.startswith("mail-firewall-mx2-smtp-"))
    rule.set("port", UNKNOWN)
    with open(tmp_path / "pack-stderr", "w+b") as errors:
        with policy_pack_process(errors) as stub:
            findings = Analyzer(stub).preview(waiting)
        errors.seek(0)
        shown = errors.read().decode().splitlines()
    assert findings.not_applicable
    for policy, reason in findings.not_applicable:
        assert f"mailsite policy {policy}: {reason}" in shown


def test_a_backup_rule_is_matched_to_its_new_firewall_group_by_where_the_id_comes_from(analyzer, new_vultr_site):
    broken = copy.deepcopy(new_vultr_site)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: r.name.startswith("mail-firewall-mx2-smtp-"))
    assert rule.inputs["firewallGroupId"] == UNKNOWN, "the group is new: its id is unknown"
    rule.set("port", "587")
    findings = analyzer.preview(broken)
    assert list(findings.mandatory()) == ["backups-mta-only"]
    assert findings.mandatory()["backups-mta-only"] == [
        f"Backups do not expose 443/465/587/993.\n{rule.name}: a backup MX exposes port 587; a backup is an MTA only (tcp/25)"]


@pytest.mark.parametrize("record, key, policies", [
    (lambda r: r.inputs.get("type") == "MX", "priority", ["primary-mx-preference"]),
    # An A record whose type is unknown might be an MX, and might be the target's only address.
    (lambda r: r.inputs.get("type") == "A", "type", ["primary-mx-preference", "mx-forward-confirmed", "mx-spf-covered",
                                                     "dmarc-published", "mta-sts-names-the-mxes"]),
], ids=["mx-preference", "record-type"])
def test_an_unknown_that_decides_a_policy_is_named_not_guessed(analyzer, vultr_image_change, record, key, policies):
    # The program never leaves these unknown; should a change do so, the policy neither fails the
    # stack nor passes it in silence.
    broken = copy.deepcopy(vultr_image_change)
    changed = _find(broken, mailsite_policies.DNS_RECORD, record)
    changed.set(key, UNKNOWN)
    findings = analyzer.preview(broken)
    assert findings.diagnostics == []
    assert [p for p, _ in findings.not_applicable] == policies
    assert all(changed.name in reason or f"MX {changed.inputs.get('data')}" in reason for _, reason in findings.not_applicable)
