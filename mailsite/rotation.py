"""Rotating a host's queue key without losing a queued message.

OpenSMTPD has one key slot: an envelope written under the old key cannot be read under the new
one and is skipped after the restart. So a host is drained first (no new mail in, everything
queued delivered), then gets its new key in a new image; the new key stays AWSPENDING until the
new host answers SMTP, and only then becomes AWSCURRENT. The labels say where a rotation stands,
so running the command again goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from .drain import drain, resume_smtp
from .facts import answers_smtp, envelope_recipient, key_versions
from .hosts import HostControl
from .keys import new_key
from .model import Host, Site
from .secrets import PENDING, SecretStore, host_label, queue_key_id, spamd_sync_key_id


def rotation_order(site: Site, only: str | None = None) -> list[Host]:
    """The site's replacement order (backups first, the primary last), or just the one host."""
    return [h for h in site.replacement_order if only is None or h.name == only]


@dataclass
class Step:
    host: str
    outcome: str  # rotated | stopped | waiting
    message: str


def _cycle(host: Host, stack: str, controls: dict[str, HostControl], replace: Callable[[Host], bool] | None,
           drain_timeout: float, poll: float, started: bool, start: Callable[[], object], undo: Callable[[], object],
           finish: Callable[[], object], what: str, key: str, version: Callable[[], str]) -> Step:
    """One host through drain -> new secret -> replacement -> verification, from where it stands."""
    control = controls[host.name]
    if not started:
        unreachable = [name for name, other in controls.items() if name != host.name and not answers_smtp(other)]
        if unreachable:
            return Step(host.name, "stopped", f"not rotating {host.name}: {', '.join(unreachable)} unreachable, and mail needs somewhere to go")
        drained = drain(control, drain_timeout, poll)
        if not drained.drained:
            listing = "; ".join(line.split("|")[0] + " to " + envelope_recipient(line) for line in drained.remaining)
            return Step(host.name, "stopped", f"{host.name} did not drain within {drain_timeout:.0f} s; smtp resumed, key unchanged; "
                                              f"{len(drained.remaining)} message(s) remain: {listing}")
        start()
        if replace is None:
            return Step(host.name, "waiting", f"{host.name} drained; its image now carries the new {what}. Run `pulumi preview --stack {stack}`: "
                                              f"if it changes only {host.name}'s resources, `pulumi up --stack {stack}`; then this command "
                                              "again to verify and go on")
        try:
            replaced, reason = replace(host), "replacement did not finish"
        except Exception as error:  # the replacement's own words, whatever failed
            replaced, reason = False, str(error).splitlines()[0] if str(error) else type(error).__name__
        if not replaced:
            # Nothing runs with the new secret yet: take it back, take mail again.
            undo()
            resume_smtp(control)
            return Step(host.name, "stopped", f"{host.name}: {reason}; rolled back (new {what} withdrawn, smtp resumed)")
        control.replaced()
    # The host itself says which key version its image carries: nothing is promoted on faith.
    running = key_versions(control).get(key)
    if running is None:  # a new VM answers with a new ssh host key: forget the old one, ask again
        control.replaced()
        running = key_versions(control).get(key)
    if running != version():
        return Step(host.name, "waiting", f"{host.name} does not run the new {what} yet (it runs version {running or 'unknown'}). "
                                          f"Run `pulumi up --stack {stack}`, then this command again")
    if not answers_smtp(control):
        return Step(host.name, "stopped", f"{host.name} runs with the new {what} but does not take mail; left pending. "
                                          "Fix the host and run this command again")
    finish()
    return Step(host.name, "rotated", f"{host.name}: runs with the new {what}")


def rotate_host(
    site: Site,
    stack: str,
    host: Host,
    store: SecretStore,
    controls: dict[str, HostControl],
    replace: Callable[[Host], bool] | None,
    drain_timeout: float,
    poll: float = 1.0,
) -> Step:
    """One host's queue key, from wherever its labels say it stands."""
    key_id = queue_key_id(stack, host.name)

    def pending_version() -> str:
        pending = store.read(key_id, PENDING)
        assert pending is not None, "a started rotation has its pending key"
        return pending.version

    step = _cycle(
        host, stack, controls, replace, drain_timeout, poll,
        started=store.read(key_id, PENDING) is not None,
        start=lambda: store.put_pending(key_id, new_key()),
        undo=lambda: store.discard_pending(key_id),
        finish=lambda: store.promote(key_id),
        what="queue key",
        key="queue-key",
        version=pending_version,
    )
    if step.outcome == "rotated":
        step.message += "; it is current, the old one kept as AWSPREVIOUS"
    return step


def rollout_spamd_key(site: Site, stack: str, store: SecretStore, controls: dict[str, HostControl],
                      replace: Callable[[Host], bool] | None, drain_timeout: float, poll: float = 1.0,
                      report: Callable[[Step], None] = print) -> bool:
    """A new site-wide spamd sync key, one host at a time in rotation order: each host's image
    takes the pending version (a label of that host's on it), and once every host runs it, it
    becomes current. Until then, rolled and unrolled hosts cannot read each other's sync messages:
    greylisting goes on, each host on its own."""
    sync_id = spamd_sync_key_id(stack)
    pending = store.read(sync_id, PENDING) or store.put_pending(sync_id, new_key())
    for host in rotation_order(site):
        label = host_label(host.name)
        on_host = store.read(sync_id, label)
        step = _cycle(
            host, stack, controls, replace, drain_timeout, poll,
            started=on_host is not None and on_host.version == pending.version,
            start=partial(store.label, sync_id, label, pending.version),
            undo=partial(store.unlabel, sync_id, label),
            finish=lambda: None,
            what="spamd sync key",
            key="spamd-sync-key",
            version=lambda: pending.version,
        )
        report(step)
        if step.outcome != "rotated":
            return False
    store.promote(sync_id)
    for host in site.hosts:
        store.unlabel(sync_id, host_label(host.name))
    report(Step("site", "rotated", "every host runs the new spamd sync key; it is current"))
    return True


def rotate_site(site: Site, stack: str, store: SecretStore, controls: dict[str, HostControl],
                replace: Callable[[Host], bool] | None, drain_timeout: float, only: str | None = None,
                report: Callable[[Step], None] = print) -> bool:
    """Every host (or one), one at a time; stops at the first host that is not done."""
    for host in rotation_order(site, only):
        step = rotate_host(site, stack, host, store, controls, replace, drain_timeout)
        report(step)
        if step.outcome != "rotated":
            return False
    return True
