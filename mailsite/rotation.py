"""Rotating a host's queue key without losing a queued message.

OpenSMTPD has one key slot: an envelope written under the old key cannot be read under the new
one and is skipped after the restart. So a host is drained first (no new mail in, everything
queued delivered), then gets its new key in a new image; the new key stays AWSPENDING until the
new host answers SMTP, and only then becomes AWSCURRENT. The labels say where a rotation stands,
so running the command again goes on from there.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from .keys import new_key
from .model import Host, Site
from .replacement import automation_replace  # noqa: F401  (the command-line tool's import)
from .secrets import PENDING, SecretStore, host_label, queue_key_id, spamd_sync_key_id


class HostControl(Protocol):
    """How rotation reaches one MX: its smtpctl, and the key versions its image carries."""

    def smtpctl(self, *arguments: str) -> str: ...

    def answers_smtp(self) -> bool: ...

    def reachable(self) -> bool: ...

    def key_versions(self) -> dict[str, str]: ...

    def replaced(self) -> None:
        """The host is a new VM now (a new ssh host key)."""


class ControlError(Exception):
    """A host could not be reached or refused a command; one line."""


KEY_VERSIONS = "/etc/mailsite/key-versions"


@dataclass
class CommandControl:
    """smtpctl through a command prefix: `ssh root@mx2.example.org` for a real host, an
    `nsenter` into a lab host's namespaces for the lab."""

    prefix: list[str]
    timeout: float = 60
    forget: list[str] | None = None  # run once the host is a new VM (drop its old ssh host key)

    def _run(self, *command: str) -> str:
        try:
            result = subprocess.run([*self.prefix, *command], capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise ControlError(f"`{' '.join(command)}` did not answer within {self.timeout:.0f} s") from None
        if result.returncode != 0:
            raise ControlError(f"`{' '.join(command)}` failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def smtpctl(self, *arguments: str) -> str:
        return self._run("smtpctl", *arguments)

    def answers_smtp(self) -> bool:
        """smtpd runs and takes mail, as smtpd itself says. Not a TCP probe of port 25: from
        outside, pf hands unknown IPv4 clients to spamd, which answers whether smtpd runs or not."""
        try:
            return "SMTP running" in self.smtpctl("show", "status")
        except ControlError:
            return False

    def reachable(self) -> bool:
        """A shell answers at all (the VM exists and runs), whatever smtpd does."""
        try:
            self._run("true")
            return True
        except ControlError:
            return False

    def replaced(self) -> None:
        if self.forget:
            subprocess.run(self.forget, capture_output=True, timeout=30)

    def key_versions(self) -> dict[str, str]:
        try:
            text = self._run("cat", KEY_VERSIONS)
        except ControlError:
            return {}
        return dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)


KNOWN_HOSTS = Path("~/.ssh/mailsite_known_hosts").expanduser()


def ssh_to(mx_name: str) -> CommandControl:
    """ssh as root, trusting a host key on first use and keeping the site's keys apart: every
    replacement brings a new VM and a new host key, forgotten here once the old VM is gone. By MX
    name, because a host removed from the stack file is still drained before its VM goes."""
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={KNOWN_HOSTS}"]
    return CommandControl(["ssh", *options, f"root@{mx_name}"], forget=["ssh-keygen", "-R", mx_name, "-f", str(KNOWN_HOSTS)])


def ssh_control(host: Host) -> CommandControl:
    return ssh_to(host.mx_name)


_ENVELOPE = re.compile(r"^([0-9a-f]{16})\|")


def queued_envelopes(show_queue: str) -> list[str]:
    """`smtpctl show queue` lines are `evpid|type|...`; one per envelope still queued."""
    return [line for line in show_queue.splitlines() if _ENVELOPE.match(line)]


@dataclass
class Drained:
    drained: bool
    remaining: list[str] = field(default_factory=list)


def drain(control: HostControl, timeout: float, poll: float = 1.0, clock: Callable[[], float] = time.monotonic) -> Drained:
    """Stop taking mail (other MXes take it meanwhile), deliver everything queued, wait until the
    queue is empty. On timeout smtp is resumed and the envelopes left are returned: no key change."""
    # A host paused already (by a rotation, before its replacement) stays paused: smtpctl refuses
    # a second pause.
    if "SMTP paused" not in control.smtpctl("show", "status"):
        control.smtpctl("pause", "smtp")
    deadline = clock() + timeout
    try:
        while True:
            control.smtpctl("schedule", "all")
            remaining = queued_envelopes(control.smtpctl("show", "queue"))
            if not remaining:
                return Drained(True)
            if clock() >= deadline:
                control.smtpctl("resume", "smtp")
                return Drained(False, remaining)
            time.sleep(poll)
    except BaseException:
        # Whatever went wrong, the host goes back to taking mail as before.
        try:
            control.smtpctl("resume", "smtp")
        except ControlError:
            pass
        raise


def rotation_order(site: Site, only: str | None = None) -> list[Host]:
    """Backups first, worst preference first, the primary last: while a host is out, mail has
    a better MX to go to."""
    hosts = sorted(site.backups, key=lambda h: -h.preference) + [site.primary]
    return [h for h in hosts if only is None or h.name == only]


@dataclass
class Step:
    host: str
    outcome: str  # rotated | stopped | waiting
    message: str


def _cycle(host: Host, stack: str, controls: dict[str, HostControl], replace: Callable[[Host], bool] | None,
           drain_timeout: float, poll: float, started: bool, start: Callable[[], None], undo: Callable[[], None],
           finish: Callable[[], None], what: str, key: str, version: Callable[[], str]) -> Step:
    """One host through drain -> new secret -> replacement -> verification, from where it stands."""
    control = controls[host.name]
    if not started:
        unreachable = [name for name, other in controls.items() if name != host.name and not other.answers_smtp()]
        if unreachable:
            return Step(host.name, "stopped", f"not rotating {host.name}: {', '.join(unreachable)} unreachable, and mail needs somewhere to go")
        drained = drain(control, drain_timeout, poll)
        if not drained.drained:
            listing = "; ".join(line.split("|")[0] + " to " + _recipient(line) for line in drained.remaining)
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
            control.smtpctl("resume", "smtp")
            return Step(host.name, "stopped", f"{host.name}: {reason}; rolled back (new {what} withdrawn, smtp resumed)")
        control.replaced()
    # The host itself says which key version its image carries: nothing is promoted on faith.
    running = control.key_versions().get(key)
    if running is None:  # a new VM answers with a new ssh host key: forget the old one, ask again
        control.replaced()
        running = control.key_versions().get(key)
    if running != version():
        return Step(host.name, "waiting", f"{host.name} does not run the new {what} yet (it runs version {running or 'unknown'}). "
                                          f"Run `pulumi up --stack {stack}`, then this command again")
    if not control.answers_smtp():
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
    step = _cycle(
        host, stack, controls, replace, drain_timeout, poll,
        started=store.read(key_id, PENDING) is not None,
        start=lambda: store.put_pending(key_id, new_key()),
        undo=lambda: store.discard_pending(key_id),
        finish=lambda: store.promote(key_id),
        what="queue key",
        key="queue-key",
        version=lambda: store.read(key_id, PENDING).version,
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
            start=lambda label=label: store.label(sync_id, label, pending.version),
            undo=lambda label=label: store.unlabel(sync_id, label),
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


def _recipient(line: str) -> str:
    parts = line.split("|")
    return parts[5] if len(parts) > 5 else "?"


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
