"""Queue-key rotation and the drain before a VM goes, against real OpenSMTPD in the lab: nothing
queued is lost, nothing delivered twice, and a host that cannot drain keeps its key.

These need root (network namespaces, mounts); CI runs as root and never skips them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from components.mx_host import drain_before_delete
from mailsite.lab import mail
from mailsite.lab.lab import Lab
from mailsite.lab.procs import LabError, in_host, in_network, run, wait_until
from mailsite.lab.site import host_environment, render_lab_host
from mailsite.rotation import CommandControl, drain, queued_envelopes, rollout_spamd_key, rotate_host, rotation_order
from mailsite.secrets import CURRENT, PENDING, PREVIOUS, host_label, host_store, queue_key_id, site_secrets, spamd_sync_key_id
from tests.sites import example_settings, site_of

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)

USER = "alice@example.org"


def control(lab: Lab, host: str) -> CommandControl:
    """smtpctl and files inside the lab host, as `ssh root@host` reaches them on a real one."""
    return CommandControl(in_host(lab.holder(host), []), timeout=30)


def controls(lab: Lab) -> dict[str, CommandControl]:
    return {host.name: control(lab, host.name) for host in lab.plan.site.hosts}


def replace_in_lab(lab: Lab):
    """What `pulumi up` does to a re-keyed host, done to the lab host: its smtpd restarts with the
    key the new image would carry (the pending one) and an empty queue."""

    def replace(host) -> bool:
        # What the engine runs before it deletes the old VM: the drain hook, on a host rotation
        # has already paused and drained.
        peers = {h.name: control(lab, h.name) for h in lab.plan.site.hosts}
        drain_before_delete(host, control(lab, host.name), 1, peers).callback(None)
        assert mail.queue(lab, host.name) == [], "a host is replaced only once drained"
        # The new image: the host's files as they render now (the new key, its version).
        # (The lab's own files, its resolver and accounts, stay the lab's.)
        secrets = site_secrets(lab.plan.site, lab.state["stack"], lab.dir)[host.name]
        lab_own = host_environment(lab.plan, host, Path("/etc/passwd").read_text(), Path("/etc/group").read_text())
        for path, rendered in render_lab_host(lab.plan, host, secrets).items():
            target = lab.root(host.name) / path
            if path not in lab_own and target.read_text() != rendered.text:
                target.write_text(rendered.text)
        lab.stop_daemon(host.name, "smtpd")
        lab.start_daemon(host.name, "smtpd")
        return wait_until(lambda: lab.smtpd_listening(host.name), 15)

    return replace


def _accepted_within(lab: Lab, via: str, marker: str, seconds: int) -> bool:
    """A sender MTA's attempt, with an MTA's patience cut short: True only if the MX took it."""
    address = str(lab.plan.node(via).ipv4)
    argv = ["swaks", "--server", address, "--to", USER, "--from", mail.SENDER, "--header", f"Subject: {marker}",
            "--body", marker, "--timeout", str(seconds)]
    try:
        return run(in_network(lab.plan.internet.namespace, argv), timeout=seconds * 4).returncode == 0
    except LabError:
        return False


def _marker() -> str:
    return f"rotation-{uuid.uuid4().hex[:12]}"


def test_rotation_order_is_backups_worst_first_then_primary():
    site = site_of(example_settings())
    assert [h.name for h in rotation_order(site)] == ["mx3", "mx2", "mx1"]


def test_undeliverable_queue_is_not_rotated_and_loses_nothing(lab):
    store, stack = host_store(lab.plan.site, lab.dir), lab.state["stack"]
    key_id = queue_key_id(stack, "mx2")
    before = store.read(key_id, CURRENT).version
    lab.stop_daemon("mx1", "smtpd")
    marker = _marker()
    try:
        assert mail.send(lab, "mx2", USER, marker).accepted
        assert wait_until(lambda: len(mail.queue(lab, "mx2")) == 1, 15)

        # With the primary away, rotation refuses outright: mail would have nowhere to go.
        site = lab.plan.site
        step = rotate_host(site, stack, site.host("mx2"), store, controls(lab), replace_in_lab(lab), drain_timeout=3, poll=0.5)
        assert step.outcome == "stopped" and "mx1 unreachable" in step.message

        # The drain itself, as a VM deletion would run it: times out, resumes smtp, names what is left.
        drained = drain(control(lab, "mx2"), timeout=3, poll=0.5)
        assert not drained.drained and len(drained.remaining) == 1 and USER in drained.remaining[0]
        everyone = {h.name: control(lab, h.name) for h in site.hosts}
        with pytest.raises(RuntimeError, match="not taking mx2 down while mx1 takes no mail"):
            drain_before_delete(site.host("mx2"), control(lab, "mx2"), 0, everyone).callback(None)
        peers = {h.name: control(lab, h.name) for h in site.hosts if h.name != "mx1"}
        hook = drain_before_delete(site.host("mx2"), control(lab, "mx2"), 0, peers)
        with pytest.raises(RuntimeError, match="mx2 still holds 1 message"):
            hook.callback(None)
        assert control(lab, "mx2").answers_smtp(), "smtp resumed after a failed drain"
        assert store.read(key_id, CURRENT).version == before and store.read(key_id, PENDING) is None
    finally:
        lab.start_daemon("mx1", "smtpd")
        assert wait_until(lambda: lab.smtpd_listening("mx1"), 15)
    assert mail.flush(lab, "mx2", lambda: len(mail.delivered(lab, marker)) == 1, 60)
    assert len(mail.delivered(lab, marker)) == 1, "delivered exactly once after all"


def test_drainable_host_drains_rotates_and_mail_during_rotation_arrives_once(lab):
    store, stack, site = host_store(lab.plan.site, lab.dir), lab.state["stack"], lab.plan.site
    key_id = queue_key_id(stack, "mx2")
    before = store.read(key_id, CURRENT)
    queued_before = _marker()
    assert mail.send(lab, "mx2", USER, queued_before).accepted

    during = _marker()
    inner = replace_in_lab(lab)

    def replace(host) -> bool:
        # mx2 is drained and paused: a sender meets a temporary refusal there and, as any MTA
        # does, tries the next MX; the message must arrive once.
        assert not _accepted_within(lab, "mx2", during, seconds=5)
        assert mail.send(lab, "mx3", USER, during).accepted
        return inner(host)

    step = rotate_host(site, stack, site.host("mx2"), store, controls(lab), replace, drain_timeout=60, poll=0.5)
    assert step.outcome == "rotated", step.message
    after = store.read(key_id, CURRENT)
    assert after.version != before.version and store.read(key_id, PREVIOUS).version == before.version
    assert store.read(key_id, PENDING) is None
    assert f"queue encryption {after.value.get_secret_value()}" in (lab.root("mx2") / "etc/mail/queue-key.conf").read_text()

    assert mail.flush(lab, "mx3", lambda: len(mail.delivered(lab, during)) == 1, 60)
    after_rotation = _marker()
    assert mail.send(lab, "mx2", USER, after_rotation).accepted, "the re-keyed host takes mail again"
    assert mail.flush(lab, "mx2", lambda: len(mail.delivered(lab, after_rotation)) == 1, 60)
    for marker in (queued_before, during, after_rotation):
        assert len(mail.delivered(lab, marker)) == 1, marker
    assert queued_envelopes("\n".join(mail.queue(lab, "mx2"))) == []


def test_failed_replacement_rolls_back(lab):
    store, stack, site = host_store(lab.plan.site, lab.dir), lab.state["stack"], lab.plan.site
    key_id = queue_key_id(stack, "mx3")
    before = store.read(key_id, CURRENT).version
    step = rotate_host(site, stack, site.host("mx3"), store, controls(lab), lambda host: False, drain_timeout=30, poll=0.5)
    assert step.outcome == "stopped" and "rolled back" in step.message
    assert store.read(key_id, PENDING) is None and store.read(key_id, CURRENT).version == before
    assert control(lab, "mx3").answers_smtp(), "smtp resumed"


def test_spamd_key_rollout_goes_one_host_at_a_time_then_becomes_current(lab):
    store, stack, site = host_store(lab.plan.site, lab.dir), lab.state["stack"], lab.plan.site
    sync_id = spamd_sync_key_id(stack)
    before = store.read(sync_id, CURRENT).version
    seen: list[tuple[str, dict[str, str]]] = []

    def replace(host) -> bool:
        versions = {h: s.spamd_sync_key_version for h, s in site_secrets(site, stack, lab.dir).items()}
        seen.append((host.name, versions))
        return replace_in_lab(lab)(host)

    assert rollout_spamd_key(site, stack, store, controls(lab), replace, drain_timeout=60, poll=0.5, report=lambda step: None)
    new = store.read(sync_id, CURRENT).version
    assert new != before and store.read(sync_id, PREVIOUS).version == before
    assert [name for name, _ in seen] == ["mx3", "mx2", "mx1"]
    # At each replacement, the hosts done so far and this one carry the new key, the rest the old.
    assert [versions for _, versions in seen] == [
        {"mx1": before, "mx2": before, "mx3": new},
        {"mx1": before, "mx2": new, "mx3": new},
        {"mx1": new, "mx2": new, "mx3": new},
    ]
    assert all(store.read(sync_id, host_label(h)) is None for h in ("mx1", "mx2", "mx3"))
    keys = {(lab.root(h) / "etc/mail/spamd.key").read_text() for h in ("mx1", "mx2", "mx3")}
    assert keys == {store.read(sync_id, CURRENT).value.get_secret_value() + "\n"}
