"""Mail in the lab: swaks from the "internet" node, and what the hosts did with it (their
maildirs, queues, spools and logs)."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .procs import in_network, run, wait_until

if TYPE_CHECKING:
    from .lab import Lab

SENDER = "someone@internet.test"  # a stranger: .test is reserved and never a site domain
SENDER_HELO = "internet.test"


@dataclass(frozen=True)
class Sent:
    status: int  # swaks's exit status: 0 accepted, 24 every recipient refused, 2 no connection
    transcript: str

    @property
    def accepted(self) -> bool:
        return self.status == 0

    @property
    def refused_permanently(self) -> bool:
        """A recipient refused with a 5xx reply: the sender is told at once, nothing bounces later."""
        return self.status == 24 and any(line.startswith("<** 5") for line in self.transcript.splitlines())


def send(lab: Lab, via: str, to: str, subject: str, body: str = "") -> Sent:
    """One message from the internet node to the MX `via`, by its address (as a sender's MTA
    would after its MX lookup)."""
    mx = lab.plan.node(via)
    argv = ["swaks", "--server", str(mx.ipv4), "--to", to, "--from", SENDER, "--helo", SENDER_HELO,
            "--header", f"Subject: {subject}", "--body", body or subject, "--timeout", "15"]
    result = run(in_network(lab.plan.internet.namespace, argv), timeout=30)
    return Sent(result.returncode, result.stdout + result.stderr)


def recipient_taken(lab: Lab, via: str, to: str) -> Sent:
    """Whether the MX `via` takes `to` at RCPT, from a stranger on the internet; the session ends
    there, so nothing is queued, relayed or delivered."""
    mx = lab.plan.node(via)
    argv = ["swaks", "--server", str(mx.ipv4), "--to", to, "--from", SENDER, "--helo", SENDER_HELO,
            "--quit-after", "RCPT", "--timeout", "15"]
    result = run(in_network(lab.plan.internet.namespace, argv), timeout=30)
    return Sent(result.returncode, result.stdout + result.stderr)


def delivered(lab: Lab, marker: str) -> list[Path]:
    """The messages holding `marker` in any mailbox on the primary (new and read alike)."""
    homes = lab.homes(lab.plan.site.primary.name)
    return [path for path in sorted(homes.glob("*/Maildir/*/*")) if path.is_file() and marker.encode() in path.read_bytes()]


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
