"""The policy pack: the stacks the program makes (under mocks) pass every policy, and each
breakage a policy exists for is caught by that policy."""

from __future__ import annotations

import copy
import sys

import pytest
from pulumi_policy import PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions, ResourceValidationArgs, StackValidationArgs

from tests.sites import ROOT, example_settings
from tests.test_program import SECRET_MARK, SECRET_SIGNATURE, evaluate, inline_secrets, vultr_settings

sys.path.insert(0, str(ROOT / "policy"))
import mailsite_policies  # noqa: E402

POLICIES = {policy.name: policy for policy in mailsite_policies.POLICIES}


def _unwrap(value, path, secret):
    """Mocks hand over Pulumi's wire form; the policy engine hands policies plain values."""
    if isinstance(value, dict) and value.get(SECRET_SIGNATURE) == SECRET_MARK:
        secret.add(path[0])
        return _unwrap(value["value"], path, secret)
    if isinstance(value, dict):
        return {k: _unwrap(v, path or [k], secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, path, secret) for v in value]
    return value


def policy_resources(recorded) -> list[PolicyResource]:
    resources = []
    for args in recorded.resources:
        secret: set[str] = set()
        props = {k: _unwrap(v, [k], secret) for k, v in args.inputs.items()}
        opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), sorted(secret))
        resources.append(PolicyResource(args.typ, props, f"urn:{args.typ}::{args.name}", args.name, opts, None, None, [], {}))
    return resources


def violations(resources: list[PolicyResource]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, policy in POLICIES.items():
        report = lambda message, urn=None, n=name: found.setdefault(n, []).append(message)
        if isinstance(policy, mailsite_policies.StackValidationPolicy):
            policy.validate(StackValidationArgs(resources), report)
        else:
            for r in resources:
                policy.validate(ResourceValidationArgs(r.resource_type, r.props, r.urn, r.name, r.opts, None), report)
    return found


@pytest.fixture(scope="module", params=["vultr", "libvirt"])
def stack(request) -> list[PolicyResource]:
    settings = inline_secrets(example_settings())
    return policy_resources(evaluate(vultr_settings(settings) if request.param == "vultr" else settings))


@pytest.fixture(scope="module")
def vultr_stack() -> list[PolicyResource]:
    return policy_resources(evaluate(vultr_settings(inline_secrets(example_settings()))))


@pytest.fixture(scope="module")
def libvirt_stack() -> list[PolicyResource]:
    return policy_resources(evaluate(inline_secrets(example_settings())))


def _find(resources, typ, predicate=lambda r: True):
    return next(r for r in resources if r.resource_type == typ and predicate(r))


def test_the_programs_stacks_pass_every_policy(stack):
    assert violations(stack) == {}


def test_backup_preference_not_worse_than_primary_is_caught(vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.DNS_RECORD, lambda r: r.props.get("data") == "mx3.example.org" and r.props["domain"] == "example.org").props["priority"] = 10
    assert violations(broken) == {"primary-mx-preference": [
        "example.org: backup mx3.example.org has preference 10, not worse than the primary's 10: mail would loop or bypass the primary"]}


def test_backup_preference_in_a_zone_file_is_caught(libvirt_stack):
    broken = copy.deepcopy(libvirt_stack)
    zone = _find(broken, mailsite_policies.DYNAMIC, lambda r: str(r.props.get("path", "")).endswith("example.net.zone"))
    zone.props["text"] = zone.props["text"].replace("MX\t20\tmx2", "MX\t5\tmx2")
    assert list(violations(broken)) == ["primary-mx-preference"]


def test_wrong_ptr_in_a_reverse_zone_is_caught(libvirt_stack):
    broken = copy.deepcopy(libvirt_stack)
    zone = _find(broken, mailsite_policies.DYNAMIC, lambda r: str(r.props.get("path", "")).endswith("in-addr.arpa.zone"))
    zone.props["text"] = zone.props["text"].replace("PTR\tmx3.example.org.", "PTR\thost-30.example.com.")
    assert list(violations(broken)) == ["mx-forward-confirmed"]


def test_mx_target_without_matching_ptr_is_caught(vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.REVERSE_V4, lambda r: r.props["reverse"] == "mx2.example.org").props["reverse"] = "vultr-guest.example.com"
    assert list(violations(broken)) == ["mx-forward-confirmed"]
    broken = copy.deepcopy(vultr_stack)
    broken.remove(_find(broken, mailsite_policies.DNS_RECORD, lambda r: r.props.get("type") == "A" and r.props["name"] == "mx3"))
    broken.remove(_find(broken, mailsite_policies.DNS_RECORD, lambda r: r.props.get("type") == "AAAA" and r.props["name"] == "mx3"))
    assert "MX target mx3.example.org has no A or AAAA record" in " ".join(violations(broken)["mx-forward-confirmed"])


@pytest.mark.parametrize("port", ["8025", "179"])
def test_sync_or_bgp_open_to_the_world_is_caught(vultr_stack, port):
    broken = copy.deepcopy(vultr_stack)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: str(r.props.get("port")) == port)
    rule.props.update(subnet="0.0.0.0", subnetSize=0)
    assert list(violations(broken)) == ["no-world-spamd-sync-or-bgp"]


def test_backup_exposing_submission_is_caught(vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    rule = _find(broken, mailsite_policies.FIREWALL_RULE, lambda r: r.name.startswith("mail-firewall-mx2-smtp-"))
    rule.props["port"] = "587"
    assert list(violations(broken)) == ["backups-mta-only"]


def test_instance_not_from_a_baked_image_is_caught(vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    instance = _find(broken, mailsite_policies.INSTANCE)
    del instance.props["snapshotId"]
    instance.props["osId"] = 2284
    assert list(violations(broken)) == ["baked-images-only"]


def test_key_outside_a_secret_is_caught(vultr_stack):
    broken = copy.deepcopy(vultr_stack)
    bake = _find(broken, mailsite_policies.DYNAMIC, lambda r: "queueKey" in r.props)
    bake.opts.additional_secret_outputs = ["tree", "spamdSyncKey"]
    assert violations(broken) == {"queue-keys-secret": [f"{bake.name}: queueKey carries a key but is not a secret"]}
    broken = copy.deepcopy(vultr_stack)
    _find(broken, mailsite_policies.INSTANCE).props["userData"] = "queue encryption " + "ab" * 16
    assert list(violations(broken)) == ["queue-keys-secret"]
