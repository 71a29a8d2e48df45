"""Replacing one host's VM through the Automation API, and nothing else.

`pulumi up` applies every pending change of the stack: run from an operator's machine with
another Packer version (part of every image's identity), a key rotation would rebuild every host.
So the rotation previews first, refuses when anything but that host's resources (and what
follows from them) would change, and then runs an `up` targeted at them, with the policy pack,
one step at a time. The decision is a pure function of the previews' engine events; the
Automation API calls stay in `automation_replace`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .errors import MailsiteError
from .model import Host
from .targets import TARGETS

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent, StepEventMetadata

# The MailSite component's name in the program (__main__.py); every host's resources are named
# from it, and read back here from a preview's URNs.
SITE = "mail"


MX_HOST = "mailsite:index:MxHost"  # the type token of components.mx_host.MxHost


def host_resource(site: str, host: str) -> str:
    """The MxHost component: the VM and its reverse DNS are its children."""
    return f"{site}-{host}"


def vm_of(mx_host: str, target: str) -> str:
    """The VM itself (a Vultr Instance, a libvirt Domain), a child of the MxHost named `mx_host`."""
    return f"{mx_host}-{TARGETS[target].vm_suffix}"


def vm_resource(site: str, host: str, target: str) -> str:
    return vm_of(host_resource(site, host), target)


def data_volume_resource(site: str) -> str:
    """The DataVolume component: named by the role it serves, never by a host, so that renaming
    or replacing the primary never makes the engine delete it and make a new, empty one."""
    return f"{site}-primary-data"


def image_resource(site: str, host: str) -> str:
    """The HostImage component: the bake and its upload are its children."""
    return f"{site}-{host}-image"


# Steps that change nothing; anything else (an update, a create, a delete, a replacement) does.
UNCHANGED = {"same", "read", "refresh"}
REPLACING = {"replace", "create-replacement", "delete-replaced"}


class ReplacementRefused(MailsiteError):
    """The rotation must not run `up`; one line naming what else would change."""


def steps_of(events: Iterable[EngineEvent]) -> list[StepEventMetadata]:
    """Each resource step a preview announced (one `resourcePreEvent` per step, unchanged ones too)."""
    return [event.resource_pre_event.metadata for event in events if event.resource_pre_event is not None]


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _parent(step: StepEventMetadata) -> str | None:
    state = step.new or step.old
    return state.parent if state is not None and state.parent else None


def host_resources(host: str, steps: list[StepEventMetadata], site: str = SITE) -> list[str]:
    """The URNs of a host's own resources: its MxHost and HostImage components and everything
    under them, found through the parents the preview reports."""
    roots = {host_resource(site, host), image_resource(site, host)}
    parents = {step.urn: _parent(step) for step in steps}

    def owned(urn: str | None) -> bool:
        while urn is not None:
            if _name(urn) in roots:
                return True
            urn = parents.get(urn)
        return False

    return sorted(urn for urn in parents if owned(urn))


def _changes(steps: list[StepEventMetadata]) -> dict[str, str]:
    changes: dict[str, str] = {}
    for step in steps:
        op = str(getattr(step.op, "value", step.op))
        if op not in UNCHANGED:
            # A replacement is announced as several steps; "replace" says it best.
            changes[step.urn] = "replace" if op in REPLACING else changes.get(step.urn, op)
    return changes


def _hosts(steps: list[StepEventMetadata], site: str) -> set[str]:
    """The hosts the preview holds, by their MxHost components (whether or not the stack file still names them)."""
    prefix = f"{site}-"
    return {_name(step.urn)[len(prefix):] for step in steps if step.type == MX_HOST and _name(step.urn).startswith(prefix)}


@dataclass(frozen=True)
class Decision:
    targets: list[str]  # for `up --target ... --target-dependents`
    refusal: str | None = None


def decide_replacement(host: str, everything: list[StepEventMetadata], scoped: list[StepEventMetadata],
                       site: str = SITE) -> Decision:
    """May the rotation replace `host`? `everything`: the steps of a plain preview; `scoped`: of a
    preview targeted at the host's resources with their dependents (a replaced VM's new address
    reaches DNS records: those belong to this replacement, other hosts' changes do not)."""
    targets = host_resources(host, everything, site)
    # A stack never deployed: the preview names the host's resources, each to be created.
    if not targets or all(_changes(everything).get(urn) == "create" for urn in targets):
        return Decision([], f"not replacing {host}: the stack holds none of its resources; run `pulumi up` for the site first")
    scoped_changes = _changes(scoped)
    # The VMs form a chain (each depends on the one before), so the targeted preview also takes
    # in the VMs after this host's: a change it shows there is another host's, not this one's.
    others_own = {urn for other in _hosts(everything, site) if other != host for urn in host_resources(other, everything, site)}
    others = {urn: op for urn, op in {**scoped_changes, **_changes(everything)}.items()
              if urn not in targets and (urn not in scoped_changes or urn in others_own)}
    if others:
        listing = ", ".join(f"{_name(urn)} ({op})" for urn, op in sorted(others.items(), key=lambda item: _name(item[0])))
        return Decision(targets, f"not replacing {host}: `pulumi up` would also change {len(others)} other resource(s): {listing}; "
                                 "apply or undo those first (another Packer version changes every image), then run this again")
    if not any(scoped_changes.get(urn) == "replace" for urn in targets):
        return Decision(targets, f"not replacing {host}: the preview replaces none of its resources; "
                                 "its image does not carry the new key (is the pending key readable here?)")
    return Decision(targets)


def pulumi_failure(output: str) -> str:
    """One line from a failed `pulumi` run's output (the Automation API's CommandError holds
    the whole of it): its first `error:` line, which names the resource, the policy or the hook."""
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("error:")]
    return errors[0] if errors else "pulumi failed; run `pulumi preview` for the details"


def automation_replace(stack: str, work_dir: str) -> Callable[[Host], bool] | None:
    """Replace one host with the Automation API where the Pulumi CLI exists; None where it does not."""
    if shutil.which("pulumi") is None:
        return None
    from pulumi import automation

    policy = [str(Path(work_dir) / "policy")]

    def replace(host: Host) -> bool:
        try:
            return _replace(host)
        except automation.errors.CommandError as error:
            raise ReplacementRefused(f"{host.name}: {pulumi_failure(str(error))}") from None

    def _replace(host: Host) -> bool:
        selected = automation.select_stack(stack_name=stack, work_dir=work_dir)
        everything: list[EngineEvent] = []
        scoped: list[EngineEvent] = []
        selected.preview(policy_packs=policy, on_event=everything.append)
        targets = host_resources(host.name, steps_of(everything))
        if targets:
            selected.preview(policy_packs=policy, target=targets, target_dependents=True, on_event=scoped.append)
        decision = decide_replacement(host.name, steps_of(everything), steps_of(scoped))
        if decision.refusal:
            raise ReplacementRefused(decision.refusal)
        # One at a time: the drain hook of each VM that goes runs before the next step starts.
        result = selected.up(policy_packs=policy, target=decision.targets, target_dependents=True, parallel=1, on_output=print)
        return result.summary.result == "succeeded"

    return replace
