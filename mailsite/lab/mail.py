"""Mail in the lab: swaks on the "internet" node, as a stranger's MTA or as a site user's mail
client, and what the hosts did with it (their maildirs, queues, spools and logs)."""

from __future__ import annotations

import itertools
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from .procs import wait_until
from .site import LAB_CA

if TYPE_CHECKING:
    from .lab import Lab

SENDER = "someone@internet.test"  # a stranger: .test is reserved and never a site domain
SENDER_HELO = "internet.test"
SUBMISSION, SMTPS = 587, 465

# swaks marks each reply from the server: `<-` in clear, `<~` inside TLS; an error reply `<**` in
# clear, `<~*` inside TLS.
_ERROR_REPLY = re.compile(r"^<(\*\*|~\*) ")
# re.M: ^ and $ are the transcript's line starts and ends (swaks prints the PEM a line at a time).
_CERTIFICATE = re.compile(r"^=== (-----BEGIN CERTIFICATE-----$.*?^)=== (-----END CERTIFICATE-----)$", re.M | re.S)


@dataclass(frozen=True)
class Sent:
    status: int  # swaks's exit status: 0 accepted, 23 MAIL refused, 24 every recipient refused,
    # 28 AUTH refused, 29 TLS failed (a certificate refused too), 2 no connection
    transcript: str  # never holds a password: swaks shows it as PROVIDED_BUT_REMOVED

    @property
    def accepted(self) -> bool:
        return self.status == 0

    @property
    def refusal(self) -> str:
        """The server's first error reply ("530 5.5.1 ..."), "" if it refused nothing."""
        return next((_ERROR_REPLY.sub("", line) for line in self.transcript.splitlines() if _ERROR_REPLY.match(line)), "")

    @property
    def refused_permanently(self) -> bool:
        """A recipient refused with a 5xx reply: the sender is told at once, nothing bounces later."""
        return self.status == 24 and self.refusal.startswith("5")

    @property
    def offered_in_clear(self) -> list[str]:
        """The extensions the server's EHLO reply offered before any TLS ("STARTTLS", "SIZE 36700160")."""
        lines = self.transcript.splitlines()
        ehlo = next((index for index, line in enumerate(lines) if line.startswith(" -> EHLO ")), len(lines))
        reply = itertools.takewhile(lambda line: line.startswith(("<-  250-", "<-  250 ")), lines[ehlo + 1:])
        return [line[8:] for line in reply][1:]  # the first line is the greeting

    @property
    def tls(self) -> str:
        """The protocol and cipher swaks and the server agreed on ("TLSv1.3:TLS_AES_256_GCM_SHA384:256"),
        "" when the session stayed in clear."""
        found = re.search(r"^=== TLS started with cipher (\S+)", self.transcript, re.M)
        return found.group(1) if found else ""

    @property
    def certificate_check(self) -> str:
        """What swaks concluded of the server's certificate ("passed CA verification, passed host
        verification (using host mx1.example.org to verify)"), "" if it saw none."""
        found = re.search(r"^=== TLS peer certificate (.*)$", self.transcript, re.M)
        return found.group(1) if found else ""

    @property
    def peer_certificate(self) -> str:
        """The certificate the server presented, as PEM, when asked for (verifying())."""
        found = _CERTIFICATE.search(self.transcript)
        if not found:
            return ""
        return "".join(line.removeprefix("=== ") + "\n" for line in (found.group(1) + found.group(2)).splitlines())


def _swaks(lab: Lab, server: str, options: Sequence[str], password: str | None = None) -> Sent:
    """swaks on the internet node. A password goes in on stdin, at its prompt: in argv anyone on
    this machine could read it (/proc/PID/cmdline); --auth-hide-password keeps it, and its base64,
    out of the transcript."""
    argv = ["swaks", "--server", server, "--timeout", "15", *options]
    if password is not None:
        argv += ["--auth", "PLAIN", "--auth-password", "--auth-hide-password"]
    result = lab.run_in(lab.plan.internet.name, argv, timeout=30,
                        input=None if password is None else password + "\n")
    return Sent(result.returncode, result.stdout + result.stderr)


def plain_body(subject: str) -> str:
    """A body as a person writes one, the marker first: the marker alone reads to rspamd as a
    tracking id (TRACKER_ID, 3.8) and would push a stranger's test message over junkScore."""
    return f"{subject}\n\nHello from the lab's internet node: a test message, nothing to do.\n"


def send(lab: Lab, via: str, to: str, subject: str, body: str = "", *, tls: bool = True, sender: str = SENDER,
         headers: Sequence[str] = ()) -> Sent:
    """One message from the internet node to the MX `via`, by its address (as a sender's MTA
    would after its MX lookup), over STARTTLS as today's MTAs send; like most of them, it takes
    whatever certificate it is shown (verifying() checks them). `tls=False`: in clear. `sender`:
    the MAIL FROM address (one of the outside domain gets its bounces); `headers`: more header
    lines ("Message-Id: <...>"), each in place of swaks's own of that name."""
    mx = lab.plan.node(via)
    options = ["--to", to, "--from", sender, "--helo", SENDER_HELO, "--header", f"Subject: {subject}",
               "--body", body or plain_body(subject)]
    for header in headers:
        options += ["--header", header]
    return _swaks(lab, str(mx.ipv4), options + (["--tls"] if tls else []))


def recipient_taken(lab: Lab, via: str, to: str) -> Sent:
    """Whether the MX `via` takes `to` at RCPT, from a stranger on the internet; the session ends
    there, so nothing is queued, relayed or delivered. In clear: a public MX must not require
    STARTTLS (RFC 3207), so every sender gets the same answers."""
    mx = lab.plan.node(via)
    options = ["--to", to, "--from", SENDER, "--helo", SENDER_HELO, "--quit-after", "RCPT"]
    return _swaks(lab, str(mx.ipv4), options)


Protection = Literal["starttls", "smtps", "none"]


def submit(lab: Lab, user: str, to: str, subject: str, *, password: str | None, protection: Protection = "starttls",
           quit_after: str | None = None, sender: str | None = None, headers: Sequence[str] = ()) -> Sent:
    """A site user's mail client on the internet node submitting `to` through the primary: on the
    submission port with STARTTLS ("starttls") or without ("none"), or on the smtps port, TLS from
    the first byte ("smtps"); authenticated as `user` with `password` (AUTH PLAIN), None: without
    AUTH. `quit_after` ("RCPT"): the session ends there and nothing is sent. `sender`: the MAIL
    FROM address, the user's own in the site's first domain unless given; `headers`: header lines
    ("From: ..."), each in place of swaks's own of that name."""
    site = lab.plan.site
    primary = lab.plan.node(site.primary.name)
    options = ["--port", str(SMTPS if protection == "smtps" else SUBMISSION), "--to", to,
               "--from", sender or f"{user}@{site.domains[0]}", "--helo", SENDER_HELO, "--header", f"Subject: {subject}",
               "--body", plain_body(subject)]
    for header in headers:
        options += ["--header", header]
    options += {"starttls": ["--tls"], "smtps": ["--tls-on-connect"], "none": []}[protection]
    if password is not None:
        options += ["--auth-user", user]
    if quit_after:
        options += ["--quit-after", quit_after]
    return _swaks(lab, str(primary.ipv4), options, password)


def verifying(lab: Lab, via: str, name: str, *, smtps: bool = False, lab_ca_only: bool = False) -> Sent:
    """A client that checks certificates, as an MTA-STS sender or a mail client does: STARTTLS on
    port 25 of the MX `via` (TLS at once on 465: `smtps`), the certificate checked for `name`
    against the CAs the internet node trusts (its CA bundle: Debian's and the lab's), or against
    the lab CA alone (`lab_ca_only`); it asks for the certificate, says EHLO and leaves. A
    certificate refused is swaks status 29, before any mail command."""
    mx = lab.plan.node(via)
    options = ["--tls-on-connect", "--port", str(SMTPS)] if smtps else ["--tls"]
    options += ["--tls-verify", "--tls-verify-target", name, "--tls-get-peer-cert", "--helo", SENDER_HELO,
                "--quit-after", "EHLO"]
    if lab_ca_only:
        options += ["--tls-ca-path", f"/{LAB_CA}"]
    return _swaks(lab, str(mx.ipv4), options)


def issued_by(ca_certificate: Path, certificate: str, name: str) -> str:
    """Why `certificate` (PEM) is not a server certificate for `name` under the CA in
    `ca_certificate`, checked here, by cryptography's own verifier (not the client's); "" if it is."""
    if not certificate:
        return "no certificate"
    store = Store([x509.load_pem_x509_certificate(ca_certificate.read_bytes())])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
    try:
        verifier.verify(x509.load_pem_x509_certificate(certificate.encode()), [])
    except VerificationError as error:
        return str(error)
    return ""


def received_headers(message: bytes) -> list[str]:
    """Every `Received:` header of a delivered message, newest first, each folded onto one line."""
    headers = message.split(b"\n\n", 1)[0].decode(errors="replace").replace("\n\t", " ").replace("\n ", " ")
    return [line for line in headers.splitlines() if line.startswith("Received:")]


def received_chain(message: bytes) -> list[str]:
    """The MTAs' `Received:` headers of a delivered message, newest first: the hops it made over
    SMTP, without the one Dovecot's LMTP adds as it stores the message (stored_by)."""
    return [hop for hop in received_headers(message) if not _LMTP_HOP.search(hop)]


_LMTP_HOP = re.compile(r" with LMTP id ")


def stored_by(message: bytes) -> str:
    """The `Received:` header Dovecot wrote as it took the message over LMTP ("from localhost by
    mx1.example.org with LMTP ..."), "" if it holds none: the store, not smtpd, wrote it to disk."""
    return next((hop for hop in received_headers(message) if _LMTP_HOP.search(hop)), "")


def received_by(message: bytes, mx_name: str) -> str:
    """The `Received:` header the MX named `mx_name` wrote on `message`, "" if none did."""
    return next((hop for hop in received_chain(message) if f" by {mx_name} " in hop), "")


def over_tls(hop: str) -> bool:
    """Whether smtpd's `Received:` header says the session was TLS: it writes ESMTPS (ESMTPSA after
    AUTH) and the protocol and cipher, `(TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)`."""
    return bool(re.search(r" with ESMTPSA? \S+ \S+ \(TLSv1\.[0-9]:", hop))


def delivered(lab: Lab, marker: str) -> list[Path]:
    """The messages holding `marker` in any mailbox on the primary, in any folder (new and read
    alike), as Dovecot stored them on the mail volume. A message being written sits in tmp/ and
    is renamed into new/ when whole: it is not delivered yet, and may be gone from tmp/ by the
    time it would be read."""
    return [path for path in stored(lab) if _holds(path, marker)]


def stored(lab: Lab) -> list[Path]:
    """Every message in every mailbox on the primary: <user>/Maildir/{new,cur}/ for the INBOX,
    <user>/Maildir/.<folder>/{new,cur}/ for the others."""
    homes = lab.mailboxes(lab.plan.site.primary.name)
    return [path for path in sorted(homes.glob("*/Maildir/*/*")) + sorted(homes.glob("*/Maildir/.*/*/*"))
            if path.parent.name in ("new", "cur")]


def mailbox_of(lab: Lab, path: Path) -> str:
    """The user whose mailbox holds the stored message at `path`."""
    return path.relative_to(lab.mailboxes(lab.plan.site.primary.name)).parts[0]


def _holds(path: Path, marker: str) -> bool:
    try:
        return marker.encode() in path.read_bytes()
    except FileNotFoundError:  # moved from new/ to cur/ meanwhile: found there
        return False


def queue(lab: Lab, host: str) -> list[str]:
    """`smtpctl show queue` on the host: one line per envelope (id|family|...|rcpt|...)."""
    result = lab.run_in(host, ["smtpctl", "show", "queue"], timeout=10)
    return [line for line in result.stdout.splitlines() if line.strip()]


def flush(lab: Lab, host: str, done: Callable[[], object], timeout: float) -> bool:
    """Retry the host's queue now and again until `done()`, as an admin does once the primary is
    back: an envelope still in flight when `smtpctl schedule all` runs misses it, then waits out
    smtpd's retry delay (minutes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lab.run_in(host, ["smtpctl", "schedule", "all"], timeout=10)
        if wait_until(done, min(3.0, max(deadline - time.monotonic(), 0)), 0.1):
            return True
    return bool(done())


def readable(data: bytes, marker: bytes) -> bool:
    """Whether `marker` can be read in `data`, as is or once decompressed: smtpd's `queue
    compression` alone would hide it from a plain search, encryption must hide it from both."""
    if marker in data:
        return True
    try:
        return marker in zlib.decompressobj(47).decompress(data)  # 47: gzip or zlib header
    except zlib.error:
        return False


def spool_files_revealing(lab: Lab, host: str, marker: str) -> list[Path]:
    return [
        path for path in sorted(lab.spool(host).rglob("*"))
        if path.is_file() and readable(path.read_bytes(), marker.encode())
    ]


def spool_files(lab: Lab, host: str) -> list[Path]:
    return [path for path in lab.spool(host).rglob("*") if path.is_file()]


def smtpd_log(lab: Lab, host: str) -> str:
    return lab.log(host, "smtpd").read_text(errors="replace")


def relay_sessions(lab: Lab, host: str, since: int = 0) -> list[list[str]]:
    """For each message `host` relayed (an mta delivery, Ok) after line `since` of its smtpd log,
    the log lines of the session that carried it. smtpd logs how a session connected
    (`address=smtp+tls://...` when STARTTLS is required) and its certificate check (`cert-check
    result="valid"`) once, when it opens: a session kept open carries later messages too."""
    lines = smtpd_log(lab, host).splitlines()
    sessions: dict[str, list[str]] = {}
    for line in lines:
        if " mta " in line:
            sessions.setdefault(line.split(" ", 1)[0], []).append(line)
    relayed = [line for line in lines[since:] if " mta delivery " in line and 'result="Ok"' in line]
    return [sessions[line.split(" ", 1)[0]] for line in relayed]
