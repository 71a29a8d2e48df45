"""doctor's outside checks of the MXes (mailsite/doctor/smtp.py), against real servers, from where
a sender would stand.

The healthy site: the example site in the lab, its real smtpd 7.6 and Dovecot, the checks run in
the lab's internet node's network namespace. What goes wrong: small servers in this file playing
an MX that greets as another name, relays for anyone, takes unknown recipients, shows a wrong,
expired or nearly expired certificate, or is spamd's tarpit; they listen in a network namespace
of the test's own, where the checks run too, found through a DNS server of the test's (dnspython,
on that namespace's loopback), so each check connects, resolves and verifies as against a site.

These need root (network namespaces); CI runs as root and never skips them.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.resolver
import pytest

from mailsite.doctor import smtp
from mailsite.doctor.core import run_checks
from mailsite.doctor.view import SiteView
from mailsite.lab.acme import socket_in
from mailsite.lab.ca import Issued, LabCA
from mailsite.lab.mta_sts import policy_served
from mailsite.lab.procs import NETNS_DIR
from mailsite.mta_sts import policy_text
from mailsite.results import Result, Status
from tests.sites import example_settings, site_of

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)



def _without_ipv6(settings: dict) -> dict:
    for host in settings["hosts"]:
        host["ipv6"] = None
    return settings


# mx1 the primary, mx2 and mx3 backups; example.org, example.net. IPv4 only, as the test's world
# answers A records (AAAA only where a test adds one); FULL_SITE gives every MX IPv6 too.
SITE = site_of(_without_ipv6(example_settings()))
FULL_SITE = site_of(example_settings())
_CLONE_NEWNET = 0x40000000
TIMEOUT = 2.0  # the view's, per network operation


def _in_namespace(namespace: str, work: Callable[[], object]) -> object:
    """`work` in a thread that entered `namespace`'s network: every thread it starts (run_checks
    starts one per check) is born there too, and this process's other threads stay where they are."""
    outcome: dict[str, object] = {}

    def enter_and_work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(NETNS_DIR / namespace) as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}")
            outcome["value"] = work()
        except BaseException as error:  # re-raised in the test's own thread
            outcome["error"] = error

    thread = threading.Thread(target=enter_and_work, name=f"doctor-in-{namespace}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


def _view(site, nameserver: str, cafile: str | None, timeout: float = TIMEOUT) -> SiteView:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [nameserver]

    def no_control(host):
        raise AssertionError("an outside check reached inside a host")

    def no_store():
        raise AssertionError("an outside check opened the secrets backend")

    return SiteView(site, "example", resolver, no_control, no_store, cafile,
                    datetime.datetime.now(datetime.timezone.utc), timeout)


def _run(namespace: str, view: SiteView, host: str | None = None, deadline: float = 20) -> dict[str, Result]:
    """smtp's checks (of `host` only, if given) run from `namespace`: results by check name."""
    def work() -> list[Result]:
        chosen = [check for check in smtp.checks(view) if host is None or check.host == host]
        return run_checks(chosen, deadline)

    results = _in_namespace(namespace, work)
    assert isinstance(results, list)
    return {result.name: result for result in results}


def _one(results: dict[str, Result], *words: str) -> Result:
    found = [result for name, result in results.items() if all(word in name for word in words)]
    assert len(found) == 1, f"{words}: {sorted(results)}"
    return found[0]


# The healthy site: the example site in the lab, asked from its internet node.


def test_the_example_site_in_the_lab_passes_every_outside_check(lab):
    site = lab.plan.site
    # The lab CA's certificates live a week (mailsite.lab.ca), under the 14 days doctor warns at.
    view = _view(site.model_copy(update={"doctor": site.doctor.model_copy(update={"certificate_warn_days": 1})}),
                 str(lab.plan.dns.ipv4), str(lab.ca_certificate))
    with policy_served(lab):
        results = _run(lab.plan.internet.namespace, view)
    assert {name: (r.status, r.seen) for name, r in results.items() if r.status is not Status.PASS} == {}
    for host in site.hosts:
        for family in ("IPv4", "IPv6"):
            mine = [name for name in results if name.startswith(f"{host.mx_name}: ") and name.endswith(f" over {family}")]
            # Greeting, STARTTLS, relay, unknown recipient; the primary's 587, 465 and 993 besides.
            assert len(mine) == (7 if host.is_primary else 4), mine
    assert "550" in _one(results, "mx2.example.org", "unknown recipient", "IPv4").seen
    assert "Must issue an AUTH command first" in _one(results, "mx1.example.org", "(587)", "IPv6").seen
    assert [name for name in results if name.startswith("mta-sts.")] == [
        f"mta-sts.{domain}: serves the site's MTA-STS policy" for domain in site.domains]


# A world of the test's own: a network namespace, its DNS, and servers playing MXes.


@dataclass
class Plays:
    """How a test server answers, as one MX on one port."""

    name: str  # the name it greets with
    certificate: Issued | None = None  # offered with STARTTLS (or at once, with implicit_tls)
    greeting: str | None = None  # in place of "220 <name> ESMTP test"
    stutter: float = 0.0  # seconds between the greeting's bytes, as spamd's tarpit
    greeting_end: str = "\r\n"  # "": a greeting never finished
    silent: bool = False  # accepts the connection, says nothing
    tls_breaks: bool = False  # answers STARTTLS with 220, then hangs up
    open_relay: bool = False
    takes_unknown: bool = False  # accepts any local part of a site domain
    implicit_tls: bool = False  # TLS from the first byte (465, 993)
    tls_required: bool = False  # MAIL before STARTTLS: 530
    auth_required: bool = False  # AUTH offered inside TLS; MAIL without it: 530
    auth_optional: bool = False  # AUTH offered inside TLS, MAIL taken without it (smtpd's auth-optional)
    imap: bool = False
    http_body: str | None = None  # an HTTPS server answering every GET with this text/plain
    http_status: str = "200 OK"
    http_headers: str = "Content-Type: text/plain\r\n"
    ehlo_flood: bool = False  # answers EHLO with 250- lines that never end
    ehlo_reply: str | None = None  # in place of the EHLO answer
    starttls_reply: str | None = None  # in place of 220 to STARTTLS (the server stays in clear)
    mail_reply: str | None = None  # in place of 250 to MAIL FROM a stranger
    tls_up_to: ssl.TLSVersion | None = None  # the newest TLS it speaks (TLSv1_1: an old server's)
    rcpt_delay: float = 0.0  # seconds before each RCPT's answer
    heard: list[str] = field(default_factory=list)  # every command received


class World:
    """A network namespace with a DNS server on 127.0.0.1 and one listener per port; what answers
    a connection is what `plays` holds for the address and port it came to."""

    def __init__(self, namespace: str, directory: Path):
        self.namespace = namespace
        self.directory = directory
        self.ca = LabCA.new("doctor-smtp")
        self.cafile = str(directory / "ca.pem")
        Path(self.cafile).write_bytes(self.ca.pem)
        self.names: dict[str, str] = {}  # DNS name -> IPv4 address ("a, b": two A records)
        self.names6: dict[str, str] = {}  # DNS name -> IPv6 address, for the names that have one
        self.unanswered: set[str] = set()  # names whose queries get no answer (a resolver timing out)
        self.plays: dict[tuple[str, int], Plays] = {}
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def view(self, site=SITE, timeout: float = TIMEOUT, cafile: str | None = "world") -> SiteView:
        return _view(site, "127.0.0.1", self.cafile if cafile == "world" else cafile, timeout)

    def run(self, view: SiteView, host: str | None = None, deadline: float = 20) -> dict[str, Result]:
        return _run(self.namespace, view, host, deadline)

    def play(self, address: str, port: int, plays: Plays) -> Plays:
        self.plays[(address, port)] = plays
        return plays

    def issue(self, names: list[str], not_after: datetime.datetime | None = None, ca: LabCA | None = None) -> Issued:
        """A certificate of `ca` (the world's, which the view trusts); by default Let's Encrypt's 90 days."""
        ninety_days = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90)
        return (ca or self.ca).issue(names, not_after=not_after or ninety_days)

    def start(self, ports: tuple[int, ...]) -> None:
        self._start(self._dns, self._dns_socket())
        for port in ports:
            self._start(self._accept, socket_in(self.namespace, listen_on=port))

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _start(self, target: Callable[[socket.socket], None], sock: socket.socket) -> None:
        thread = threading.Thread(target=target, args=(sock,), daemon=True, name="doctor-smtp-world")
        thread.start()
        self.threads.append(thread)

    def _dns_socket(self) -> socket.socket:
        made = {}

        def make() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(NETNS_DIR / self.namespace) as handle:
                assert libc.setns(handle.fileno(), _CLONE_NEWNET) == 0
            made["socket"] = sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 53))

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        return made["socket"]

    def _dns(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        with sock:
            while not self.stopping.is_set():
                try:
                    wire, client = sock.recvfrom(4096)
                except TimeoutError:
                    continue
                query = dns.message.from_wire(wire)
                response = dns.message.make_response(query)
                question = query.question[0]
                name = question.name.to_text().rstrip(".").lower()
                if name in self.unanswered:
                    continue
                if question.rdtype == dns.rdatatype.A and name in self.names:
                    response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", *self.names[name].split(", ")))
                elif question.rdtype == dns.rdatatype.AAAA and name in self.names6:
                    response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "AAAA", self.names6[name]))
                elif name not in self.names:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                sock.sendto(response.to_wire(), client)

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(0.2)
        with listener:
            while not self.stopping.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                address, port = connection.getsockname()[:2]
                plays = self.plays.get((address.removeprefix("::ffff:"), port))
                if plays is None:
                    connection.close()
                    continue
                threading.Thread(target=self._serve, args=(connection, plays), daemon=True).start()

    def _serve(self, connection: socket.socket, plays: Plays) -> None:
        try:
            with contextlib.closing(_Server(connection, plays, self)) as server:
                server.run()
        except (OSError, ssl.SSLError, _Gone):
            pass

    def server_context(self, issued: Issued) -> ssl.SSLContext:
        stem = self.directory / f"pki-{os.urandom(4).hex()}"
        stem.with_suffix(".crt").write_bytes(issued.certificate)
        stem.with_suffix(".key").write_bytes(issued.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        return context


class _Gone(Exception):
    pass


class _Server:
    """One connection to a test server: SMTP as `plays` says, IMAP's greeting and CAPABILITY, or
    one HTTPS answer. Every connection ends by itself within 10 s."""

    def __init__(self, connection: socket.socket, plays: Plays, world: World):
        self.sock, self.plays, self.world = connection, plays, world
        self.buffer = b""
        self.tls = False
        self.authenticated = False
        connection.settimeout(10)

    def close(self) -> None:
        self.sock.close()

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode())

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise _Gone
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode()

    def start_tls(self) -> None:
        assert self.plays.certificate is not None
        context = self.world.server_context(self.plays.certificate)
        if self.plays.tls_up_to is not None:
            with warnings.catch_warnings():  # deprecated, as the server played is meant to be
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = self.plays.tls_up_to
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 speaks TLS 1.1 only at level 0
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.tls = True

    def run(self) -> None:
        plays = self.plays
        if plays.silent:
            with contextlib.suppress(OSError):
                self.sock.recv(1)  # until the client gives up, or 10 s
            return
        if plays.implicit_tls:
            self.start_tls()
        if plays.http_body is not None:
            return self.http()
        if plays.imap:
            return self.imap()
        greeting = (plays.greeting or f"220 {plays.name} ESMTP test") + plays.greeting_end
        if plays.stutter:
            for byte in greeting.encode():
                self.sock.sendall(bytes([byte]))
                time.sleep(plays.stutter)
        else:
            self.sock.sendall(greeting.encode())
        while True:
            self.smtp(self.line())

    def smtp(self, line: str) -> None:
        plays = self.plays
        plays.heard.append(line)
        verb = line.split(" ", 1)[0].upper()
        if verb == "EHLO" and plays.ehlo_reply:
            self.send(plays.ehlo_reply)
        elif verb == "EHLO" and not plays.ehlo_flood:
            offered = []
            if plays.certificate is not None and not self.tls:
                offered.append("STARTTLS")
            if (plays.auth_required or plays.auth_optional) and (self.tls or not plays.tls_required):
                offered.append("AUTH PLAIN")
            self.send(*[f"250-{plays.name} Hello", *[f"250-{word}" for word in offered], "250 HELP"])
        elif verb == "EHLO" and plays.ehlo_flood:
            self.send(f"250-{plays.name} Hello")
            while True:
                self.send("250-X-FLOOD " + "x" * 60)
        elif verb == "STARTTLS" and plays.starttls_reply:
            self.send(plays.starttls_reply)
        elif verb == "STARTTLS":
            self.send("220 2.0.0 Ready to start TLS")
            if plays.tls_breaks:
                raise _Gone
            self.start_tls()
        elif verb == "MAIL":
            if plays.mail_reply:
                self.send(plays.mail_reply)
            elif plays.tls_required and not self.tls:
                self.send("530 5.7.0 Must issue a STARTTLS command first")
            elif plays.auth_required and not self.authenticated:
                self.send("530 5.5.1 Invalid command: Must issue an AUTH command first")
            else:
                self.send("250 2.0.0 Ok")
        elif verb == "RCPT":
            time.sleep(plays.rcpt_delay)
            address = line.split(":", 1)[1].strip().strip("<>")
            local, domain = address.rsplit("@", 1)
            if domain in SITE.domains:
                known = SITE.recipients.exists(local) or plays.takes_unknown
                self.send("250 2.1.5 Destination address valid" if known else "550 Invalid recipient")
            else:
                self.send("250 2.1.5 Destination address valid" if plays.open_relay else "550 Invalid recipient")
        elif verb in ("RSET", "NOOP"):
            self.send("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.send("221 2.0.0 Bye")
            raise _Gone
        else:  # DATA above all: a probe never sends it
            self.send("500 5.5.1 Invalid command")

    def imap(self) -> None:
        self.send("* OK IMAP4rev1 test ready")
        while True:
            tag, command = (self.line().split(" ", 1) + [""])[:2]
            self.plays.heard.append(command)
            if command.upper() == "CAPABILITY":
                self.send("* CAPABILITY IMAP4rev1 AUTH=PLAIN", f"{tag} OK done")
            elif command.upper() == "LOGOUT":
                self.send("* BYE", f"{tag} OK done")
                raise _Gone
            else:
                self.send(f"{tag} BAD not here")

    def http(self) -> None:
        while not self.buffer.endswith(b"\r\n\r\n"):
            self.line_into_buffer()
        body = (self.plays.http_body or "").encode()
        self.sock.sendall(b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (self.plays.http_status.encode(), self.plays.http_headers.encode(), len(body), body))

    def line_into_buffer(self) -> None:
        chunk = self.sock.recv(4096)
        if not chunk:
            raise _Gone
        self.buffer += chunk


# Each MX at an address of its own on the namespace's loopback; the policy hosts at the primary's.
ADDRESSES = {host.mx_name: f"127.0.0.{11 + index}" for index, host in enumerate(SITE.hosts)}
MX1, MX2, MX3 = (host.mx_name for host in SITE.hosts)
NAMES = dict(ADDRESSES) | {f"mta-sts.{domain}": ADDRESSES[MX1] for domain in SITE.domains}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    namespace = f"msdoctor-smtp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    made = World(namespace, tmp_path_factory.mktemp("doctor-smtp"))
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        made.names = dict(NAMES)
        made.start((smtp.SMTP, smtp.SUBMISSION, smtp.SMTPS, smtp.IMAPS, smtp.HTTPS))
        yield made
    finally:
        made.stop()
        subprocess.run(["ip", "netns", "del", namespace], check=True)


@pytest.fixture
def plays(world) -> Iterator[World]:
    """The world with nothing playing yet, and nothing left playing after the test."""
    world.plays.clear()
    yield world
    world.plays.clear()
    world.names6.clear()
    world.names.clear()
    world.names.update(NAMES)
    world.unanswered.clear()


def _healthy(world: World, mx: str, **changes) -> Plays:
    settings = {"certificate": world.issue([mx])} | changes
    return world.play(ADDRESSES[mx], smtp.SMTP, Plays(mx, **settings))


def test_a_backup_that_refuses_strangers_passes_every_port_25_check(plays):
    _healthy(plays, MX2)
    results = plays.run(plays.view(), "mx2")
    assert {name: r.status for name, r in results.items()} == {
        f"{MX2}: port 25 answers as {MX2} over IPv4": Status.PASS,
        f"{MX2}: STARTTLS on port 25 with a certificate for {MX2} over IPv4": Status.PASS,
        f"{MX2}: refuses to relay for a stranger (no open relay) over IPv4": Status.PASS,
        f"{MX2}: refuses an unknown recipient of example.org at RCPT over IPv4": Status.PASS,
    }


def test_an_open_relay_fails_and_the_probe_stops_at_rcpt(plays):
    relay = _healthy(plays, MX3, open_relay=True)
    results = plays.run(plays.view(), "mx3")
    verdict = _one(results, "no open relay")
    assert verdict.status is Status.FAIL
    assert "OPEN RELAY" in verdict.seen and "relay-test.invalid" in verdict.seen
    assert "from any for any" in verdict.fix
    verbs = [line.split()[0].upper() for line in relay.heard]
    assert "DATA" not in verbs and verbs[-2:] == ["RSET", "QUIT"]
    # The other checks of the same session still say what they saw.
    assert _one(results, "port 25 answers").status is Status.PASS


def test_a_backup_that_takes_unknown_recipients_fails(plays):
    _healthy(plays, MX2, takes_unknown=True)
    verdict = _one(plays.run(plays.view(), "mx2"), "unknown recipient")
    assert verdict.status is Status.FAIL and "backscatter" in verdict.seen
    assert "rcpt-to <recipients>" in verdict.fix


def test_a_certificate_for_another_name_fails(plays):
    _healthy(plays, MX2, certificate=plays.issue(["wrong-name.example.invalid"]))
    results = plays.run(plays.view(), "mx2")
    verdict = _one(results, "STARTTLS")
    assert verdict.status is Status.FAIL
    assert f"not valid for {MX2}" in verdict.seen and "wrong-name.example.invalid" in verdict.seen
    # The probes went on over the certificate refused: the relay check is still answered.
    assert _one(results, "no open relay").status is Status.PASS


def test_an_expired_certificate_fails(plays):
    expired = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    _healthy(plays, MX2, certificate=plays.issue([MX2], not_after=expired))
    verdict = _one(plays.run(plays.view(), "mx2"), "STARTTLS")
    assert verdict.status is Status.FAIL and "expired on" in verdict.seen
    assert f"/usr/local/sbin/mailsite-certificates on {MX2}" in verdict.fix


def test_a_certificate_expiring_within_the_warning_days_warns(plays):
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)
    _healthy(plays, MX2, certificate=plays.issue([MX2], not_after=soon))
    verdict = _one(plays.run(plays.view(), "mx2"), "STARTTLS")
    assert verdict.status is Status.WARN and "expires on" in verdict.seen and "certificateWarnDays, 14" in verdict.seen
    # The stack's line decides: two days of warning, and three days left is a PASS.
    site = SITE.model_copy(update={"doctor": SITE.doctor.model_copy(update={"certificate_warn_days": 2})})
    assert _one(plays.run(plays.view(site), "mx2"), "STARTTLS").status is Status.PASS


def test_a_certificate_no_trusted_ca_signed_fails(plays):
    _healthy(plays, MX2, certificate=plays.issue([MX2], ca=LabCA.new("stranger")))
    verdict = _one(plays.run(plays.view(), "mx2"), "STARTTLS")
    assert verdict.status is Status.FAIL and "cannot be verified" in verdict.seen
    assert plays.cafile in verdict.seen


def test_an_mx_without_starttls_fails(plays):
    _healthy(plays, MX2, certificate=None)
    results = plays.run(plays.view(), "mx2")
    assert _one(results, "STARTTLS").status is Status.FAIL
    assert "not offered" in _one(results, "STARTTLS").seen
    assert _one(results, "no open relay").status is Status.PASS  # probed in clear


def test_a_broken_tls_handshake_fails_starttls_and_the_probes_go_on_in_clear(plays):
    _healthy(plays, MX2, tls_breaks=True)
    results = plays.run(plays.view(), "mx2")
    starttls = _one(results, "STARTTLS")
    assert starttls.status is Status.FAIL and "the TLS handshake failed" in starttls.seen
    relay = _one(results, "no open relay")
    assert relay.status is Status.PASS and "the probes ran without TLS" in relay.seen


def test_an_mx_greeting_as_another_name_fails(plays):
    _healthy(plays, MX2, greeting="220 localhost.localdomain ESMTP test")
    verdict = _one(plays.run(plays.view(), "mx2"), "port 25 answers")
    assert verdict.status is Status.FAIL and "localhost.localdomain" in verdict.seen
    assert "/etc/myname" in verdict.fix
    # An ISP handing outgoing port 25 to its own server makes every MX greet with that server's name.
    assert "hands outgoing port 25 to its own server" in verdict.fix


def test_spamd_answering_warns_to_run_from_the_bypass_list(plays):
    spamd = _healthy(plays, MX2, greeting=f"220 {MX2} ESMTP spamd IP-based SPAM blocker; Thu Nov 26 12:00:00 2026")
    results = plays.run(plays.view(), "mx2")
    assert {r.status for r in results.values()} == {Status.WARN}
    assert all("nospamd" in r.fix and "bypass" in r.fix for r in results.values())
    assert spamd.heard == []  # nothing is said to spamd: its "250" to a relay would read as an open relay


def test_a_stuttering_tarpit_warns_without_waiting_it_out(plays):
    _healthy(plays, MX2, stutter=0.5)
    started = time.monotonic()
    results = plays.run(plays.view(timeout=5.0), "mx2")
    # Known by its first bytes, one by one: not the banner's 30 bytes at 0.5 s, nor the timeout.
    assert time.monotonic() - started < 2.5
    assert {r.status for r in results.values()} == {Status.WARN}
    assert "stuttering answer, 3 bytes" in _one(results, "port 25 answers").seen
    assert "'220'" in _one(results, "port 25 answers").seen


def test_a_greeting_left_unfinished_warns_at_the_timeout(plays):
    _healthy(plays, MX2, greeting=f"220 {MX2} ESMTP", greeting_end="")
    started = time.monotonic()
    results = plays.run(plays.view(timeout=1.0), "mx2")
    assert 1.0 <= time.monotonic() - started < 1.9
    assert {r.status for r in results.values()} == {Status.WARN}


def test_a_silent_mx_costs_one_timeout_not_one_per_check(plays):
    _healthy(plays, MX2, silent=True)
    started = time.monotonic()
    results = plays.run(plays.view(timeout=1.0), "mx2")
    assert time.monotonic() - started < 1.9
    assert {r.status for r in results.values()} == {Status.FAIL}
    assert all("no answer within 1 s" in r.seen for r in results.values())
    # Every MX silent alike may be this machine's network, which many ISPs keep off port 25.
    assert "block outgoing port 25" in _one(results, "port 25 answers").fix


def test_a_family_this_machine_has_no_route_for_warns_instead_of_failing(plays):
    # An admin's network without IPv6: the MXes' IPv6 cannot be told from here, not found broken.
    _primary(plays)
    _healthy(plays, MX2)
    plays.names6.update({MX1: "2001:db8::25", MX2: "2001:db8::26"})
    results = plays.run(plays.view())
    over_ipv6 = {name: r for name, r in results.items() if name.endswith("over IPv6")}
    assert len(over_ipv6) == 7 + 4
    assert {r.status for r in over_ipv6.values()} == {Status.WARN}
    assert all("no route to IPv6" in r.seen for r in over_ipv6.values())
    over_ipv4 = [r for name, r in results.items() if name.endswith("over IPv4") and name.startswith((MX1, MX2))]
    assert len(over_ipv4) == 7 + 4 and {r.status for r in over_ipv4} == {Status.PASS}


def test_an_mx_that_hangs_up_at_once_fails(plays):
    # Nothing plays mx3: its connection is closed as soon as it is taken.
    results = plays.run(plays.view(), "mx3")
    assert {r.status for r in results.values()} == {Status.FAIL}
    assert "closed the connection" in _one(results, "port 25 answers").seen


def _primary(world: World, **submission) -> None:
    certificate = world.issue([MX1])
    address = ADDRESSES[MX1]
    world.play(address, smtp.SMTP, Plays(MX1, certificate=certificate))
    world.play(address, smtp.SUBMISSION,
               Plays(MX1, certificate=certificate, **({"tls_required": True, "auth_required": True} | submission)))
    world.play(address, smtp.SMTPS, Plays(MX1, certificate=certificate, implicit_tls=True, auth_required=True))
    world.play(address, smtp.IMAPS, Plays(MX1, certificate=certificate, implicit_tls=True, imap=True))
    world.play(address, smtp.HTTPS, Plays(MX1, certificate=world.issue([f"mta-sts.{d}" for d in SITE.domains]),
                                          implicit_tls=True, http_body=policy_text(SITE)))


def test_the_primary_demanding_tls_and_auth_passes(plays):
    _primary(plays)
    results = plays.run(plays.view(), "mx1")
    assert {name: (r.status, r.seen) for name, r in results.items() if r.status is not Status.PASS} == {}
    assert len(results) == 7 + len(SITE.domains)


def test_submission_taking_mail_before_starttls_fails(plays):
    _primary(plays, tls_required=False, auth_required=False)
    verdict = _one(plays.run(plays.view(), "mx1"), "(587)")
    assert verdict.status is Status.FAIL and "MAIL FROM before STARTTLS: 250" in verdict.seen
    assert "tls-require" in verdict.fix


def test_submission_taking_mail_without_auth_fails(plays):
    _primary(plays, tls_required=True, auth_required=False, auth_optional=True)
    verdict = _one(plays.run(plays.view(), "mx1"), "(587)")
    assert verdict.status is Status.FAIL and "without a password" in verdict.seen


def test_imaps_with_a_certificate_for_another_name_fails(plays):
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.IMAPS)].certificate = plays.issue(["imap.example.invalid"])
    verdict = _one(plays.run(plays.view(), "mx1"), "IMAPS")
    assert verdict.status is Status.FAIL and "imap.example.invalid" in verdict.seen


def test_an_mta_sts_policy_other_than_the_stacks_fails(plays):
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.HTTPS)].http_body = policy_text(SITE).replace("enforce", "testing")
    results = plays.run(plays.view(), "mx1")
    verdict = _one(results, "mta-sts.example.org")
    assert verdict.status is Status.FAIL and "mode: testing" in verdict.seen and "mode: enforce" in verdict.seen


# Found in review (issue 17): what a hostile MX, a real internet path and a real admin's site give.


def _common_name_only(world: World, name: str) -> Issued:
    """A certificate of the world's CA naming `name` in its subject's CN alone, no subjectAltName:
    what old tools made, and what every modern client refuses for the name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(world.ca.certificate.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=90))
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(world.ca.key.public_key()), critical=False)
                   .sign(world.ca.key, hashes.SHA256()))
    return Issued(certificate.public_bytes(serialization.Encoding.PEM),
                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


def test_a_certificate_naming_the_mx_only_in_its_common_name_fails(plays):
    _healthy(plays, MX2, certificate=_common_name_only(plays, MX2))
    verdict = _one(plays.run(plays.view(), "mx2"), "STARTTLS")
    assert verdict.status is Status.FAIL, verdict
    assert f"not valid for {MX2}" in verdict.seen and f"only the CN {MX2}" in verdict.seen


def test_imaps_with_the_name_only_in_the_common_name_fails(plays):
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.IMAPS)].certificate = _common_name_only(plays, MX1)
    verdict = _one(plays.run(plays.view(), "mx1"), "IMAPS")
    assert verdict.status is Status.FAIL and "only the CN" in verdict.seen


def test_a_wildcard_certificate_for_the_mx_domain_passes(plays):
    _healthy(plays, MX2, certificate=plays.issue(["*.example.org"]))
    verdict = _one(plays.run(plays.view(), "mx2"), "STARTTLS")
    assert verdict.status is Status.PASS, verdict


def test_an_endless_ehlo_reply_fails_at_its_size_not_as_spamd_at_the_timeout(plays):
    _healthy(plays, MX2, ehlo_flood=True)
    started = time.monotonic()
    results = plays.run(plays.view(timeout=5.0), "mx2")
    assert time.monotonic() - started < 4.0
    verdict = _one(results, "port 25 answers")
    assert verdict.status is Status.FAIL, verdict
    assert "a reply longer than 65536 bytes" in verdict.seen and "spamd" not in verdict.seen
    assert len(verdict.seen) < 600


def test_a_hostile_greeting_stays_one_printable_line(plays):
    from mailsite.results import json_line, result_lines

    _healthy(plays, MX2, greeting=f"220-{MX2} \x1b[2J\x1b]0;owned\x07 hello\r\n220-" + "y" * 3000 + f"\r\n220 {MX2} ESMTP")
    results = plays.run(plays.view(), "mx2")
    greeting = _one(results, "port 25 answers")
    assert greeting.status is Status.PASS  # a multi-line greeting, first word the MX name
    for result in results.values():
        text = "\n".join(result_lines(result))
        assert "\x1b" not in text and "\x07" not in text
        assert len(json_line(result).splitlines()) == 1
        assert len(result.seen) <= 4000 + 60


def test_an_mx_name_without_an_address_is_reported_not_checked(plays):
    del plays.names[MX2]
    results = plays.run(plays.view(), "mx2")
    assert list(results) == [f"{MX2}: port 25 answers as {MX2} over IPv4"]
    verdict = results[f"{MX2}: port 25 answers as {MX2} over IPv4"]
    assert verdict.status is Status.FAIL
    assert "no A record" in verdict.seen and "port 25 not checked from outside over IPv4" in verdict.seen


def test_an_mx_without_the_aaaa_record_the_stack_gives_it_is_reported_not_checked_over_ipv6(plays):
    # A resolver that answered A but not AAAA, or a record never published: the IPv6 side of the
    # MX is not silently left out of a run that exits 0.
    _healthy(plays, MX2)
    results = plays.run(plays.view(FULL_SITE), "mx2")
    verdict = results[f"{MX2}: port 25 answers as {MX2} over IPv6"]
    assert verdict.status is Status.FAIL and "no AAAA record" in verdict.seen and "over IPv6" in verdict.seen
    assert _one(results, "port 25 answers", "over IPv4").status is Status.PASS


def test_an_mx_name_the_resolver_does_not_answer_for_warns_not_checked(plays):
    plays.unanswered.add(MX1)
    results = plays.run(plays.view(timeout=0.5), "mx1")
    verdict = results[f"{MX1}: port 25 answers as {MX1} over IPv4"]
    assert verdict.status is Status.WARN and "cannot tell" in verdict.seen
    assert "port 25, 587, 465 and 993 not checked" in verdict.seen
    assert verdict.seconds < 0.9  # one question, one timeout
    assert [name for name in results if name.startswith(MX1)] == [f"{MX1}: port 25 answers as {MX1} over IPv4"]


def test_every_address_of_an_mx_name_is_checked(plays):
    # A stale A record left for a rebuilt VM's old address: senders try it too.
    _healthy(plays, MX2)
    plays.names[MX2] = f"{ADDRESSES[MX2]}, 127.0.0.99"
    results = plays.run(plays.view(), "mx2")
    good = _one(results, "port 25 answers", f"({ADDRESSES[MX2]})")
    stale = _one(results, "port 25 answers", "(127.0.0.99)")
    assert good.status is Status.PASS
    assert stale.status is Status.FAIL and "closed the connection" in stale.seen


def test_starttls_offered_then_refused_fails_and_probes_go_on_in_clear(plays):
    relay = _healthy(plays, MX2, starttls_reply="454 4.7.0 TLS not available due to local problem")
    results = plays.run(plays.view(), "mx2")
    starttls = _one(results, "STARTTLS")
    assert starttls.status is Status.FAIL and "offered, then refused: 454" in starttls.seen
    assert _one(results, "no open relay").status is Status.PASS
    assert "DATA" not in [line.split()[0].upper() for line in relay.heard]


def test_an_open_relay_refusing_the_probes_sender_is_never_a_pass(plays):
    relay = _healthy(plays, MX3, open_relay=True, mail_reply="550 5.7.1 Sender domain not accepted")
    results = plays.run(plays.view(), "mx3")
    for name in ("no open relay", "unknown recipient"):
        verdict = _one(results, name)
        assert verdict.status is Status.WARN and "MAIL FROM a stranger was refused" in verdict.seen
    assert "RCPT" not in [line.split()[0].upper() for line in relay.heard]


def test_an_mta_sts_policy_with_lf_line_ends_passes(plays):
    # RFC 8461's grammar ends a policy's lines with CRLF or LF: httpd serving an LF file is fine.
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.HTTPS)].http_body = policy_text(SITE).replace("\r\n", "\n")
    verdict = _one(plays.run(plays.view(), "mx1"), "mta-sts.example.org")
    assert verdict.status is Status.PASS, verdict


def test_an_mta_sts_policy_with_a_charset_passes(plays):
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.HTTPS)].http_headers = "Content-Type: text/plain; charset=utf-8\r\n"
    assert _one(plays.run(plays.view(), "mx1"), "mta-sts.example.org").status is Status.PASS


def test_an_mta_sts_policy_behind_a_redirect_fails(plays):
    _primary(plays)
    https = plays.plays[(ADDRESSES[MX1], smtp.HTTPS)]
    https.http_status, https.http_headers = "301 Moved Permanently", "Location: https://example.org/mta-sts.txt\r\n"
    verdict = _one(plays.run(plays.view(), "mx1"), "mta-sts.example.org")
    assert verdict.status is Status.FAIL and "HTTP 301" in verdict.seen and "no redirect" in verdict.fix


def test_an_mta_sts_policy_served_with_an_unverified_certificate_fails(plays):
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.HTTPS)].certificate = plays.issue(
        [f"mta-sts.{d}" for d in SITE.domains], ca=LabCA.new("stranger"))
    verdict = _one(plays.run(plays.view(), "mx1"), "mta-sts.example.org")
    assert verdict.status is Status.FAIL and "does not verify" in verdict.seen


def test_a_huge_mta_sts_body_fails_quickly(plays):
    _primary(plays)
    plays.plays[(ADDRESSES[MX1], smtp.HTTPS)].http_body = policy_text(SITE) + "x" * 1_000_000
    started = time.monotonic()
    verdict = _one(plays.run(plays.view(), "mx1"), "mta-sts.example.org")
    assert verdict.status is Status.FAIL and time.monotonic() - started < 5
    assert len(verdict.seen) < 1000


def test_an_mx_speaking_only_tls_1_1_fails_starttls_and_probes_go_on_in_clear(plays):
    _healthy(plays, MX2, tls_up_to=ssl.TLSVersion.TLSv1_1)
    results = plays.run(plays.view(), "mx2")
    starttls = _one(results, "STARTTLS")
    assert starttls.status is Status.FAIL and "the TLS handshake failed" in starttls.seen, starttls
    assert _one(results, "no open relay").status is Status.PASS


def test_an_open_relay_answering_rcpt_after_the_timeout_is_never_a_pass(plays):
    relay = _healthy(plays, MX3, open_relay=True, rcpt_delay=1.5)
    started = time.monotonic()
    results = plays.run(plays.view(timeout=1.0), "mx3")
    assert time.monotonic() - started < 2.5
    verdict = _one(results, "no open relay")
    assert verdict.status is Status.FAIL and "no answer within 1 s" in verdict.seen
    assert "DATA" not in [line.split()[0].upper() for line in relay.heard]


def test_spamd_with_its_banner_renamed_is_known_by_its_ehlo_answer_never_an_open_relay(plays):
    # spamd -n "sendmail" greets with other words; it still answers EHLO as spamd.c does, then
    # takes every RCPT with 250 ("This is hurting you more than it is hurting me").
    spamd = _healthy(plays, MX2, greeting=f"220 {MX2} ESMTP sendmail; Thu Nov 26 12:00:00 2026", certificate=None,
                     ehlo_reply="250 Hello, spam sender. Pleased to be wasting your time.",
                     open_relay=True, takes_unknown=True)
    results = plays.run(plays.view(), "mx2")
    assert {r.status for r in results.values()} == {Status.WARN}, results
    assert all("spamd answered" in r.seen and "nospamd" in r.fix for r in results.values())
    assert [line.split()[0] for line in spamd.heard] == ["EHLO"]


def _root_and_intermediate(directory: Path) -> tuple[str, LabCA]:
    """A root of a CA file of its own (as Let's Encrypt's ISRG root) and an intermediate it signed
    (as R11), which signs the servers' certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    root = LabCA.new("root")
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = x509.CertificateBuilder().issuer_name(root.certificate.subject).serial_number(x509.random_serial_number())
    root_certificate = (builder.subject_name(root.certificate.subject).public_key(root.key.public_key())
                        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=365))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .sign(root.key, hashes.SHA256()))
    intermediate = LabCA.new("intermediate")
    intermediate_certificate = (
        x509.CertificateBuilder().issuer_name(root.certificate.subject).serial_number(x509.random_serial_number())
        .subject_name(intermediate.certificate.subject).public_key(intermediate.key.public_key())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256()))
    cafile = directory / f"root-{os.urandom(4).hex()}.pem"
    cafile.write_bytes(LabCA(root_certificate, root.key).pem)
    return str(cafile), LabCA(intermediate_certificate, intermediate.key)


def test_a_certificate_served_without_its_intermediate_fails_and_with_it_passes(plays):
    cafile, intermediate = _root_and_intermediate(plays.directory)
    leaf = intermediate.issue([MX2], not_after=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=60))
    _healthy(plays, MX2, certificate=leaf)
    verdict = _one(plays.run(plays.view(cafile=cafile), "mx2"), "STARTTLS")
    assert verdict.status is Status.FAIL and "cannot be verified" in verdict.seen
    assert "the chain included in the certificate file" in verdict.fix
    _healthy(plays, MX2, certificate=Issued(leaf.certificate + intermediate.pem, leaf.key))
    verdict = _one(plays.run(plays.view(cafile=cafile), "mx2"), "STARTTLS")
    assert verdict.status is Status.PASS, verdict


def test_an_mta_sts_host_the_resolver_does_not_answer_for_warns_cannot_tell(plays):
    _primary(plays)
    plays.unanswered.add("mta-sts.example.org")
    results = plays.run(plays.view(timeout=0.5), "mx1")
    verdict = _one(results, "mta-sts.example.org")
    assert verdict.status is Status.WARN and "cannot tell" in verdict.seen, verdict
    assert verdict.seconds < 0.9
    assert _one(results, "mta-sts.example.net").status is Status.PASS
    plays.unanswered.clear()
    del plays.names["mta-sts.example.org"]
    assert _one(plays.run(plays.view(), "mx1"), "mta-sts.example.org").status is Status.FAIL
