"""Queue-key rotation and the drain before a VM goes, against real OpenSMTPD in the lab: nothing
queued is lost, nothing delivered twice, and a host that cannot drain keeps its key.

These need root (network namespaces, mounts); CI runs as root and never skips them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import pulumi
import pytest

from components.mx_host import DRAIN_HOOK, drain_callback
from mailsite.config import stack_name
from mailsite.departure import DECOMMISSION, Departure, DepartureRefused, departing, drain_departing
from mailsite.drain import drain
from mailsite.facts import answers_smtp, key_versions, queue, queued_envelopes, smtp_status
from mailsite.hosts import CommandControl, HostControl, lab_control
from mailsite.lab import mail
from mailsite.lab.lab import Lab
from mailsite.lab.procs import LabError, wait_until
from mailsite.lab.site import host_environment, render_lab_host
from mailsite.rotation import rollout_spamd_key, rotate_host, rotation_order
from mailsite.secrets import CURRENT, PENDING, PREVIOUS, host_label, host_store, queue_key_id, site_secrets, spamd_sync_key_id
from tests.hooks import HookMonitor, Registered, call_before_delete
from tests.sites import EXAMPLE, example_settings, site_of

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)

USER = "alice@example.org"
# The lab runs the example stack (tests/conftest.py), under the stack name its file gives.
STACK = stack_name(EXAMPLE)


def control(lab: Lab, host: str) -> CommandControl:
    """smtpctl and files inside the lab host, as `ssh root@host` reaches them on a real one."""
    return lab_control(lab.holder(host).pid)


def controls(lab: Lab) -> dict[str, CommandControl]:
    return {host.name: control(lab, host.name) for host in lab.plan.site.hosts}


def by_mx_name(lab: Lab, forget_in: Path | None = None):
    """How the drain hook reaches a host: by the MX name in the VM's state (`ssh root@NAME` on a
    real site). With `forget_in`, a replaced host's key is dropped from that known-hosts file by
    the real ssh-keygen, as on a real site."""
    names = {host.mx_name: host.name for host in lab.plan.site.hosts}

    def reach(mx_name: str) -> CommandControl:
        forget = ["ssh-keygen", "-R", mx_name, "-f", str(forget_in)] if forget_in else None
        return lab_control(lab.holder(names[mx_name]).pid, forget=forget)

    return reach


def replace_in_lab(lab: Lab):
    """What `pulumi up` does to a re-keyed host, done to the lab host: its smtpd restarts with the
    key the new image would carry (the pending one) and an empty queue."""

    def replace(host) -> bool:
        # What the engine runs before it deletes the old VM: the drain hook, on a host rotation
        # has already paused and drained.
        site, stack = lab.plan.site, STACK
        drain_departing(site, departing(site, stack, {"name": host.mx_name}, None, None), by_mx_name(lab), 60, poll=0.5)
        assert mail.queue(lab, host.name) == [], "a host is replaced only once drained"
        # The new image: the host's files as they render now (the new key, its version).
        # (The lab's own files, its resolver and accounts, stay the lab's.)
        secrets = site_secrets(lab.plan.site, STACK, lab.dir)[host.name]
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
        return lab.run_in(lab.plan.internet.name, argv, timeout=seconds * 4).returncode == 0
    except LabError:
        return False


def _marker() -> str:
    return f"rotation-{uuid.uuid4().hex[:12]}"


def test_rotation_order_is_backups_worst_first_then_primary():
    site = site_of(example_settings())
    assert [h.name for h in rotation_order(site)] == ["mx3", "mx2", "mx1"]


def test_lab_host_is_read_as_a_real_one_through_the_same_control(lab):
    """What rotation and doctor read on a host (smtpd's state, its queue, the key versions its
    image carries), read from a lab host through nsenter as ssh reads it on a real one."""
    stack, site = STACK, lab.plan.site
    secrets = site_secrets(site, stack, lab.dir)
    for host in site.hosts:
        reached = control(lab, host.name)
        assert isinstance(reached, HostControl) and reached.reachable()
        assert answers_smtp(reached), f"{host.name}: {lab.run_in(host.name, ['smtpctl', 'show', 'status'])}"
        assert "SMTP running" in smtp_status(reached)
        # The primary's image also names the DKIM key it signs with, a domain's a line.
        assert key_versions(reached) == {"queue-key": secrets[host.name].queue_key_version,
                                         "spamd-sync-key": secrets[host.name].spamd_sync_key_version} | {
            f"dkim-{key.domain}": f"{key.selector}/{key.fingerprint}" for key in secrets[host.name].dkim_keys}
    marker = _queued_for_the_primary(lab, "mx3")
    try:
        held = queue(control(lab, "mx3"))
        direct = queued_envelopes("\n".join(mail.queue(lab, "mx3")))
        # The same envelope (id, type, sender, recipient), whatever its retry state did between the two reads.
        assert len(held) == 1 and USER in held[0] and [e.split("|")[:6] for e in held] == [e.split("|")[:6] for e in direct]
    finally:
        assert mail.flush(lab, "mx3", lambda: len(mail.delivered(lab, marker)) == 1, 60)
    # A lab host that is gone answers as an unreachable real one does: no shell, no smtpd, no versions.
    gone = CommandControl(["false"])
    assert not gone.reachable() and not answers_smtp(gone) and key_versions(gone) == {}


def test_undeliverable_queue_is_not_rotated_and_loses_nothing(lab):
    store, stack = host_store(lab.plan.site, lab.dir), STACK
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
        replacement = departing(site, stack, {"name": "mx2.example.org"}, None, None)
        with pytest.raises(DepartureRefused, match="not taking mx2 down while mx1 takes no mail"):
            drain_departing(site, replacement, by_mx_name(lab), 0, peer_wait=1, poll=0.5)
        # A decommission does not wait for its peers, and still refuses to lose what is queued.
        with pytest.raises(DepartureRefused, match="mx2 still holds 1 message"):
            drain_departing(site, Departure("mx2.example.org", "mx2", "decommission"), by_mx_name(lab), 0, poll=0.5)
        assert answers_smtp(control(lab, "mx2")), "smtp resumed after a failed drain"
        assert store.read(key_id, CURRENT).version == before and store.read(key_id, PENDING) is None
    finally:
        lab.start_daemon("mx1", "smtpd")
        assert wait_until(lambda: lab.smtpd_listening("mx1"), 15)
    assert mail.flush(lab, "mx2", lambda: len(mail.delivered(lab, marker)) == 1, 60)
    assert len(mail.delivered(lab, marker)) == 1, "delivered exactly once after all"


def test_drainable_host_drains_rotates_and_mail_during_rotation_arrives_once(lab):
    store, stack, site = host_store(lab.plan.site, lab.dir), STACK, lab.plan.site
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
    store, stack, site = host_store(lab.plan.site, lab.dir), STACK, lab.plan.site
    key_id = queue_key_id(stack, "mx3")
    before = store.read(key_id, CURRENT).version
    step = rotate_host(site, stack, site.host("mx3"), store, controls(lab), lambda host: False, drain_timeout=30, poll=0.5)
    assert step.outcome == "stopped" and "rolled back" in step.message
    assert store.read(key_id, PENDING) is None and store.read(key_id, CURRENT).version == before
    assert answers_smtp(control(lab, "mx3")), "smtp resumed"


def test_spamd_key_rollout_goes_one_host_at_a_time_then_becomes_current(lab):
    store, stack, site = host_store(lab.plan.site, lab.dir), STACK, lab.plan.site
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


# The drain hook as the engine runs it: registered by the program (here under Pulumi's mocks),
# called over the program's callback server with the VM's old state, for a replacement, a host
# gone from the stack file, and a destroy.


class _NoCloud(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return [f"{args.name}-id", args.inputs]

    def call(self, args):
        return {}


def _domain_state(mx_name: str) -> dict:
    """A libvirt domain's inputs as state holds them (the hook is handed these, and its outputs)."""
    return {"name": mx_name, "memory": 1024, "vcpu": 1, "autostart": True, "networkInterfaces": [{"networkId": "net-id"}]}


async def _engine(stack: str, site, reach, peer_wait: float, script):
    """Register the site's drain hook as the program does, then run `script(delete)`, where
    `delete(mx_name)` calls the hook as the engine's DeleteStep does and returns its error."""
    registered = Registered()
    mocks = _NoCloud()
    pulumi.runtime.set_mocks(mocks, project="mailsite", stack=stack, preview=False, monitor=HookMonitor(mocks, registered))
    hook = pulumi.ResourceHook(DRAIN_HOOK, drain_callback(site, stack, reach, peer_wait=peer_wait, poll=0.5))
    await hook._registered

    async def delete(mx_name: str) -> str:
        host = mx_name.split(".")[0]
        urn = f"urn:pulumi:{stack}::mailsite::mailsite:index:MailSite$mailsite:index:MxHost$libvirt:index/domain:Domain::mail-{host}-vm"
        return await call_before_delete(registered.hooks[DRAIN_HOOK], urn, f"{mx_name}-uuid", _domain_state(mx_name), _domain_state(mx_name))

    try:
        return await script(delete)
    finally:
        from pulumi.runtime.settings import _shutdown_callbacks

        await _shutdown_callbacks()


def _queued_for_the_primary(lab: Lab, via: str) -> str:
    """A message waiting on `via` for the primary: sent while the primary was away."""
    marker = _marker()
    lab.stop_daemon("mx1", "smtpd")
    try:
        assert mail.send(lab, via, USER, marker).accepted
        assert wait_until(lambda: len(mail.queue(lab, via)) == 1, 15)
    finally:
        lab.start_daemon("mx1", "smtpd")
        assert wait_until(lambda: lab.smtpd_listening("mx1"), 15)
    return marker


def _restart_smtpd(lab: Lab, *hosts: str) -> None:
    """Back to a running, unpaused smtpd, as a new VM would be."""
    for host in hosts:
        lab.stop_daemon(host, "smtpd")
        lab.start_daemon(host, "smtpd")
    assert wait_until(lambda: all(lab.smtpd_listening(h) for h in hosts), 15)


def test_host_removed_from_the_stack_is_drained_before_its_vm_goes(lab):
    stack = STACK
    settings = example_settings()
    settings["hosts"] = [h for h in settings["hosts"] if h["name"] != "mx3"]
    without_mx3 = site_of(settings)
    marker = _queued_for_the_primary(lab, "mx3")

    async def script(delete):
        return await delete("mx3.example.org")

    try:
        error = asyncio.run(_engine(stack, without_mx3, by_mx_name(lab), 60, script))
        assert error == ""
        # Drained: handed to the primary, whose smtpd (rspamd, then Dovecot's LMTP) stores it a moment later.
        assert mail.queue(lab, "mx3") == [] and wait_until(lambda: len(mail.delivered(lab, marker)) == 1, 30), "drained before the VM goes"
        assert "SMTP paused" in smtp_status(control(lab, "mx3")), "it takes no mail while its VM is deleted"
    finally:
        _restart_smtpd(lab, "mx3")


def test_destroying_the_site_on_purpose_drains_each_host_and_goes_on(lab, monkeypatch):
    """A destroy deletes the VMs along the chain backwards, backups first. A deleted VM answers
    nothing (no shell, no SMTP), like a host not created yet: the hooks go on past it, each host
    drained first. The operator's word is needed where a peer still runs but takes no mail."""
    stack, site = STACK, lab.plan.site
    marker = _queued_for_the_primary(lab, "mx2")
    monkeypatch.delenv(DECOMMISSION, raising=False)
    deleted: set[str] = set()
    lab_hosts = by_mx_name(lab)

    def reach(mx_name: str) -> CommandControl:
        return CommandControl(["false"]) if mx_name in deleted else lab_hosts(mx_name)

    async def script(delete):
        async def gone(host: str) -> None:
            await asyncio.to_thread(lab.stop_daemon, host, "smtpd")
            deleted.add(f"{host}.example.org")

        errors = {}
        # mx1's smtpd is down but its VM runs: not a host going, a host out.
        await asyncio.to_thread(lab.stop_daemon, "mx1", "smtpd")
        errors["mx3, mx1 out"] = await delete("mx3.example.org")
        await asyncio.to_thread(lab.start_daemon, "mx1", "smtpd")
        await asyncio.to_thread(wait_until, lambda: lab.smtpd_listening("mx1"), 15)
        for host in ("mx3", "mx2", "mx1"):
            errors[host] = await delete(f"{host}.example.org")
            if errors[host]:
                break
            await gone(host)
        return errors

    try:
        errors = asyncio.run(_engine(stack, site, reach, 2, script))
    finally:
        _restart_smtpd(lab, "mx1", "mx2", "mx3")
    assert "not taking mx3 down while mx1 takes no mail" in errors["mx3, mx1 out"]
    assert f"{DECOMMISSION}=<stack>" in errors["mx3, mx1 out"]
    assert (errors["mx3"], errors["mx2"], errors["mx1"]) == ("", "", ""), errors
    # Drained: handed to the primary, which stores it a moment later (after rspamd and LMTP).
    assert wait_until(lambda: len(mail.delivered(lab, marker)) == 1, 30), "mx2 drained to the primary before it went"


def test_a_destroy_past_a_peer_that_runs_but_takes_no_mail_needs_the_operators_word(lab, monkeypatch):
    stack, site = STACK, lab.plan.site
    monkeypatch.delenv(DECOMMISSION, raising=False)

    async def script(delete):
        refused = await delete("mx3.example.org")
        monkeypatch.setenv(DECOMMISSION, stack)
        return refused, await delete("mx3.example.org")

    lab.stop_daemon("mx2", "smtpd")
    try:
        refused, declared = asyncio.run(_engine(stack, site, by_mx_name(lab), 1, script))
    finally:
        _restart_smtpd(lab, "mx2", "mx3")
    assert "not taking mx3 down while mx2 takes no mail" in refused
    assert declared == "", "declared a decommission: mx3 drained (to the primary) and let go"


def test_replacing_every_host_goes_host_by_host_through_booting_peers_and_new_host_keys(lab, tmp_path):
    stack, site = STACK, lab.plan.site
    order = [host.name for host in reversed(rotation_order(site))]
    assert order == ["mx1", "mx2", "mx3"], "the chain of VMs: the primary first"
    known = tmp_path / "known_hosts"
    lines = []
    for host in site.hosts:
        key = tmp_path / host.name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        lines.append(f"{host.mx_name} {Path(f'{key}.pub').read_text().split()[0]} {Path(f'{key}.pub').read_text().split()[1]}")
    known.write_text("\n".join(lines) + "\n")
    marker = _marker()
    turns: list[float] = []

    async def ticker():
        while True:
            turns.append(time.monotonic())
            await asyncio.sleep(0.05)

    async def boot(host: str) -> None:
        # A new VM answers SMTP only once it has booted.
        await asyncio.sleep(3)
        await asyncio.to_thread(lab.start_daemon, host, "smtpd")

    async def script(delete):
        ticking = asyncio.create_task(ticker())
        errors, booting, waited = {}, [], {}
        for host in order:
            started = time.monotonic()
            errors[host] = await delete(f"{host}.example.org")
            waited[host] = time.monotonic() - started
            if errors[host]:
                break
            await asyncio.to_thread(lab.stop_daemon, host, "smtpd")  # the old VM is deleted
            if host == "mx1":
                sent = await asyncio.to_thread(mail.send, lab, "mx2", USER, marker)
                assert sent.accepted, "the backups take mail while the primary is replaced"
            booting.append(asyncio.create_task(boot(host)))
        await asyncio.gather(*booting)
        ticking.cancel()
        return errors, waited

    try:
        errors, waited = asyncio.run(_engine(stack, site, by_mx_name(lab, forget_in=known), 60, script))
    finally:
        _restart_smtpd(lab, "mx1", "mx2", "mx3")
    assert errors == {"mx1": "", "mx2": "", "mx3": ""}
    assert waited["mx2"] >= 2, "mx2's hook waited for the primary's new VM to boot"
    # The program's event loop kept turning while the hook waited and drained (in a thread).
    gaps = [later - earlier for earlier, later in zip(turns, turns[1:])]
    assert turns and max(gaps) < 1, f"the event loop stood still for {max(gaps):.1f} s"
    # Each replaced host's old key is forgotten: its new VM's key is learned, not refused.
    for host in site.hosts:
        assert subprocess.run(["ssh-keygen", "-F", host.mx_name, "-f", str(known)], capture_output=True).returncode != 0, host.name
    assert mail.flush(lab, "mx2", lambda: len(mail.delivered(lab, marker)) == 1, 30)
    assert len(mail.delivered(lab, marker)) == 1, "queued on mx2 while the primary was away, delivered once"


def test_adding_a_host_replaces_its_peers_before_the_new_vm_exists(lab):
    """A new host changes its peers' images (spamd sync peers): they are replaced before its own
    VM comes, later in the chain. Its silence then is no MX out; a peer that runs but takes no
    mail still is."""
    stack = STACK
    settings = example_settings()
    settings["hosts"].append({"name": "mx4", "role": "backup", "preference": 40, "fqdn": "mx4.example.org",
                              "ipv4": "192.0.2.40", "ipv6": "2001:db8::40", "egressInterface": "vmx0"})
    with_mx4 = site_of(settings)
    lab_hosts = by_mx_name(lab)

    def reach(mx_name: str) -> CommandControl:
        # No VM at mx4 yet: nothing answers there (as ssh to an address no VM holds).
        return CommandControl(["false"]) if mx_name == "mx4.example.org" else lab_hosts(mx_name)

    mx1 = departing(with_mx4, stack, {"name": "mx1.example.org"}, None, None)
    try:
        lab.stop_daemon("mx3", "smtpd")
        with pytest.raises(DepartureRefused, match="not taking mx1 down while mx3 takes no mail"):
            drain_departing(with_mx4, mx1, reach, 30, peer_wait=2, poll=0.5)
        lab.start_daemon("mx3", "smtpd")
        assert wait_until(lambda: lab.smtpd_listening("mx3"), 15)
        started = time.monotonic()
        drain_departing(with_mx4, mx1, reach, 30, peer_wait=20, poll=0.5)
        assert time.monotonic() - started < 10, "no wait for a host whose VM this run creates later"
    finally:
        _restart_smtpd(lab, "mx1", "mx3")
