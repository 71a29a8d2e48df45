"""Every MX as the world meets it, at each address its name has: port 25's greeting, STARTTLS and its
certificate, no relaying for strangers, unknown recipients refused at RCPT; on the primary,
submission (587) and smtps (465) demanding TLS and AUTH, and IMAPS (993); and the MTA-STS policy
each site domain serves.

One connection per (MX, address, port) serves every check of it: the first check to run makes it,
the others wait for the same result, so a dead MX costs one timeout, not one per check. No probe
ever sends DATA: the relay and recipient probes stop at RCPT, then RSET and QUIT.

SMTP is spoken here over a plain socket, not smtplib: smtplib waits for each byte only as long
as its timeout, and spamd's tarpit answers a byte a second, so it would hold a check for the whole
banner. Every reply here is read within one `view.timeout` in all.
"""

from __future__ import annotations

import datetime
import errno
import http.client
import imaplib
import ipaddress
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dns.exception
import dns.resolver
from cryptography import x509

from ..daemons.acme import JOB as CERTIFICATE_JOB
from ..model import Host
from ..mta_sts import WELL_KNOWN_PATH, policy_hosts, policy_text
from ..results import Status
from .core import Check
from .view import Address, SiteView

AREA = "smtp"
SMTP, SUBMISSION, SMTPS, IMAPS, HTTPS = 25, 587, 465, 993, 443
# Names reserved for tests (RFC 2606), which no site receives mail for: the probe's sender, the
# foreign domain it asks to relay to, and the name it greets with.
PROBE_SENDER_DOMAINS = ("example.net", "example.com", "mailsite-doctor.invalid")
RELAY_TEST_DOMAINS = ("relay-test.invalid", "relay-test.example")
HELO_NAME = "mailsite-doctor.invalid"
PROBE_LOCAL_PART = "mailsite-doctor"
MAX_REPLY = 64 * 1024  # a reply longer than this is not an SMTP server's
SHOWN = 160  # characters of a server's text a result shows
# A server writes a reply line at once; spamd's tarpit writes it a byte a second: this many bytes
# that came one by one are a tarpit, known in a few seconds, not at the timeout.
STUTTER_BYTES = 3

# spamd's banner (spamd.c: "<name> ESMTP spamd IP-based SPAM blocker; <date>"); not a host named spamd.
_SPAMD = re.compile(r"\bESMTP spamd\b|\bIP-based SPAM blocker\b", re.IGNORECASE)
# spamd -n replaces that banner's words; its answer to EHLO stays (spamd.c), and after it spamd
# takes every RCPT with 250, which must not read as an open relay.
_SPAMD_EHLO = re.compile(r"\bspam sender\b.*\bwasting your time\b", re.IGNORECASE)
_SPAMD_FIX = ("pf hands an IPv4 sender it does not know to spamd, not smtpd: run doctor from an address "
              "that skips spamd (pf's <nospamd>: the site's MXes and /etc/mail/nospamd; or one the "
              "bgp-spamd bypass list carries), or read the IPv6 results, which meet smtpd directly")
_X509_EXPIRED, _X509_HOSTNAME_MISMATCH = 10, 62  # OpenSSL's verify codes


def checks(view: SiteView) -> list[Check]:
    """The outside checks of every MX, at every address its MX name has; for a family the MX
    must have (IPv4 always, IPv6 when the stack gives it) and has no address in, one check saying
    it went unchecked over it (never silence, which a run that exits 0 reads as healthy)."""
    hosts = view.site.hosts
    # The names' addresses decide which checks exist: asked at once for every MX (view caches
    # them for the other areas), so a dead resolver costs one timeout here, not one per MX.
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        addresses = dict(zip([host.name for host in hosts], pool.map(view.addresses, hosts)))
    found: list[Check] = []
    for host in hosts:
        had = {address.version for address in addresses[host.name]}
        found += [_unaddressed_check(view, host, version) for version in _families(host) if version not in had]
        # Every address, not one per family: a sender tries any of them, and a stale record left
        # for a rebuilt VM's old address takes a share of the mail to wherever it points now.
        for address in addresses[host.name]:
            found += _host_checks(view, host, address, _family(address, addresses[host.name]))
    found += [_mta_sts_check(view, policy_host) for policy_host in policy_hosts(view.site)]
    return found


def _families(host: Host) -> list[int]:
    """The address families senders must reach the MX over: IPv4 always (spamd, its sync and
    most senders are IPv4 only), IPv6 when the stack gives the host IPv6."""
    return [4] + ([6] if host.ipv6 is not None else [])


def _family(address: Address, every: list[Address]) -> str:
    """"IPv4", or with the address when the name has several of that family."""
    family = f"IPv{address.version}"
    if sum(other.version == address.version for other in every) > 1:
        return f"{family} ({address})"
    return family


def _unaddressed_check(view: SiteView, host: Host, version: int) -> Check:
    mx = host.mx_name
    return Check(f"{mx}: port 25 answers as {mx} over IPv{version}", AREA, host.name,
                 lambda: _unaddressed(view, host, version))


def _unaddressed(view: SiteView, host: Host, version: int) -> tuple[Status, str, str]:
    """Why an MX had no address of a family when the checks were made: none in DNS (FAIL: no
    sender reaches it over that family), or the resolver did not answer (WARN: cannot tell).
    Asked again, as view.addresses does not say which."""
    mx, rdtype = host.mx_name, "A" if version == 4 else "AAAA"
    ports = "port 25" + (", 587, 465 and 993" if host.is_primary else "")
    unchecked = f"its {ports} not checked from outside over IPv{version}"
    try:
        now = [record.address for record in view.resolver.resolve(mx, rdtype, lifetime=view.timeout)]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        now = []
    except dns.exception.DNSException as error:
        return (Status.WARN, f"cannot tell: the resolver gave no {rdtype} answer for {mx} ({type(error).__name__}): {unchecked}",
                "run doctor again, or with --nameserver set to a resolver that answers")
    if now:
        return (Status.WARN, f"{mx} had no {rdtype} record when doctor began, and now has {', '.join(now)}: {unchecked}",
                "run doctor again (a resolver that answers only sometimes: see the DNS checks)")
    why = "no sender can reach it" if version == 4 else "the stack gives it IPv6, and no sender reaches it over IPv6"
    return (Status.FAIL, f"{mx} has no {rdtype} record: {why}, and {unchecked}",
            f"publish {mx}'s {rdtype} record (the DNS checks say which address)")


def _host_checks(view: SiteView, host: Host, address: Address, family: str) -> list[Check]:
    mx = host.mx_name
    port25 = _Once(lambda: _port25_session(view, host, address))

    def check(name: str, run: Callable[[], tuple[Status, str, str]]) -> Check:
        return Check(f"{mx}: {name} over {family}", AREA, host.name, run)

    found = [
        check(f"port 25 answers as {mx}", lambda: _greeting_verdict(port25(), mx)),
        check(f"STARTTLS on port 25 with a certificate for {mx}", lambda: _starttls_verdict(port25(), view, mx)),
        check("refuses to relay for a stranger (no open relay)", lambda: _relay_verdict(port25())),
    ]
    domain = _domain_without_catch_all(view)
    if domain is not None:
        found.append(check(f"refuses an unknown recipient of {domain} at RCPT", lambda: _unknown_verdict(port25(), mx)))
    if host.is_primary:
        found += [
            check("submission (587) demands STARTTLS, then AUTH", lambda: _submission(view, host, address)),
            check("smtps (465) is TLS and demands AUTH", lambda: _smtps(view, host, address)),
            check(f"IMAPS (993) with a certificate for {mx}", lambda: _imaps(view, host, address)),
        ]
    return found


def _domain_without_catch_all(view: SiteView) -> str | None:
    """The site domain an unknown recipient is tried in: one whose unknown local parts are
    refused. A catch-all domain takes every local part, as it is meant to."""
    return next((domain for domain in view.site.domains if domain not in view.site.recipients.catch_all), None)


def _not_site(view: SiteView, candidates: tuple[str, ...]) -> str:
    return next(name for name in candidates if name not in view.site.domains)


class _Once:
    """One piece of network work shared by several checks: done by the first to ask, the others
    wait for it (each still bounded by run_checks' deadline)."""

    def __init__(self, work: Callable[[], _Port25]):
        self._work = work
        self._lock = threading.Lock()
        self._result: _Port25 | None = None

    def __call__(self) -> _Port25:
        with self._lock:
            if self._result is None:
                self._result = self._work()
            return self._result


# SMTP over a socket, each reply read within one timeout.


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # each line's text after the code

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self) -> str:
        return _shown(f"{self.code} {self.text}".strip())

    @property
    def extensions(self) -> set[str]:
        """EHLO's keywords (the first line names the server)."""
        return {line.split()[0].upper() for line in self.lines[1:] if line.split()}


class Unreachable(Exception):
    """The server could not be reached or stopped speaking SMTP: the text says how."""


class NoRouteHere(Unreachable):
    """This machine has no route to the address's family (an admin's network without IPv6): the
    MX may be fine, nothing can be told of it from here."""


def _no_route(address: Address, port: int, error: OSError) -> NoRouteHere:
    return NoRouteHere(f"cannot tell from here: this machine has no route to IPv{address.version} "
                       f"({_where(address, port)}: {error.strerror})")


_NO_ROUTE_FIX = "run doctor from a machine that reaches the Internet over that family too, to check the MX over it"


class Tarpit(Unreachable):
    """A reply that came a byte at a time, or was left unfinished at the timeout: spamd's tarpit."""

    def __init__(self, partial: bytes, seconds: float):
        super().__init__(f"a stuttering answer, {len(partial)} bytes in {seconds:.1f} s: "
                         f"{_shown(partial.decode('utf-8', 'replace'))!r}")


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


class Conversation:
    """One SMTP client connection to `address`:`port`, verifying TLS (when started) for `name`."""

    def __init__(self, address: Address, port: int, timeout: float):
        self.timeout = timeout
        self.buffer = b""
        try:
            self.sock: socket.socket = socket.create_connection((str(address), port), timeout)
        except (TimeoutError, socket.timeout):
            raise Unreachable(f"no connection to {_where(address, port)} within {timeout:g} s") from None
        except OSError as error:
            if error.errno == errno.ENETUNREACH:
                raise _no_route(address, port, error) from None
            raise Unreachable(f"no connection to {_where(address, port)}: {error.strerror or error}") from None

    def close(self) -> None:
        self.sock.close()

    def tls(self, context: ssl.SSLContext, name: str) -> None:
        self.sock.settimeout(self.timeout)  # the handshake's, not what a last read had left
        self.sock = context.wrap_socket(self.sock, server_hostname=name)

    def reply(self) -> Reply:
        deadline = time.monotonic() + self.timeout
        lines: list[str] = []
        size = 0
        while True:
            line = self._line(deadline)
            # A reply of endless short lines (250-...) never fills the buffer: count them all.
            size += len(line) + 2
            if size > MAX_REPLY:
                raise Unreachable(f"a reply longer than {MAX_REPLY} bytes: {_shown(line)!r}...")
            match = re.fullmatch(r"(\d{3})([ -]?)(.*)", line)
            if not match:
                raise Unreachable(f"not an SMTP reply: {_shown(line)!r}")
            lines.append(match.group(3).strip())
            if match.group(2) != "-":
                return Reply(int(match.group(1)), tuple(lines))

    def command(self, line: str) -> Reply:
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(line.encode("ascii") + b"\r\n")
        except OSError as error:
            raise Unreachable(f"the connection broke at {line.split()[0]}: {error.strerror or error}") from None
        return self.reply()

    def quit(self) -> None:
        """RSET and QUIT, as a polite client leaves; a server already gone changes nothing."""
        for line in ("RSET", "QUIT"):
            try:
                self.command(line)
            except (Unreachable, OSError):
                break
        self.close()

    def _line(self, deadline: float) -> str:
        received = b""
        single_bytes = 0
        while b"\n" not in self.buffer:
            if single_bytes >= STUTTER_BYTES:
                raise Tarpit(received, time.monotonic() - deadline + self.timeout)
            left = deadline - time.monotonic()
            if left <= 0:
                if received:
                    raise Tarpit(received, self.timeout)
                raise Unreachable(f"no answer within {self.timeout:g} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except ssl.SSLError as error:
                raise Unreachable(f"TLS broke: {error.reason or error}") from None
            except OSError as error:
                raise Unreachable(f"the connection broke: {error.strerror or error}") from None
            if not chunk:
                raise Unreachable("the server closed the connection" + (f" after {_shown(self.buffer.decode('utf-8', 'replace'))!r}" if self.buffer else ""))
            received += chunk
            self.buffer += chunk
            single_bytes += len(chunk) == 1 and b"\n" not in chunk
            if len(self.buffer) > MAX_REPLY:
                raise Unreachable(f"a reply longer than {MAX_REPLY} bytes")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")


def _where(address: Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


# TLS and the certificate.


def _context(view: SiteView, verify: bool = True) -> ssl.SSLContext:
    if not verify:
        # Only to describe a certificate that failed verification, and to go on with the probes.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=view.cafile)
    # A name only in the subject's CN is no name to a modern client (RFC 9525 dropped the CN as an
    # identity; browsers and MTA-STS senders match subjectAltName): Python's default still falls
    # back to the CN, which would PASS a certificate senders refuse.
    context.hostname_checks_common_name = False
    return context


def _trusted(view: SiteView) -> str:
    return f"the CAs of {view.cafile}" if view.cafile else "this machine's CAs"


@dataclass(frozen=True)
class CertificateSeen:
    """What one TLS handshake showed of a server's certificate."""

    verified: bool
    der: bytes | None  # the server's certificate, verified or not
    error: ssl.SSLCertVerificationError | None = None


def certificate_verdict(seen: CertificateSeen, view: SiteView, name: str) -> tuple[Status, str, str]:
    """PASS for a certificate that verified for `name` and has more than site.doctor's warning
    days left; WARN below them; FAIL for one expired, for another name, or that no CA vouches for."""
    certificate = x509.load_der_x509_certificate(seen.der) if seen.der else None
    names = _names(certificate) if certificate else []
    ends = certificate.not_valid_after_utc if certificate else None
    named = f"names {', '.join(names) or _no_dns_name(certificate)}" if certificate else "was not shown"
    if not seen.verified:
        error = seen.error
        if ends is not None and ends <= view.now or error is not None and error.verify_code == _X509_EXPIRED:
            when = f" on {_day(ends)}" if ends else ""
            return (Status.FAIL, f"the certificate expired{when} ({named})",
                    _renew(name))
        if error is not None and error.verify_code == _X509_HOSTNAME_MISMATCH:
            return (Status.FAIL, f"the certificate is not valid for {name}: it {named}",
                    f"give the host a certificate for {name} (tls.certificate's file for that name), the name the MX records point at")
        reason = error.verify_message if error is not None else "no certificate"
        return (Status.FAIL, f"the certificate cannot be verified against {_trusted(view)}: {reason} (it {named})",
                "have it issued by a CA senders trust (acme.directory: the production directory, not staging), "
                "the chain included in the certificate file")
    assert ends is not None
    left = ends - view.now
    warn_days = view.site.doctor.certificate_warn_days
    if left <= datetime.timedelta(0):
        return (Status.FAIL, f"the certificate expired on {_day(ends)} ({named})",
                _renew(name))
    if left < datetime.timedelta(days=warn_days):
        return (Status.WARN, f"valid for {name}, but expires on {_day(ends)}, in {_days(left)} (under doctor.certificateWarnDays, {warn_days})",
                _renew(name))
    return Status.PASS, f"valid for {name} until {_day(ends)}, verified against {_trusted(view)}", ""


def _renew(name: str) -> str:
    # acme-client renews 30 days ahead: a certificate this close has missed its renewals.
    return f"run /{CERTIFICATE_JOB} on {name}: it renews what is due and says what the CA answered"


def _names(certificate: x509.Certificate) -> list[str]:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return []


def _no_dns_name(certificate: x509.Certificate) -> str:
    common = [str(attribute.value) for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if common:
        return f"no DNS name (subjectAltName), only the CN {', '.join(common)}, which senders ignore"
    return "no DNS name"


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _days(left: datetime.timedelta) -> str:
    days = left.total_seconds() / 86400
    return f"{days:.1f} days" if days < 2 else f"{int(days)} days"


def _handshake(connect: Callable[[ssl.SSLContext], Conversation], view: SiteView,
               ) -> tuple[CertificateSeen, Conversation | None]:
    """A verified handshake by `connect`; when the certificate does not verify, a second, not
    verifying, to show what it is and to go on with the probes over it (None if that fails)."""
    try:
        made = connect(_context(view))
        return CertificateSeen(True, _peer(made)), made
    except ssl.SSLCertVerificationError as error:
        refused = error
    try:
        made = connect(_context(view, verify=False))
    except (Unreachable, _Refused, ssl.SSLError, OSError):
        return CertificateSeen(False, None, refused), None
    return CertificateSeen(False, _peer(made), refused), made


def _peer(conversation: Conversation) -> bytes | None:
    assert isinstance(conversation.sock, ssl.SSLSocket)
    return conversation.sock.getpeercert(binary_form=True)


def _tls_error(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return f"the TLS handshake failed: {error.reason or error}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "the TLS handshake did not finish in time"
    return f"the TLS handshake failed: {error}"


# Port 25: one session for the greeting, STARTTLS, the relay and recipient probes.


@dataclass
class _Port25:
    failed: str = ""  # why the session went no further than it did
    no_route: str = ""  # this machine reaches no address of the family
    spamd: str = ""  # what showed spamd answered, not smtpd
    greeting: Reply | None = None
    ehlo: Reply | None = None
    certificate: CertificateSeen | None = None
    tls_failed: str = ""  # STARTTLS offered, refused or broken
    mail: Reply | None = None
    relay: Reply | None = None
    relay_to: str = ""
    unknown: Reply | None = None
    unknown_to: str = ""
    notes: list[str] = field(default_factory=list)


def _port25_session(view: SiteView, host: Host, address: Address) -> _Port25:
    session = _Port25()
    try:
        conversation = _open25(view, host, address, session)
        if conversation is None:
            return session
        _probe(view, conversation, session)
    except NoRouteHere as error:
        session.no_route = str(error)
    except Unreachable as error:
        session.failed = str(error)
    return session


def _greet(view: SiteView, address: Address, port: int, session: _Port25 | None = None) -> tuple[Conversation, Reply, Reply]:
    conversation = Conversation(address, port, view.timeout)
    try:
        greeting = conversation.reply()
        if session is not None:
            session.greeting = greeting
            if _SPAMD.search(greeting.text):
                session.spamd = f"spamd's banner: {greeting}"
                conversation.close()
                return conversation, greeting, greeting
        ehlo = conversation.command(f"EHLO {HELO_NAME}")
        if session is not None and _SPAMD_EHLO.search(ehlo.text):
            session.spamd = f"spamd's answer to EHLO: {ehlo}"
            conversation.close()
    except Tarpit as error:
        conversation.close()
        if session is not None:
            session.spamd = str(error)
        raise
    except Unreachable:
        conversation.close()
        raise
    return conversation, greeting, ehlo


def _open25(view: SiteView, host: Host, address: Address, session: _Port25) -> Conversation | None:
    """Greeting, EHLO and STARTTLS on port 25 with the certificate verified; the conversation to
    probe over (inside TLS if it could be had), or None when spamd answered or all else failed."""
    try:
        first, _, ehlo = _greet(view, address, SMTP, session)
    except Tarpit:
        return None
    if session.spamd:
        return None
    session.ehlo = ehlo
    if "STARTTLS" not in ehlo.extensions:
        return first
    current: Conversation | None = first

    def starttls(context: ssl.SSLContext) -> Conversation:
        nonlocal current
        if current is None:  # a second connection, after the first's certificate was refused
            current, _, _ = _greet(view, address, SMTP)
        started = current.command("STARTTLS")
        if started.code != 220:
            raise _Refused(started)
        try:
            current.tls(context, host.mx_name)
        except ssl.SSLCertVerificationError:
            current.close()
            current = None
            raise
        return current

    try:
        seen, made = _handshake(starttls, view)
    except _Refused as refusal:
        session.tls_failed = f"STARTTLS was offered, then refused: {refusal.reply}"
        return current
    except (ssl.SSLError, OSError) as error:
        session.tls_failed = _tls_error(error)
        if current is not None:
            current.close()
        session.notes.append("the probes ran without TLS, over a new connection")
        plain, _, _ = _greet(view, address, SMTP)
        return plain
    session.certificate = seen
    if made is None:
        session.failed = "the certificate was refused, and a second connection to go on past it failed"
        return None
    session.ehlo = made.command(f"EHLO {HELO_NAME}")
    return made


class _Refused(Exception):
    def __init__(self, reply: Reply):
        super().__init__(str(reply))
        self.reply = reply


def _probe(view: SiteView, conversation: Conversation, session: _Port25) -> None:
    """One transaction from a stranger: a foreign sender, then a foreign domain's recipient (a
    relay would take it), then an unknown one of a site domain; never DATA."""
    sender = f"{PROBE_LOCAL_PART}@{_not_site(view, PROBE_SENDER_DOMAINS)}"
    try:
        session.mail = conversation.command(f"MAIL FROM:<{sender}>")
        if session.mail.code // 100 != 2:
            return
        session.relay_to = f"{PROBE_LOCAL_PART}@{_not_site(view, RELAY_TEST_DOMAINS)}"
        session.relay = conversation.command(f"RCPT TO:<{session.relay_to}>")
        domain = _domain_without_catch_all(view)
        if domain is not None:
            # Random, so that no user, alias or earlier probe could be it.
            session.unknown_to = f"{PROBE_LOCAL_PART}-{secrets.token_hex(6)}@{domain}"
            session.unknown = conversation.command(f"RCPT TO:<{session.unknown_to}>")
    finally:
        conversation.quit()


def _before(session: _Port25, reached: object, step: str) -> tuple[Status, str, str] | None:
    """The verdict every port-25 check shares when the session stopped before `step`."""
    if session.spamd:
        return Status.WARN, f"spamd answered, not smtpd ({session.spamd})", _SPAMD_FIX
    if session.no_route:
        return Status.WARN, session.no_route, _NO_ROUTE_FIX
    if reached is None:
        why = session.failed or "the session ended early"
        if session.greeting is not None and session.failed:
            why = f"greeting {session.greeting}, then {session.failed}"
        if session.mail is not None and session.mail.code // 100 != 2:
            why = f"MAIL FROM a stranger was refused ({session.mail}), so {step} was never asked"
            return Status.WARN, why, "a server that refuses every stranger's mail receives none: read smtpd's log for why"
        fix = "make the MX answer on port 25 from anywhere: smtpd running (rcctl check smtpd), pf and the cloud firewall passing tcp/25"
        if session.greeting is None and "within" in why:
            # Many home and office networks drop outgoing port 25: then every MX looks dead from here.
            fix += "; if every MX fails so, this machine's network may block outgoing port 25: run doctor from a server"
        return Status.FAIL, why, fix
    return None


def _greeting_verdict(session: _Port25, mx: str) -> tuple[Status, str, str]:
    stopped = _before(session, session.ehlo, "EHLO")
    if stopped:
        return stopped
    assert session.greeting is not None and session.ehlo is not None
    said = [session.greeting.text.split()[0] if session.greeting.text.split() else "",
            session.ehlo.lines[0].split()[0] if session.ehlo.lines[0].split() else ""]
    seen = f"greeting {session.greeting}; EHLO {session.ehlo.code} {_shown(session.ehlo.lines[0])}"
    if session.greeting.code != 220:
        return Status.FAIL, seen, "smtpd greets a sender with 220 when it takes mail: read its log for why it refuses"
    if any(word.lower().rstrip(".") != mx.lower() for word in said):
        return (Status.FAIL, seen, f"the MX must greet as {mx}, the name its MX record, PTR and certificate carry: "
                                   f"set the host's name (/etc/myname) or smtpd's listener hostname to it; if every MX "
                                   "greets with the same other name, this machine's network hands outgoing port 25 to "
                                   "its own server (many ISPs do): run doctor from a server")
    return Status.PASS, seen, ""


def _starttls_verdict(session: _Port25, view: SiteView, mx: str) -> tuple[Status, str, str]:
    stopped = _before(session, session.ehlo, "STARTTLS")
    if stopped:
        return stopped
    if session.tls_failed:
        return Status.FAIL, session.tls_failed, f"smtpd's pki {mx} must hold a certificate and key it can use: read its log"
    if session.certificate is None:
        return (Status.FAIL, "STARTTLS is not offered on port 25: senders deliver in clear, and MTA-STS senders not at all",
                f"listen on the egress interface with tls pki {mx} in smtpd.conf")
    return certificate_verdict(session.certificate, view, mx)


def _relay_verdict(session: _Port25) -> tuple[Status, str, str]:
    stopped = _before(session, session.relay, "RCPT")
    if stopped:
        return stopped
    assert session.relay is not None
    said = f"RCPT TO:<{session.relay_to}> from a stranger: {session.relay}"
    if session.relay.code // 100 == 5:
        return Status.PASS, _with_notes(session, said), ""
    if session.relay.code // 100 == 4:
        return (Status.WARN, _with_notes(session, said + " (deferred, not refused)"),
                "a relay refusal is final (5xx): read smtpd's log for what it deferred")
    return (Status.FAIL, _with_notes(session, said + ": an OPEN RELAY, anyone can send mail through it (the probe stopped there, nothing was sent)"),
            "only authenticated users and the host itself may relay out: match from auth / from local for any, never from any for any, in smtpd.conf")


def _unknown_verdict(session: _Port25, mx: str) -> tuple[Status, str, str]:
    stopped = _before(session, session.unknown, "RCPT")
    if stopped:
        return stopped
    assert session.unknown is not None
    said = f"RCPT TO:<{session.unknown_to}>: {session.unknown}"
    if session.unknown.code // 100 == 5:
        return Status.PASS, _with_notes(session, said), ""
    if session.unknown.code // 100 == 4:
        return (Status.WARN, _with_notes(session, said + " (deferred, not refused)"),
                "an unknown recipient's refusal is final (5xx), or the sender retries for days: read smtpd's log")
    return (Status.FAIL, _with_notes(session, said + f": {mx} accepts mail for a recipient the site does not have, and would "
                                                     "bounce it later (backscatter to forged senders)"),
            "match only the site's recipients (rcpt-to <recipients> on a backup, the virtuals table on the primary) in smtpd.conf")


def _with_notes(session: _Port25, said: str) -> str:
    return "; ".join([said, *session.notes])


# The primary's submission, smtps and IMAPS.


def _submission(view: SiteView, host: Host, address: Address) -> tuple[Status, str, str]:
    mx = host.mx_name
    try:
        conversation, _, ehlo = _greet(view, address, SUBMISSION)
    except Unreachable as error:
        return _closed(SUBMISSION, error)
    seen: list[str] = []
    try:
        if "AUTH" in ehlo.extensions:
            conversation.quit()
            return Status.FAIL, "AUTH is offered before STARTTLS: passwords could cross in clear", _TLS_REQUIRE_FIX
        if "STARTTLS" not in ehlo.extensions:
            conversation.quit()
            return Status.FAIL, "STARTTLS is not offered on 587: users cannot submit mail safely", _TLS_REQUIRE_FIX
        before_tls = conversation.command(f"MAIL FROM:<{PROBE_LOCAL_PART}@{view.site.domains[0]}>")
        if before_tls.code // 100 != 5:
            conversation.quit()
            return Status.FAIL, f"MAIL FROM before STARTTLS: {before_tls}", _TLS_REQUIRE_FIX
        seen.append(f"MAIL before STARTTLS: {before_tls.code}")
        started = conversation.command("STARTTLS")
        if started.code != 220:
            conversation.quit()
            return Status.FAIL, f"STARTTLS was offered, then refused: {started}", _TLS_REQUIRE_FIX
        try:
            conversation.tls(_context(view), mx)
        except ssl.SSLCertVerificationError as error:
            conversation.close()
            return certificate_verdict(CertificateSeen(False, _unverified(view, mx, address, SUBMISSION, starttls=True), error), view, mx)
        except (ssl.SSLError, OSError) as error:
            conversation.close()
            return Status.FAIL, _tls_error(error), f"smtpd's pki {mx} must hold a certificate and key it can use: read its log"
        certificate = certificate_verdict(CertificateSeen(True, _peer(conversation)), view, mx)
        return _auth_demanded(view, conversation, seen, certificate, "587")
    except Unreachable as error:
        conversation.close()
        return Status.FAIL, f"{'; '.join(seen + [str(error)])}", "read smtpd's log on the primary"


_TLS_REQUIRE_FIX = ("listen on the egress interface port submission tls-require ... auth <credentials> in smtpd.conf: "
                    "STARTTLS first, AUTH only inside it")


def _auth_demanded(view: SiteView, conversation: Conversation, seen: list[str], certificate: tuple[Status, str, str],
                   port: str) -> tuple[Status, str, str]:
    """Inside TLS: AUTH offered, and MAIL without it refused."""
    ehlo = conversation.command(f"EHLO {HELO_NAME}")
    if "AUTH" not in ehlo.extensions:
        conversation.quit()
        return Status.FAIL, f"AUTH is not offered inside TLS on {port}: the site's users cannot send", \
            f"listen ... auth <credentials> on port {port} in smtpd.conf"
    mail = conversation.command(f"MAIL FROM:<{PROBE_LOCAL_PART}@{view.site.domains[0]}>")
    conversation.quit()
    seen.append(f"inside TLS, AUTH {' '.join(_auth_mechanisms(ehlo))}; MAIL without AUTH: {mail}")
    if mail.code // 100 != 5:
        return (Status.FAIL, "; ".join(seen) + ": anyone can send through it without a password",
                f"listen ... auth <credentials> (never auth-optional) on port {port} in smtpd.conf")
    status, said, fix = certificate
    return status, "; ".join(seen + [said]), fix


def _auth_mechanisms(ehlo: Reply) -> list[str]:
    for line in ehlo.lines[1:]:
        words = line.split()
        if words and words[0].upper() == "AUTH":
            return words[1:]
    return []


def _smtps(view: SiteView, host: Host, address: Address) -> tuple[Status, str, str]:
    mx = host.mx_name
    try:
        conversation = Conversation(address, SMTPS, view.timeout)
    except Unreachable as error:
        return _closed(SMTPS, error)
    try:
        conversation.tls(_context(view), mx)
    except ssl.SSLCertVerificationError as error:
        conversation.close()
        return certificate_verdict(CertificateSeen(False, _unverified(view, mx, address, SMTPS), error), view, mx)
    except (ssl.SSLError, OSError) as error:
        conversation.close()
        return Status.FAIL, f"465 is not TLS from the first byte: {_tls_error(error)}", \
            f"listen on the egress interface smtps pki {mx} auth <credentials> in smtpd.conf"
    certificate = certificate_verdict(CertificateSeen(True, _peer(conversation)), view, mx)
    try:
        greeting = conversation.reply()
        if greeting.code != 220:
            conversation.quit()
            return Status.FAIL, f"greeting {greeting}", "read smtpd's log on the primary"
        return _auth_demanded(view, conversation, [f"TLS at once, greeting {greeting.code}"], certificate, "465")
    except Unreachable as error:
        conversation.close()
        return Status.FAIL, str(error), "read smtpd's log on the primary"


def _unverified(view: SiteView, name: str, address: Address, port: int, starttls: bool = False) -> bytes | None:
    """The certificate a server shows, not verified: what a FAIL names. None if it cannot be had."""
    try:
        if starttls:
            conversation, _, _ = _greet(view, address, port)
            if conversation.command("STARTTLS").code != 220:
                conversation.close()
                return None
        else:
            conversation = Conversation(address, port, view.timeout)
        conversation.tls(_context(view, verify=False), name)
        der = _peer(conversation)
        conversation.close()
        return der
    except (Unreachable, OSError):
        return None


def _closed(port: int, error: Exception) -> tuple[Status, str, str]:
    if isinstance(error, NoRouteHere):
        return Status.WARN, str(error), _NO_ROUTE_FIX
    return Status.FAIL, str(error), f"smtpd on the primary must listen on port {port} and pf and the cloud firewall pass it"


class _IMAPS(imaplib.IMAP4_SSL):
    """IMAPS to one address, its certificate verified for the MX name."""

    def __init__(self, address: Address, name: str, context: ssl.SSLContext, timeout: float):
        self.name = name
        super().__init__(str(address), IMAPS, ssl_context=context, timeout=timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.name)


def _imaps(view: SiteView, host: Host, address: Address) -> tuple[Status, str, str]:
    mx = host.mx_name
    try:
        # imaplib reads the greeting and asks CAPABILITY as it connects; no login, ever.
        client = _IMAPS(address, mx, _context(view), view.timeout)
    except ssl.SSLCertVerificationError as error:
        return certificate_verdict(CertificateSeen(False, _unverified(view, mx, address, IMAPS), error), view, mx)
    except (TimeoutError, socket.timeout):
        return Status.FAIL, f"no IMAPS answer from {_where(address, IMAPS)} within {view.timeout:g} s", _IMAPS_FIX
    except ssl.SSLError as error:
        return Status.FAIL, _tls_error(error), _IMAPS_FIX
    except OSError as error:
        if error.errno == errno.ENETUNREACH:
            return _closed(IMAPS, _no_route(address, IMAPS, error))
        return Status.FAIL, f"no IMAPS at {_where(address, IMAPS)}: {error.strerror or error}", _IMAPS_FIX
    except imaplib.IMAP4.error as error:
        return Status.FAIL, f"no IMAPS at {_where(address, IMAPS)}: {error}", _IMAPS_FIX
    assert isinstance(client.sock, ssl.SSLSocket)
    der = client.sock.getpeercert(binary_form=True)
    capabilities = [str(capability) for capability in client.capabilities]
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        pass
    if "IMAP4REV1" not in (capability.upper() for capability in capabilities):
        return Status.FAIL, f"not an IMAP server: capabilities {_shown(' '.join(capabilities))}", _IMAPS_FIX
    status, said, fix = certificate_verdict(CertificateSeen(True, der), view, mx)
    return status, f"IMAP4rev1 over TLS; {said}", fix


_IMAPS_FIX = "Dovecot on the primary serves IMAPS on 993 (doveadm service status imap-login; pf and the cloud firewall pass tcp/993)"


# MTA-STS: the policy each site domain serves.


def _mta_sts_check(view: SiteView, host: str) -> Check:
    return Check(f"{host}: serves the site's MTA-STS policy", AREA, view.site.primary.name,
                 lambda: _mta_sts(view, host))


def _mta_sts(view: SiteView, host: str) -> tuple[Status, str, str]:
    url = f"https://{host}{WELL_KNOWN_PATH}"

    def ask(rdtype: str) -> tuple[list[Address], str]:
        try:
            answer = view.resolver.resolve(host, rdtype, lifetime=view.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], ""
        except dns.exception.DNSException as error:
            return [], f"{rdtype}: {type(error).__name__}"
        return [ipaddress.ip_address(record.address) for record in answer], ""

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, ("A", "AAAA")))
    addresses = [address for found, _ in answers for address in found]
    troubles = [trouble for _, trouble in answers if trouble]
    if not addresses and troubles:
        # A resolver that did not answer says nothing of the policy: not a FAIL of the site.
        return (Status.WARN, f"cannot tell: the resolver gave no answer for {host} ({'; '.join(troubles)})",
                "run doctor again, or with --nameserver set to a resolver that answers")
    if not addresses:
        return Status.FAIL, f"{host} has no address in DNS", f"publish {host} with the primary's addresses (the DNS checks say what is missing)"
    address = addresses[0]
    context = _context(view)

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            self.sock = context.wrap_socket(socket.create_connection((str(address), HTTPS), view.timeout), server_hostname=host)

    connection = Connection(host, HTTPS, context=context, timeout=view.timeout)
    try:
        connection.request("GET", WELL_KNOWN_PATH, headers={"User-Agent": "mailsite-doctor"})
        response = connection.getresponse()
        body = response.read(MAX_REPLY)
    except ssl.SSLCertVerificationError as error:
        return (Status.FAIL, f"{url}: the certificate does not verify for {host} against {_trusted(view)}: {error.verify_message}",
                f"the primary's httpd must serve {host} with a certificate for that name (acme-client's MTA-STS certificate)")
    except (OSError, http.client.HTTPException) as error:
        return Status.FAIL, f"{url} from {address}: {getattr(error, 'strerror', None) or error or type(error).__name__}", \
            "the primary's httpd serves the policy on 443: rcctl check httpd; pf and the cloud firewall pass tcp/443"
    finally:
        connection.close()
    if response.status != 200:
        return Status.FAIL, f"{url}: HTTP {response.status} {response.reason}", \
            "the primary's httpd must answer the policy's path itself (RFC 8461: senders follow no redirect)"
    kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if kind != "text/plain":
        return Status.FAIL, f"{url}: Content-Type {kind or 'none'}, not text/plain (senders refuse it)", \
            "serve the policy as text/plain (httpd.conf's types for the well-known path)"
    want = policy_text(view.site)
    text = body.decode("utf-8", "replace")
    if _policy_fields(text) != _policy_fields(want):
        return (Status.FAIL, f"{url} serves {_shown(' | '.join(text.splitlines()))!r}, the stack's policy is {' | '.join(want.splitlines())!r}",
                "deploy the image rendered from this stack on the primary (its httpd serves the policy it was baked with)")
    return Status.PASS, f"{url} from {address}: the stack's policy ({' | '.join(want.splitlines()[1:-1])})", ""


def _policy_fields(text: str) -> list[tuple[str, str]]:
    """A policy as a sender reads it (RFC 8461 3.2): key/value lines ended by CRLF or LF alike,
    blanks around them dropped, in any order; a server's LF file is the stack's CRLF policy."""
    fields = []
    for line in text.replace("\r\n", "\n").split("\n"):
        key, colon, value = line.partition(":")
        if line.strip():
            fields.append((key.strip(), value.strip()) if colon else (line.strip(), ""))
    return sorted(fields)
