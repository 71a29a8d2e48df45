"""Faults injected into the running lab, each what `doctor` must report as a FAIL: a primary
down, a DNS record missing or wrong, an MX on a DNS blocklist, an expired or wrong-name
certificate, an open relay, a bgp session down, a stuck queue, a host left behind by a key
rotation.

Each is a context manager: the fault holds inside the `with`, and on the way out, however the
body ends, the lab is put back exactly as it was (the same bytes in every file touched, every
daemon running and answering, the queue empty), since one lab serves a whole test module and a
fault left behind would fail every test after it. A restore that cannot be completed raises
LabError, never passes quietly.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..facts import KEY_VERSIONS, parse_key_versions
from . import mail
from .bgp import routes_received, sessions
from .ca import LabCA
from .lab import Lab, _listening
from .procs import LabError, wait_until
from .scenarios import REDELIVERY_TIMEOUT, _replace_file, _restart_smtpd

RESTORE_TIMEOUT = 30  # seconds for a restored daemon to answer as before (bgp routes back in)
# The rule that makes an open relay: anyone's mail, to anywhere, relayed out. A backup has the
# action already ("outbound", for its own mail and bounces), matched only `from local`.
OPEN_RELAY_MATCH = 'match from any for any action "outbound"'


@contextlib.contextmanager
def _files_restored(lab: Lab, host: str, paths: list[str]) -> Iterator[dict[str, Path]]:
    """The host's files at `paths` (as the host sees them) put back byte for byte on the way out,
    then its smtpd restarted on them (it reads its config and certificates only as it starts)."""
    files = {path: lab.path_on(host, path) for path in paths}
    own = {path: file.read_bytes() for path, file in files.items()}
    try:
        yield files
    finally:
        for path, file in files.items():
            _replace_file(file, own[path])
        _restart_smtpd(lab, host)


@contextlib.contextmanager
def smtpd_down(lab: Lab, host: str) -> Iterator[None]:
    """The host's smtpd stopped (port 25, and on the primary 465 and 587, answer nothing): a
    crashed smtpd, or a primary down, as its backups see it."""
    lab.stop_daemon(host, "smtpd")
    try:
        yield
    finally:
        if not lab.daemons().get(f"{host}/smtpd", False):
            lab.start_daemon(host, "smtpd")
        if not wait_until(lambda: lab.smtpd_listening(host), RESTORE_TIMEOUT):
            raise LabError(f"{host}'s smtpd did not come back")


def primary_down(lab: Lab) -> contextlib.AbstractContextManager[None]:
    return smtpd_down(lab, lab.plan.site.primary.name)


# DNS: the lab's dnsmasq serves the site's records as dnsmasq options, one a line
# (`mx-host=example.org,mx3.example.org,30`, `txt-record=example.org,"v=spf1 ..."`).

def _dnsmasq_conf(lab: Lab) -> Path:
    return lab.path_on(lab.plan.dns.name, "/etc/dnsmasq.conf")


def _restart_dnsmasq(lab: Lab) -> None:
    name = lab.plan.dns.name
    lab.stop_daemon(name, "dnsmasq")
    dnsmasq = lab.start_daemon(name, "dnsmasq")
    if not wait_until(lambda: _listening(dnsmasq.pid, 53, "udp"), RESTORE_TIMEOUT):
        raise LabError(f"the lab's dnsmasq did not answer again; see {lab.log(name, 'dnsmasq')}")


def dns_option(lab: Lab, prefix: str) -> str:
    """The one line of the lab DNS's config that starts with `prefix` (a record as dnsmasq is
    given it), for a fault to remove or change."""
    found = [line for line in _dnsmasq_conf(lab).read_text().splitlines() if line.startswith(prefix)]
    if len(found) != 1:
        raise LabError(f"the lab's dnsmasq.conf has {len(found)} lines starting {prefix!r}, want 1")
    return found[0]


@contextlib.contextmanager
def _dns_served(lab: Lab, edit: Callable[[list[str]], list[str]]) -> Iterator[None]:
    """The lab DNS serving its config's lines as `edit` changes them. Restored by publishing the
    site's records again (what `pulumi up` does), checked to be what was served before."""
    conf = _dnsmasq_conf(lab)
    own = conf.read_text()
    try:
        conf.with_suffix(".new").write_text("".join(line + "\n" for line in edit(own.splitlines())))
        conf.with_suffix(".new").replace(conf)
        _restart_dnsmasq(lab)
        yield
    finally:
        lab.publish_dns()
        if conf.read_text() != own:
            # The site's records changed meanwhile (a DKIM key published): what was served goes back.
            conf.write_text(own)
            _restart_dnsmasq(lab)
            raise LabError("the lab DNS's records changed while a DNS fault held; put back what it served before")


def dns_changed(lab: Lab, record: str, instead: str | None) -> contextlib.AbstractContextManager[None]:
    """The lab DNS serving `instead` in place of the record line `record` (None: the record
    missing), as a zone edited by hand or a provider's record deleted would."""
    def edit(lines: list[str]) -> list[str]:
        if lines.count(record) != 1:
            raise LabError(f"the lab's dnsmasq.conf has {lines.count(record)} lines {record!r}, want 1")
        return [line for line in lines if line != record] if instead is None else \
            [instead if line == record else line for line in lines]
    return _dns_served(lab, edit)


def dns_record_missing(lab: Lab, record: str) -> contextlib.AbstractContextManager[None]:
    return dns_changed(lab, record, None)


def dns_record_wrong(lab: Lab, record: str, wrong: str) -> contextlib.AbstractContextManager[None]:
    return dns_changed(lab, record, wrong)


# What a DNS blocklist answers for a listed address: Spamhaus's XBL code (an exploited host), an
# address in 127.0.0.0/8 as every list answers (RFC 5782 2.3), not the test entry's own 127.0.0.2.
LISTED = "127.0.0.4"


def blocklisted(lab: Lab, host: str, zone: str) -> contextlib.AbstractContextManager[None]:
    """The MX's IPv4 address listed by the blocklist `zone`, as the lab's DNS answers that zone
    (it holds each of doctor's lists, listing nothing but their test entries)."""
    address = lab.plan.node(host).ipv4
    name = ".".join([*reversed(str(address).split(".")), zone])
    if not any(line == f"local=/{zone}/" for line in _dnsmasq_conf(lab).read_text().splitlines()):
        raise LabError(f"the lab's DNS does not answer the blocklist zone {zone}")
    return _dns_served(lab, lambda lines: [*lines, f"host-record={name},{LISTED}"])


# Certificates: the MX's own pki files replaced by one from the lab CA that is not what it must be.

@contextlib.contextmanager
def certificate_replaced(lab: Lab, host: str, *, names: list[str] | None = None,
                         not_after: datetime.datetime | None = None) -> Iterator[None]:
    """The host's smtpd restarted on a certificate of the lab CA for `names` (default: its MX
    name) expiring at `not_after` (default: in a week), in place of its own. Only smtpd is
    restarted: on the primary, Dovecot's IMAPS keeps the certificate it started with."""
    site = lab.plan.site
    mx = site.host(host)
    certificate, key = site.tls.certificate_for(mx), site.tls.key_for(mx)
    issued = LabCA.load(lab.dir / "ca").issue(names or [mx.mx_name], not_after=not_after)
    with _files_restored(lab, host, [certificate, key]) as files:
        _replace_file(files[certificate], issued.certificate)
        _replace_file(files[key], issued.key)
        _restart_smtpd(lab, host)
        yield


def certificate_expired(lab: Lab, host: str) -> contextlib.AbstractContextManager[None]:
    """A certificate for the right name that expired yesterday: a renewal that lapsed."""
    yesterday = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    return certificate_replaced(lab, host, not_after=yesterday)


WRONG_NAME = "wrong-name.example.invalid"


def certificate_wrong_name(lab: Lab, host: str) -> contextlib.AbstractContextManager[None]:
    """A valid certificate, for a name that is not the MX's: another host's files copied over."""
    return certificate_replaced(lab, host, names=[WRONG_NAME])


@contextlib.contextmanager
def open_relay(lab: Lab, host: str) -> Iterator[None]:
    """The host's smtpd restarted on its smtpd.conf with one more rule, relaying anyone's mail
    to anywhere: the mistake that gets a site on every blocklist within hours."""
    path = lab.site_daemons(host)["smtpd"].config or "/etc/mail/smtpd.conf"
    with _files_restored(lab, host, [path]) as files:
        own = files[path].read_text()
        _replace_file(files[path], f"{own.rstrip()}\n{OPEN_RELAY_MATCH}\n".encode())
        _restart_smtpd(lab, host)
        yield


@contextlib.contextmanager
def bgp_session_down(lab: Lab, host: str, route_server: str) -> Iterator[None]:
    """The host's session with one route server taken down (`bgpctl neighbor ADDRESS down`, as a
    peer's maintenance or a filtered port leaves it): the host stops hearing that server's lists.
    Restored with `neighbor up`, once the routes are back from every server."""
    address = str(lab.plan.node(route_server).ipv4)
    done = lab.run_in(host, ["bgpctl", "neighbor", address, "down"], timeout=10)
    if done.returncode != 0:
        raise LabError(f"{host}: bgpctl neighbor {address} down: {(done.stderr or done.stdout).strip()}")
    try:
        if not wait_until(lambda: sessions(lab, host).get(address) != "Established", 10, 0.1):
            raise LabError(f"{host}'s session with {route_server} stayed Established after neighbor down")
        yield
    finally:
        # Both ends: the route server, sent a Cease, holds its side Idle for a while of its own
        # and refuses the MX's connections meanwhile (up to tens of seconds).
        def back() -> bool:
            lab.start_sessions(host)
            lab.start_sessions(route_server)
            return routes_received(lab, host)
        if not wait_until(back, RESTORE_TIMEOUT, 0.5):
            raise LabError(f"{host}'s session with {route_server} did not come back with its routes")


@dataclass(frozen=True)
class Stuck:
    host: str
    marker: str  # the held message's subject, to find it delivered once the queue moves


@contextlib.contextmanager
def queue_stuck(lab: Lab, host: str) -> Iterator[Stuck]:
    """A message for a site user held in the host's queue, its relaying paused (`smtpctl pause
    mta`): mail taken and not moving on. Restored by resuming and retrying the queue until the
    message is delivered, once, and the queue is empty."""
    site = lab.plan.site
    marker = f"mailsite-lab-stuck-{uuid.uuid4().hex[:12]}"
    paused = lab.run_in(host, ["smtpctl", "pause", "mta"], timeout=10)
    if paused.returncode != 0:
        raise LabError(f"{host}: smtpctl pause mta: {(paused.stderr or paused.stdout).strip()}")
    try:
        sent = mail.send(lab, host, f"{site.recipients.users[0]}@{site.domains[0]}", marker)
        if not sent.accepted:
            raise LabError(f"{host} refused a site user's mail (swaks {sent.status})")
        if not wait_until(lambda: mail.queue(lab, host), 10, 0.1):
            raise LabError(f"{host}'s queue does not hold the message")
        yield Stuck(host, marker)
    finally:
        lab.run_in(host, ["smtpctl", "resume", "mta"], timeout=10)
        if not mail.flush(lab, host, lambda: mail.delivered(lab, marker) and not mail.queue(lab, host), REDELIVERY_TIMEOUT):
            raise LabError(f"{host}'s held message was not delivered {REDELIVERY_TIMEOUT} s after its relaying"
                           f" resumed; its queue: {mail.queue(lab, host)}")


OLD_VERSION = "0" * 32  # cut to the length of the real one: no version the backend makes (random) is all zeros


@contextlib.contextmanager
def key_version_behind(lab: Lab, host: str, key: str = "queue-key") -> Iterator[str]:
    """The host's key-versions file naming an older version of `key` than the secrets backend's
    current one, as a host a rotation skipped (never replaced with its new image) says. Yields
    the version the host now claims."""
    file = lab.path_on(host, KEY_VERSIONS)
    own = file.read_bytes()
    versions = parse_key_versions(own.decode())
    if key not in versions:
        raise LabError(f"{host}'s {KEY_VERSIONS} names no {key}: {sorted(versions)}")
    old = OLD_VERSION[:len(versions[key])]
    lines = [f"{name} {old if name == key else version}" for name, version in versions.items()]
    try:
        _replace_file(file, ("\n".join(lines) + "\n").encode())
        yield old
    finally:
        _replace_file(file, own)
