"""Inside each MX, over its HostControl (ssh as root on a real site, nsenter in the lab: the same
commands on both): smtpd and its queue, bgpd's sessions and the bgp-spamd lists, spamd and its
sync peers, free space for the queue and the mail, the key versions the image carries against the
secrets backend's, and the certificate files.

Each fact is one bounded command (mailsite.facts parses its output); what a status means is a
pure function of the facts, tested on the lab daemons' own output. A host that does not answer
is asked once: its first check FAILs, every other one of it says "not checked" instead of
waiting out its own timeout again.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from .. import facts
from ..daemons.acme import JOB as CERTIFICATES_JOB
from ..daemons.acme import certificates
from ..daemons.basics import render_key_versions
from ..daemons.bgp_spamd_update import BLACK_LIST_FILE, BYPASS_LIST_FILE, UPDATE_JOB
from ..hosts import KNOWN_HOSTS, CommandControl, ControlError, HostControl
from ..model import MAILBOXES, STATE_MOUNT, Host, Queue
from ..results import Status
from ..secrets import site_secrets
from .core import Check
from .view import SiteView

AREA = "inside"
QUEUE = "/var/spool/smtpd"  # smtpd's queue: the path is compiled in
LISTS_DIRECTORY = str(Path(BLACK_LIST_FILE).parent)
# A backup relays what it takes at once: an envelope it still holds this long after it came, while
# the primary takes mail, waits for a retry smtpd may put off for hours (its back-off grows with
# each failed try), not for the primary.
STUCK_AFTER = timedelta(minutes=2)

Outcome = tuple[Status, str, str]


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


# What each status means: pure functions of what the commands said.

def smtpd_outcome(host: str, status: str | None, error: str = "") -> Outcome:
    """`smtpctl show status` (None: smtpctl failed, `error` its words)."""
    if status is None:
        return (Status.FAIL, f"smtpd does not answer smtpctl: {error}",
                f"start it on {host} (rcctl start smtpd); why it stopped is in /var/log/maillog")
    stopped = facts.paused(status)
    if stopped:
        what = {"MDA": "nothing is delivered into the mailboxes", "MTA": "nothing queued leaves",
                "SMTP": "no mail is taken"}
        return (Status.FAIL, "; ".join(f"{part} paused: {what.get(part, 'stopped')}" for part in stopped),
                f"on {host}: " + ", ".join(f"smtpctl resume {part.lower()}" for part in stopped)
                + (" (a drain or rotation that stopped half-way leaves smtp paused)" if "SMTP" in stopped else ""))
    said = [" ".join(line.split()) for line in status.splitlines() if line.split()[:1] in (["MDA"], ["MTA"], ["SMTP"])]
    if "SMTP running" not in said:
        # An answer that is not smtpd's (empty, a wrapper's noise) tells nothing: never a PASS.
        return (Status.WARN, f"cannot tell: `smtpctl show status` did not say SMTP running: {status.strip()[:200]!r}",
                f"run `smtpctl show status` on {host} by hand")
    return Status.PASS, "smtpd runs: " + ", ".join(said), ""


def queue_outcome(host: Host, envelopes: list[facts.Envelope], now: datetime, warn_minutes: int, queue: Queue,
                  mta_paused: bool, primary: str, primary_takes_mail: bool | None, domains: Sequence[str]) -> Outcome:
    """The queue: how much, how old, and whether it moves. `primary_takes_mail`: the primary's
    smtpd takes mail (None: cannot tell; only a backup's queue asks); `domains`: the site's, whose
    mail a backup relays to the primary (its own mail and bounces go out to the world)."""
    if not envelopes:
        return Status.PASS, "empty", ""
    oldest = min(envelopes, key=lambda envelope: envelope.created)
    age = (now - oldest.created).total_seconds()
    seen = f"{len(envelopes)} envelope(s), the oldest {_duration(age)} old (to {oldest.recipient})"
    if oldest.error:
        seen += f", its last error: {oldest.error}"
    retry = f"`smtpctl schedule all` on {host.name} tries them again now; `smtpctl show queue` shows each one's last error"
    if mta_paused:
        return (Status.FAIL, seen + "; its MTA is paused: nothing leaves",
                f"`smtpctl resume mta` on {host.name}, then `smtpctl schedule all` to send what it holds now")
    if age > queue.ttl_seconds / 2:
        held = (f"{primary}, which it waits for, takes no mail: see {primary}'s checks" if not host.is_primary
                and primary_takes_mail is False else "the next hop refuses or does not answer (the last error says which)")
        return (Status.FAIL, seen + f"; smtpd bounces it at {_duration(queue.ttl_seconds)} (queue.ttl {queue.ttl})",
                f"{held}; once it answers, {retry}")
    for_primary = [envelope.created for envelope in envelopes if envelope.recipient.rpartition("@")[2].lower() in domains]
    if not host.is_primary and primary_takes_mail and for_primary and (now - min(for_primary)) > STUCK_AFTER:
        return (Status.FAIL, seen + f"; stuck: {primary} takes mail, yet {host.name} still holds mail for it",
                f"{retry}; if it stays, the error says what stops it (the primary's certificate, pf, DNS)")
    if age > warn_minutes * 60:
        waiting = f"{primary} takes no mail: see its checks; " if not host.is_primary and primary_takes_mail is False else ""
        return Status.WARN, seen + f"; older than {warn_minutes} min (doctor.queueAgeWarnMinutes)", waiting + retry
    return Status.PASS, seen, ""


def bgp_outcome(host: str, sessions: dict[str, str], servers: list[tuple[str, str]]) -> Outcome:
    """`servers`: (address, description) of every route server in the stack."""
    down = [(address, name) for address, name in servers if sessions.get(address) != "Established"]
    if not down:
        return Status.PASS, f"{len(servers)} session(s) Established: " + ", ".join(a for a, _ in servers), ""
    said = ", ".join(f"{name} ({address}): {sessions.get(address, 'no such neighbor')}" for address, name in down)
    up = len(servers) - len(down)
    still = (f"; the lists still come from the other {up}" if up else
             "; no route server is reachable: the update job keeps the last lists it wrote")
    return (Status.FAIL, f"not Established: {said}{still}",
            f"on {host}: `bgpctl show neighbor <address>` says why (the route server down, tcp/179 to it filtered,"
            " or max-prefix hit); `bgpctl neighbor <address> up` starts it again once that is fixed")


def lists_outcome(host: str, present: list[str], counts: dict[str, int], stale: list[str], sessions_up: bool,
                  stale_minutes: int, in_lab: bool) -> Outcome:
    """The update job's lists: `present` the list files there are, `counts` their lines, `stale`
    those not rewritten within `stale_minutes`."""
    run = f"run /{UPDATE_JOB} on {host} and read what it says"
    missing = [path for path in (BLACK_LIST_FILE, BYPASS_LIST_FILE) if path not in present]
    if missing:
        why = "the lab runs the update job on demand, not from cron" if in_lab else "the update job has not written them yet"
        return Status.WARN, f"no {', '.join(missing)}: {why}", run
    black, bypass = counts.get(BLACK_LIST_FILE, 0), counts.get(BYPASS_LIST_FILE, 0)
    seen = f"black list {black} address(es), bypass list {bypass}"
    if stale:
        return (Status.WARN, seen + f"; {', '.join(stale)} not rewritten for over {stale_minutes} min (3 x bgpSpamd.updateMinutes):"
                " the job keeps the old lists while no session is up or bgpctl fails", run)
    if black == 0 and sessions_up:
        return Status.WARN, seen + "; the black list is empty while the route servers' sessions are up", run
    return Status.PASS, seen + f", rewritten within {stale_minutes} min", ""


def spamd_outcome(host: str, flags: str, listen: str | None, peers: dict[str, list[str]]) -> Outcome:
    """spamd runs (`rcctl check` passed) with these flags; `listen` the host's own IPv4 (None: not
    known), `peers` every other MX's IPv4 addresses as DNS has them now, by host name."""
    heard_on, sends_to = facts.spamd_sync(flags)
    wanted = {address for addresses in peers.values() for address in addresses}
    missing = sorted(f"{name} ({', '.join(addresses) or 'no A record'})" for name, addresses in peers.items()
                     if not set(addresses) & set(sends_to))
    unknown = sorted(set(sends_to) - wanted)
    problems = []
    if missing:
        problems.append(f"sends no sync to {', '.join(missing)}")
    if unknown:
        problems.append(f"sends sync to {', '.join(unknown)}, no MX of the site")
    if listen is not None and listen not in heard_on:
        problems.append(f"listens for sync on {', '.join(heard_on) or 'nothing'}, not {listen}")
    if problems:
        return (Status.FAIL, "spamd runs, but " + "; ".join(problems),
                f"`pulumi up` gives {host} an image whose rc.conf.local names every other MX (-Y) and its own address (-y)")
    return Status.PASS, f"spamd runs, syncing with {', '.join(sorted(peers)) or 'no other MX'}", ""


def space_outcome(host: str, what: str, path: str, system: facts.FileSystem, warn_percent: int,
                  mount_point: str | None = None) -> Outcome:
    """`mount_point`: where the file system must be mounted (the primary's mail volume)."""
    free = system.free_percent
    seen = f"{free:.0f}% free ({max(system.available_kb, 0) / 1024 / 1024:.1f} GiB) on {system.mounted_on} ({system.device})"
    if mount_point is not None and system.mounted_on != mount_point:
        return (Status.FAIL, f"{path} is on {system.mounted_on}, not on the mail volume at {mount_point}",
                f"the volume is not mounted on {host}: /etc/rc.securelevel mounts it at boot; its output is in /var/log/messages")
    fix = f"make room on {host}'s {system.mounted_on}: {what}"
    if free < warn_percent / 2:
        return Status.FAIL, seen + f"; below {warn_percent / 2:g}% (half of doctor.freeSpaceWarnPercent)", fix
    if free < warn_percent:
        return Status.WARN, seen + f"; below {warn_percent}% (doctor.freeSpaceWarnPercent)", fix
    return Status.PASS, seen, ""


def key_outcome(host: str, stack: str, running: dict[str, str], expected: dict[str, str]) -> Outcome:
    """The host's key-versions file against what an image rendered from the backend now carries."""
    behind = [name for name in expected if running.get(name) != expected[name]]
    extra = [name for name in running if name not in expected]
    if not behind and not extra:
        return Status.PASS, f"runs the backend's versions of {', '.join(expected)}", ""
    said = [f"{name} {running.get(name, 'none')}, the backend's is {expected[name]}" for name in behind]
    said += [f"{name} {running[name]}, which no image of {host} carries now" for name in extra]
    config = f"Pulumi.{stack}.yaml"
    fixes = []
    if "queue-key" in behind:
        fixes.append(f"python -m mailsite rotate-queue-key --config {config} --host {host} (it goes on from where a rotation stopped)")
    if "spamd-sync-key" in behind:
        fixes.append(f"python -m mailsite rotate-spamd-key --config {config}")
    if any(name.startswith("dkim-") for name in behind):
        fixes.append(f"python -m mailsite rotate-dkim-key --config {config} (it goes on from where it stopped)")
    fixes.append(f"`pulumi up --stack {stack}` replaces {host} with an image of the backend's versions")
    return Status.FAIL, "left behind: runs " + "; ".join(said), "; or ".join(fixes)


def certificate_outcome(host: str, path: str, end: datetime | None, now: datetime, warn_days: int, error: str = "") -> Outcome:
    renew = f"run /{CERTIFICATES_JOB} on {host}: it renews what is due and says what the CA answered"
    if end is None:
        return Status.FAIL, f"no certificate at {path}: {error}", renew
    left = end - now
    seen = f"expires {end:%Y-%m-%d %H:%M} UTC"
    if left.total_seconds() <= 0:
        return Status.FAIL, f"{seen}: expired {_duration(-left.total_seconds())} ago", renew
    if left < timedelta(days=warn_days):
        return (Status.WARN, f"{seen}, in {_duration(left.total_seconds())}: below {warn_days} days "
                "(doctor.certificateWarnDays); renewals are due 30 days ahead", renew)
    return Status.PASS, f"{seen}, in {left.days} days", ""


# Reaching a host, once per run.

class _Throttled:
    """A host's control that runs at most a few commands at once: every check of a host starts
    together, and over ssh each command is a connection of its own, which sshd drops at random
    past MaxStartups (10 unauthenticated at once by default)."""

    def __init__(self, control: HostControl, at_once: threading.Semaphore):
        self._control = control
        self._at_once = at_once

    def run(self, *command: str) -> str:
        with self._at_once:
            try:
                return self._control.run(*command)
            except UnicodeDecodeError:  # a broken or hostile host's binary answer: its check says so
                raise ControlError(f"`{' '.join(command)}` answered with bytes that are not text") from None

    def reachable(self) -> bool:
        with self._at_once:
            return self._control.reachable()

    def replaced(self) -> None:
        self._control.replaced()


COMMANDS_AT_ONCE = 4  # per host


class _Reached:
    """One host as the inside checks reach it: whether it answers, asked once and shared by all
    its checks, and the facts more than one check reads (smtpd's status, bgpd's sessions), each
    read once."""

    def __init__(self, host: Host, control: Callable[[], HostControl]):
        self.host = host
        self._control = control
        self._lock = threading.Lock()
        self._asked = False
        self._reached: HostControl | None = None
        self.error = ""
        self._facts: dict[str, tuple[threading.Lock, list[tuple[object, str]]]] = {}

    def control(self) -> HostControl | None:
        """The host's control if a shell answers there (None: `error` says why)."""
        with self._lock:
            if not self._asked:
                self._asked = True
                try:
                    control = self._control()
                    control.run("true")
                    self._reached = _Throttled(control, threading.Semaphore(COMMANDS_AT_ONCE))
                except Exception as error:  # a missing lab node's holder, a refused ssh: unreachable all the same
                    self.error = " ".join(str(error).split()) or type(error).__name__
            return self._reached

    def _fact(self, key: str, read: Callable[[HostControl], object]) -> tuple[object, str]:
        """What `read` says of the host (None and why, when it cannot), read once per run."""
        with self._lock:
            lock, known = self._facts.setdefault(key, (threading.Lock(), []))
        with lock:
            if not known:
                control = self.control()
                if control is None:
                    known.append((None, f"cannot reach {self.host.name}"))
                else:
                    try:
                        known.append((read(control), ""))
                    except (ControlError, ValueError, KeyError, TypeError) as error:  # bgpctl's JSON not as expected
                        known.append((None, str(error)))
            return known[0]

    def smtp_status(self) -> tuple[str | None, str]:
        """`smtpctl show status`, or None and why not."""
        status, error = self._fact("smtp status", facts.smtp_status)
        return (status if isinstance(status, str) else None), error

    def bgp_sessions(self) -> tuple[dict[str, str] | None, str]:
        """bgpd's sessions by neighbor address, or None and why not."""
        sessions, error = self._fact("bgp sessions", facts.bgp_summary)
        return (sessions if isinstance(sessions, dict) else None), error


# What ssh says when it is refused, in a few of its words (its banner for a changed host key is a
# dozen lines): the cause, and what the admin does about it.
_SSH_REFUSALS = [
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "its ssh host key is not the one this machine knows",
     "if `pulumi up` replaced {name}, forget the old key: ssh-keygen -R {mx} -f {known}; if not, someone may be "
     "in between: compare the key with the VM's console first"),
    ("Host key verification failed", "its ssh host key cannot be verified",
     "ssh root@{mx} by hand says which key it expected; ssh-keygen -R {mx} -f {known} once the VM was replaced"),
    ("Permission denied", "the admin key is refused (doctor never types a password: ssh runs in BatchMode)",
     "load the admin key (ssh-add) or name it for {mx} in ~/.ssh/config; the site's image takes that key for root"),
]


def _unreached(host: Host, error: str) -> Outcome:
    for words, seen, fix in _SSH_REFUSALS:
        if words in error:
            return (Status.FAIL, f"cannot reach {host.name} over ssh: {seen}",
                    fix.format(name=host.name, mx=host.mx_name, known=KNOWN_HOSTS))
    return (Status.FAIL, f"cannot reach {host.name} over ssh: {error[:300]}",
            f"is the VM running? `ssh root@{host.mx_name}` by hand says why; `pulumi up` recreates a VM that is gone")


def _takes_mail(primary: _Reached) -> bool | None:
    """Whether the primary's smtpd takes mail, as it says itself; None: the primary cannot be
    reached to ask."""
    status, _ = primary.smtp_status()
    if status is None:
        return None if primary.control() is None else False
    return "SMTP running" in status


def _bounded(control: HostControl, timeout: float) -> HostControl:
    """Every command within the run's timeout for one operation (ssh's own is longer)."""
    if isinstance(control, CommandControl) and control.timeout > timeout:
        return dataclasses.replace(control, timeout=timeout)
    return control


class _Expected:
    """The key versions an image rendered now carries, by host: the backend read once per run."""

    def __init__(self, view: SiteView):
        self._view = view
        self._lock = threading.Lock()
        self._found: dict[str, dict[str, str]] | None = None
        self._error = ""

    def versions(self) -> tuple[dict[str, dict[str, str]] | None, str]:
        with self._lock:
            if self._found is None and not self._error:
                view = self._view
                try:
                    store = None if view.site.secrets.backend == "inline" else view.store()
                    secrets = site_secrets(view.site, view.stack, Path("."), store=store)
                    self._found = {name: facts.parse_key_versions(render_key_versions(held)) for name, held in secrets.items()}
                except Exception as error:  # any backend failure (no credentials, a network error): cannot tell
                    self._error = " ".join(str(error).split()) or type(error).__name__
            return self._found, self._error


def _control_of(view: SiteView, host: Host) -> Callable[[], HostControl]:
    return lambda: _bounded(view.control(host), view.timeout)


def checks(view: SiteView) -> list[Check]:
    site = view.site
    reached = {host.name: _Reached(host, _control_of(view, host)) for host in site.hosts}
    expected = _Expected(view)
    found: list[Check] = []
    for host in site.hosts:
        found += _host_checks(view, host, reached, expected)
    return found


def _host_checks(view: SiteView, host: Host, reached: dict[str, _Reached], expected: _Expected) -> list[Check]:
    site = view.site
    me = reached[host.name]
    name = host.name
    doctor = site.doctor
    warn_days, warn_minutes, warn_percent = doctor.certificate_warn_days, doctor.queue_age_warn_minutes, doctor.free_space_warn_percent

    def on_host(read: Callable[[HostControl], Outcome]) -> Callable[[], Outcome]:
        def run() -> Outcome:
            control = me.control()
            if control is None:
                return Status.WARN, f"not checked: {name} is unreachable", f"see `{name}: answers over ssh`"
            return read(control)
        return run

    def reach() -> Outcome:
        if me.control() is None:
            return _unreached(host, me.error)
        return Status.PASS, "a root shell answers", ""

    def smtpd(control: HostControl) -> Outcome:
        status, error = me.smtp_status()
        return smtpd_outcome(name, status, error)

    def queue(control: HostControl) -> Outcome:
        status, _ = me.smtp_status()
        if status is None:
            # Without smtpd, smtpctl walks the queue itself and skips every encrypted envelope
            # (all of them here: `queue encryption`), listing none: an "empty" that is not.
            return (Status.WARN, "cannot tell: smtpd does not answer, and smtpctl lists an encrypted queue only through it",
                    f"see `{name}: smtpd runs and takes mail`")
        try:
            envelopes = facts.envelopes(control)
        except (ControlError, ValueError) as error:
            return Status.WARN, f"cannot tell: {error}", f"see `{name}: smtpd runs and takes mail`"
        primary = site.primary.name
        return queue_outcome(host, envelopes, view.now, warn_minutes, site.queue,
                             "MTA" in facts.paused(status), primary,
                             None if host.is_primary else _takes_mail(reached[primary]), site.domains)

    servers = [(str(server.address), server.description) for server in site.bgp_spamd.route_servers]

    def bgp(control: HostControl) -> Outcome:
        sessions, error = me.bgp_sessions()
        if sessions is None:
            return (Status.FAIL, f"bgpd does not answer bgpctl: {error}",
                    f"start it on {name} (rcctl start bgpd); why it stopped is in /var/log/daemon")
        return bgp_outcome(name, sessions, servers)

    stale_minutes = 3 * site.bgp_spamd.update_minutes

    def lists(control: HostControl) -> Outcome:
        try:
            present = [f"{LISTS_DIRECTORY}/{entry}" for entry in control.run("ls", "-1", LISTS_DIRECTORY).split()]
            there = [path for path in (BLACK_LIST_FILE, BYPASS_LIST_FILE) if path in present]
            counts = facts.parse_line_counts(control.run("wc", "-l", *there)) if there else {}
            stale = control.run("find", *there, "-mmin", f"+{stale_minutes}").split() if there else []
        except ControlError as error:
            return Status.WARN, f"cannot tell: {error}", f"read {LISTS_DIRECTORY} on {name} by hand"
        sessions, _ = me.bgp_sessions()
        up = any((sessions or {}).get(address) == "Established" for address, _ in servers)
        return lists_outcome(name, there, counts, stale, up, stale_minutes, view.in_lab)

    def spamd(control: HostControl) -> Outcome:
        if view.in_lab:
            return (Status.WARN, "not in the lab: spamd is OpenBSD's (it needs pf's divert-to), the lab runs none",
                    "nothing to do in the lab; on a real site this checks spamd runs and syncs with every other MX")
        try:
            control.run("rcctl", "check", "spamd")
        except ControlError as error:
            return (Status.FAIL, f"spamd does not run: {error}",
                    f"rcctl start spamd on {name}; until then pf hands new senders to a spamd that is not there")
        try:
            flags = control.run("rcctl", "get", "spamd", "flags")
        except ControlError as error:
            return Status.WARN, f"spamd runs; its flags cannot be read: {error}", f"rcctl get spamd flags on {name}"
        own = [str(address) for address in view.addresses(host) if address.version == 4]
        peers = {peer.name: [str(a) for a in view.addresses(peer) if a.version == 4] for peer in site.spamd_sync_peers(host)}
        return spamd_outcome(name, flags, own[0] if len(own) == 1 else None, peers)

    def space(path: str, what: str, mount_point: str | None = None) -> Callable[[HostControl], Outcome]:
        def run(control: HostControl) -> Outcome:
            try:
                system = facts.file_system(control, path)
            except ControlError as error:
                if mount_point is not None:
                    return (Status.FAIL, f"no {path}: {error}",
                            f"the mail volume is not mounted on {name}: /etc/rc.securelevel mounts it at boot")
                return Status.FAIL, f"df cannot read {path}: {error}", f"look at {path} on {name}"
            except ValueError as error:
                return Status.WARN, f"cannot tell: {error}", f"df -kP {path} on {name}"
            return space_outcome(name, what, path, system, warn_percent, mount_point)
        return run

    def keys(control: HostControl) -> Outcome:
        try:
            text = control.run("cat", facts.KEY_VERSIONS)
        except ControlError as error:
            return (Status.FAIL, f"{facts.KEY_VERSIONS} cannot be read: {error}",
                    f"every image carries it: `pulumi up --stack {view.stack}` replaces {name} with one")
        running = facts.parse_key_versions(text)
        pairs = {tuple(line.split()) for line in text.splitlines() if len(line.split()) == 2}
        twice = sorted({key for key, _ in pairs if sum(other == key for other, _ in pairs) > 1})
        if twice:  # which of two versions the host runs cannot be told: never the PASS of the last line
            return (Status.FAIL, f"{facts.KEY_VERSIONS} names two versions of {', '.join(twice)}",
                    f"every image writes it once: `pulumi up --stack {view.stack}` replaces {name} with one")
        wanted, unread = expected.versions()
        if wanted is None:
            return (Status.WARN, f"cannot tell: the secrets backend cannot be read: {unread}",
                    "doctor compares with the backend's current versions: give it the backend's credentials")
        return key_outcome(name, view.stack, running, wanted.get(name, {}))

    def certificate(path: str, lab_has_it: bool) -> Callable[[HostControl], Outcome]:
        def run(control: HostControl) -> Outcome:
            if view.in_lab and not lab_has_it:
                return (Status.WARN, "not in the lab: httpd (OpenBSD's) serves the MTA-STS policy on a real primary,"
                        " the lab its own server", "nothing to do in the lab")
            try:
                end = facts.certificate_end(control, path)
            except ControlError as error:
                return certificate_outcome(name, path, None, view.now, warn_days, str(error))
            except ValueError as error:  # openssl read the file, and printed a date doctor cannot read
                return (Status.WARN, f"cannot tell its expiry: {error}",
                        f"openssl x509 -noout -enddate -in {path} on {name} shows it")
            return certificate_outcome(name, path, end, view.now, warn_days)
        return run

    found = [
        Check(f"{name}: answers over ssh", AREA, name, reach),
        Check(f"{name}: smtpd runs and takes mail", AREA, name, on_host(smtpd)),
        Check(f"{name}: queue moves (envelopes, oldest's age)", AREA, name, on_host(queue)),
        Check(f"{name}: bgpd's sessions with every route server are Established", AREA, name, on_host(bgp)),
        Check(f"{name}: bgp-spamd lists written and filled", AREA, name, on_host(lists)),
        Check(f"{name}: spamd runs and syncs with every other MX", AREA, name, on_host(spamd)),
        Check(f"{name}: free space for the queue ({QUEUE})", AREA, name, on_host(space(
            QUEUE, "a full queue file system stops smtpd taking mail"))),
    ]
    if host.is_primary:
        found.append(Check(f"{name}: free space for the mail ({STATE_MOUNT})", AREA, name, on_host(space(
            MAILBOXES, "a full mail volume stops delivery into the mailboxes; or grow it (mailVolume.size)", STATE_MOUNT))))
    found.append(Check(f"{name}: runs the secrets backend's current key versions", AREA, name, on_host(keys)))
    for index, certificate_file in enumerate(certificates(site, host)):
        found.append(Check(f"{name}: certificate file for {certificate_file.handle} ({certificate_file.certificate})",
                           AREA, name, on_host(certificate(certificate_file.certificate, index == 0))))
    return found
