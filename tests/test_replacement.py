"""A key rotation's `pulumi up` replaces that host alone, or refuses to run.

The Pulumi CLI cannot run here, so the previews are the engine events a real preview of this
program would stream (the JSON lines of the CLI's event log, parsed by the Automation API's own
`EngineEvent.from_json`), for the program's real resource graph: names, types and parents as the
program registers them (under mocks), URNs built the way the engine builds them.
"""

from __future__ import annotations

import json

import pytest
from pulumi.automation import EngineEvent, OpType
from pulumi.automation._cmd import CommandResult
from pulumi.automation.errors import CommandError

from mailsite import replacement
from mailsite.replacement import ReplacementRefused, automation_replace, decide_replacement, host_resources, steps_of
from tests.sites import example_settings
from tests.test_program import evaluate, inline_secrets, vultr_settings

STACK, PROJECT = "prod", "mailsite"
STACK_URN = f"urn:pulumi:{STACK}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{STACK}"


class Graph:
    """The program's resources as the engine names them."""

    def __init__(self, settings: dict):
        registered = evaluate(settings).registered
        by_urn = {urn: name for name, urn in registered.urns.items()}
        self.types, self.parent = registered.types, {}
        for name, parent_urn in registered.parents.items():
            self.parent[name] = by_urn.get(parent_urn)  # None: the stack itself
        self.names = [name for name in registered.urns if registered.types[name] != "pulumi:pulumi:Stack"]

    def qualified_type(self, name: str) -> str:
        parent = self.parent[name]
        return f"{self.qualified_type(parent)}${self.types[name]}" if parent else self.types[name]

    def urn(self, name: str) -> str:
        return f"urn:pulumi:{STACK}::{PROJECT}::{self.qualified_type(name)}::{name}"

    def parent_urn(self, name: str) -> str:
        return self.urn(self.parent[name]) if self.parent[name] else STACK_URN


def _state(graph: Graph, name: str, delete: bool = False) -> dict:
    custom = "index:" not in graph.types[name] or "/" in graph.types[name] or graph.types[name].startswith("pulumi-python")
    return {"type": graph.types[name], "urn": graph.urn(name), "custom": custom, "delete": delete, "id": f"{name}-id",
            "parent": graph.parent_urn(name), "inputs": {}, "outputs": {},
            "provider": f"urn:pulumi:{STACK}::{PROJECT}::pulumi:providers:libvirt::default_0_5_4::04da6b54"}


def preview_events(graph: Graph, ops: dict[str, str]) -> list[EngineEvent]:
    """The event stream of a preview in which each resource named in `ops` takes that step
    (a replacement is the engine's three steps, old VM first for delete-before-replace) and
    every other resource is unchanged."""
    lines, sequence = [{"sequence": 1, "timestamp": 1764100000, "preludeEvent": {"config": {}}}], 1
    for name in graph.names:
        op = ops.get(name, "same")
        steps = ["delete-replaced", "replace", "create-replacement"] if op == "replace" else [op]
        for step in steps:
            sequence += 1
            metadata = {"op": step, "urn": graph.urn(name), "type": graph.types[name],
                        "old": None if step == "create" else _state(graph, name, delete=step != "same"),
                        "new": None if step in ("delete", "delete-replaced") else _state(graph, name),
                        "provider": "", "logical": step != "delete-replaced"}
            if step not in ("same", "delete-replaced"):
                metadata.update(keys=["source"], diffs=["source"], detailedDiff={"source": {"diffKind": "update-replace", "inputDiff": True}})
            lines.append({"sequence": sequence, "timestamp": 1764100000, "resourcePreEvent": {"metadata": metadata, "planning": True}})
    changed = {op: sum(1 for o in ops.values() if o == op) for op in set(ops.values())}
    lines.append({"sequence": sequence + 1, "timestamp": 1764100001,
                  "summaryEvent": {"maybeCorrupt": False, "durationSeconds": 3, "resourceChanges": changed, "policyPacks": {}}})
    # Through JSON text, as the Automation API reads the CLI's event log.
    return [EngineEvent.from_json(json.loads(json.dumps(line))) for line in lines]


@pytest.fixture(scope="module")
def libvirt_graph() -> Graph:
    return Graph(inline_secrets(example_settings()))


@pytest.fixture(scope="module")
def vultr_graph() -> Graph:
    return Graph(vultr_settings(inline_secrets(example_settings())))


def _rotation_of(graph: Graph, host: str) -> dict[str, str]:
    """What a new key for `host` changes: its bake, and everything made from the image."""
    ops = {}
    for name in graph.names:
        if name.startswith(f"mail-{host}-") and graph.types[name] not in ("mailsite:index:MxHost", "mailsite:index:HostImage"):
            ops[name] = "replace"
    return ops


def test_host_resources_are_the_host_components_and_everything_under_them(libvirt_graph):
    steps = steps_of(preview_events(libvirt_graph, {}))
    names = {urn.rsplit("::", 1)[-1] for urn in host_resources("mx2", steps)}
    assert names == {"mail-mx2", "mail-mx2-image", "mail-mx2-image-bake", "mail-mx2-disk", "mail-mx2-vm"}
    assert not any(name.startswith("mail-mx1") for name in names)


def test_rotation_that_changes_only_its_host_is_targeted_at_that_host(libvirt_graph):
    ops = _rotation_of(libvirt_graph, "mx2")
    everything = steps_of(preview_events(libvirt_graph, ops))
    decision = decide_replacement("mx2", everything, everything)
    assert decision.refusal is None
    assert {urn.rsplit("::", 1)[-1] for urn in decision.targets} >= set(ops)
    assert libvirt_graph.urn("mail-mx2-vm") in decision.targets
    assert not [urn for urn in decision.targets if "mail-mx1" in urn or "mail-mx3" in urn]


def test_rotation_refuses_when_other_images_would_change_too(libvirt_graph):
    """Another Packer version on the operator's machine changes every image's identity: the
    rotation of mx2 must not rebuild mx1 and mx3 with it."""
    ops = {**_rotation_of(libvirt_graph, "mx1"), **_rotation_of(libvirt_graph, "mx2"), **_rotation_of(libvirt_graph, "mx3")}
    everything = steps_of(preview_events(libvirt_graph, ops))
    scoped = steps_of(preview_events(libvirt_graph, _rotation_of(libvirt_graph, "mx2")))
    decision = decide_replacement("mx2", everything, scoped)
    assert decision.refusal is not None and "\n" not in decision.refusal
    assert decision.refusal.startswith("not replacing mx2: `pulumi up` would also change 6 other resource(s): ")
    for name in ("mail-mx1-image-bake", "mail-mx1-vm", "mail-mx3-disk", "mail-mx3-vm"):
        assert f"{name} (replace)" in decision.refusal
    assert "mail-mx2" not in decision.refusal


def test_dependents_of_the_replaced_vm_belong_to_the_rotation(vultr_graph):
    """On Vultr a new VM gets a new IPv6 address: its AAAA record follows. A preview targeted
    at the host with its dependents shows that; it is not someone else's pending change."""
    ops = _rotation_of(vultr_graph, "mx2")
    assert "mail-mx2-instance" in ops and "mail-mx2-ptr6" in ops
    ops_with_dns = {**ops, "mail-dns-mx2-aaaa": "update"}
    everything = steps_of(preview_events(vultr_graph, ops_with_dns))
    scoped = steps_of(preview_events(vultr_graph, ops_with_dns))
    assert decide_replacement("mx2", everything, scoped).refusal is None
    # The same record changing while the targeted preview does not show it is another change.
    alone = decide_replacement("mx2", everything, steps_of(preview_events(vultr_graph, ops)))
    assert alone.refusal is not None and "mail-dns-mx2-aaaa (update)" in alone.refusal


def test_rotating_the_primary_reattaches_its_mail_volume_in_the_same_up(vultr_graph):
    """The mail volume belongs to no host (it outlives them), yet follows the primary's new VM:
    on Vultr its attachment changes in place. It is a dependent of the instance, so the targeted
    up (--target-dependents) carries that change, and it is never one of the targets replaced."""
    ops = {**_rotation_of(vultr_graph, "mx1"), "mail-primary-data-volume": "update"}
    everything = steps_of(preview_events(vultr_graph, ops))
    decision = decide_replacement("mx1", everything, steps_of(preview_events(vultr_graph, ops)))
    assert decision.refusal is None
    assert not [urn for urn in decision.targets if "mail-primary-data" in urn]


def test_rotation_refuses_when_the_host_would_not_be_replaced(libvirt_graph):
    """The pending key did not reach the image (the preview runs where the key cannot be read):
    an `up` would change nothing and the rotation would promote a key no host runs."""
    nothing = steps_of(preview_events(libvirt_graph, {}))
    decision = decide_replacement("mx2", nothing, nothing)
    assert decision.refusal is not None and "replaces none of its resources" in decision.refusal


def test_rotation_refuses_a_host_the_stack_does_not_hold(libvirt_graph):
    nothing = steps_of(preview_events(libvirt_graph, {}))
    decision = decide_replacement("mx9", nothing, nothing)
    assert decision.refusal is not None and "holds none of its resources" in decision.refusal


class _Result:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class RecordingStack:
    """Stands in for the Automation API's Stack where the CLI cannot run: streams the given
    previews' events to `on_event` and records each call's options."""

    def __init__(self, everything: list[EngineEvent], scoped: list[EngineEvent]):
        self.previews, self.ups = [], []
        self.fails_with: str | None = None
        self._events = [everything, scoped]

    def preview(self, **options):
        self.previews.append(options)
        for event in self._events[len(self.previews) - 1]:
            options["on_event"](event)
        return _Result(change_summary={OpType.SAME: 1})

    def up(self, **options):
        self.ups.append(options)
        if self.fails_with is not None:
            raise CommandError(CommandResult(stdout=self.fails_with, stderr="", code=255))
        return _Result(summary=_Result(result="succeeded"))


@pytest.fixture
def with_cli(monkeypatch):
    """As if the Pulumi CLI were installed; returns a way to set what its previews stream."""
    from pulumi import automation

    monkeypatch.setattr(replacement.shutil, "which", lambda name: "/usr/bin/pulumi")
    stacks = []

    def install(everything, scoped):
        stack = RecordingStack(everything, scoped)
        stacks.append(stack)
        monkeypatch.setattr(automation, "select_stack", lambda stack_name, work_dir: stack)
        return stack

    return install


def test_rotation_up_is_targeted_one_at_a_time_with_the_policy_pack(libvirt_graph, with_cli, tmp_path, example_site):
    events = preview_events(libvirt_graph, _rotation_of(libvirt_graph, "mx2"))
    stack = with_cli(events, events)
    assert automation_replace(STACK, str(tmp_path))(example_site.host("mx2")) is True
    policy = [str(tmp_path / "policy")]
    assert [p.get("policy_packs") for p in stack.previews] == [policy, policy]
    assert "target" not in stack.previews[0], "the first preview sees every pending change"
    assert stack.previews[1]["target_dependents"] is True
    (up,) = stack.ups
    assert up["target"] == stack.previews[1]["target"] and up["target_dependents"] is True
    assert up["parallel"] == 1 and up["policy_packs"] == policy


def test_rotation_up_does_not_run_when_the_preview_refuses(libvirt_graph, with_cli, tmp_path, example_site):
    every_host = {op: "replace" for host in ("mx1", "mx2", "mx3") for op in _rotation_of(libvirt_graph, host)}
    stack = with_cli(preview_events(libvirt_graph, every_host), preview_events(libvirt_graph, _rotation_of(libvirt_graph, "mx2")))
    with pytest.raises(ReplacementRefused, match="would also change 6 other resource"):
        automation_replace(STACK, str(tmp_path))(example_site.host("mx2"))
    assert stack.ups == []


def test_failed_up_is_one_line_naming_what_stopped_it(libvirt_graph, with_cli, tmp_path, example_site):
    """A drain that refuses fails the `up`; the rotation reports the hook's own line (and then
    rolls the key back), not the CLI's whole output."""
    events = preview_events(libvirt_graph, _rotation_of(libvirt_graph, "mx2"))
    stack = with_cli(events, events)
    stack.fails_with = (
        "Updating (prod):\n     Type                      Name      Status\n"
        " ~   libvirt:index:Domain      mail-mx2-vm  **failed**     1 error\n"
        "Diagnostics:\n  libvirt:index/domain:Domain (mail-mx2-vm):\n"
        '    error: before hook "mailsite-drain" failed: not taking mx2 down while mx1 takes no mail (waited 10 min); '
        "bring it back, or, destroying the site on purpose, run the destroy with MAILSITE_DECOMMISSION=<stack>\n"
        "Resources:\n    14 unchanged\n"
    )
    with pytest.raises(ReplacementRefused) as refused:
        automation_replace(STACK, str(tmp_path))(example_site.host("mx2"))
    assert str(refused.value).startswith('mx2: error: before hook "mailsite-drain" failed: not taking mx2 down')
    assert "\n" not in str(refused.value)


def test_rotation_refuses_changes_to_other_hosts_that_its_targeted_up_would_carry(libvirt_graph):
    """The VMs form a chain (each depends on the one before), so `--target-dependents` on mx2
    takes in mx3's VM: a change pending there (a new `libvirt.memoryMib` updates every VM) shows
    in the targeted preview too, and the rotation's `up` would apply it to mx3. Only mx2's own
    resources, and what is not another host's (its DNS records), may change."""
    memory = {"mail-mx1-vm": "update", "mail-mx2-vm": "update", "mail-mx3-vm": "update"}
    ops = {**memory, **_rotation_of(libvirt_graph, "mx2")}
    everything = steps_of(preview_events(libvirt_graph, ops))
    scoped = steps_of(preview_events(libvirt_graph, {"mail-mx3-vm": "update", **_rotation_of(libvirt_graph, "mx2")}))
    decision = decide_replacement("mx2", everything, scoped)
    assert decision.refusal is not None
    assert "mail-mx3-vm (update)" in decision.refusal and "mail-mx1-vm (update)" in decision.refusal
    # The primary's rotation carries both backups' VMs along the chain.
    ops = {**memory, **_rotation_of(libvirt_graph, "mx1")}
    scoped = steps_of(preview_events(libvirt_graph, {**memory, **_rotation_of(libvirt_graph, "mx1")}))
    decision = decide_replacement("mx1", steps_of(preview_events(libvirt_graph, ops)), scoped)
    assert decision.refusal is not None and "2 other resource(s)" in decision.refusal


def test_rotation_of_a_stack_never_deployed_says_so(libvirt_graph):
    """A new stack's preview creates everything (the default providers too): the rotation's
    answer is that the site is not up yet, not a list of forty "other" changes to undo."""
    created = steps_of(preview_events(libvirt_graph, {name: "create" for name in libvirt_graph.names}))
    decision = decide_replacement("mx2", created, created)
    assert decision.refusal is not None and "holds none of its resources" in decision.refusal
