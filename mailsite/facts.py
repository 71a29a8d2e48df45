"""What a host says about itself, read through its HostControl and never changed: smtpd's state
and queue, the key versions its image carries, bgpd's sessions, file systems, certificates. Rotation, the
drain and `doctor` read these.

Each fact is a pure parser of a command's output and a reader that runs the command, so the
parsing is tested on text and the reading on real hosts (the lab).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

from .daemons.basics import KEY_VERSIONS as KEY_VERSIONS_FILE
from .hosts import ControlError, HostControl

# Written into every image with the host's basics: which key versions it carries, never the keys.
KEY_VERSIONS = f"/{KEY_VERSIONS_FILE}"

_ENVELOPE = re.compile(r"^([0-9a-f]{16})\|")


def smtp_status(host: HostControl) -> str:
    """`smtpctl show status`: "SMTP running" or "SMTP paused", and the MDA's and MTA's state."""
    return host.run("smtpctl", "show", "status")


def answers_smtp(host: HostControl) -> bool:
    """smtpd runs and takes mail, as smtpd itself says. Not a TCP probe of port 25: from
    outside, pf hands unknown IPv4 clients to spamd, which answers whether smtpd runs or not."""
    try:
        return "SMTP running" in smtp_status(host)
    except ControlError:
        return False


def queued_envelopes(show_queue: str) -> list[str]:
    """`smtpctl show queue` lines are `evpid|type|...`; one per envelope still queued."""
    return [line for line in show_queue.splitlines() if _ENVELOPE.match(line)]


def envelope_recipient(line: str) -> str:
    """The recipient of one `smtpctl show queue` line (its sixth field)."""
    try:
        return parse_envelope(line).recipient  # a sender's `|` shifts the sixth field
    except ValueError:
        parts = line.split("|")
        return parts[5] if len(parts) > 5 else "?"


def queue(host: HostControl) -> list[str]:
    """The envelopes the host still holds, one `smtpctl show queue` line each."""
    return queued_envelopes(host.run("smtpctl", "show", "queue"))


def parse_key_versions(text: str) -> dict[str, str]:
    """`name version` lines (`queue-key 3f2a...`), by key name."""
    return dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)


def key_versions(host: HostControl) -> dict[str, str]:
    """The key versions the host's image carries; empty when the host cannot say (a VM still
    booting, a new host key not yet learned): the caller asks again or reports it unknown."""
    try:
        return parse_key_versions(host.run("cat", KEY_VERSIONS))
    except ControlError:
        return {}


# What `doctor` reads on a host (mailsite.doctor.inside), each a parser of one command's output
# as the lab's daemons print it, and a reader that runs that command.

@dataclass(frozen=True)
class Envelope:
    """One `smtpctl show queue` line: `evpid|source|agent|flags|sender|recipient|destination|
    creation|expiry|last try|retries|run state|run state's seconds|last error` (smtpctl.c's
    show_queue_envelope)."""

    id: str
    agent: str  # mta: to relay; mda: to deliver here; bounce
    flags: str  # "", or some of bounce, auth, internal, suspend, hold
    sender: str
    recipient: str
    created: datetime
    retries: int
    error: str  # smtpd's last error for it, "" before a failed try


# A local part may hold a `|` (smtpd takes `a|b@example.org`, as RFC 5321 allows), so the line is
# not split on `|` alone: each address is read up to its `@` and its domain, which holds none;
# the last error (strnvis'd, yet free to hold `|`) is the rest of the line.
_ADDRESS = r"[^@\n]*@[^|@\n]*"
_ENVELOPE_LINE = re.compile(
    rf"^(?P<id>[0-9a-f]{{16}})\|(?P<source>[^|]*)\|(?P<agent>[^|]*)\|(?P<flags>[^|]*)"
    rf"\|(?P<sender>{_ADDRESS})\|(?P<recipient>{_ADDRESS})\|(?P<destination>{_ADDRESS})"
    r"\|(?P<created>\d+)\|(?P<expiry>\d+)\|(?P<tried>\d+)\|(?P<retries>\d+)\|(?P<state>[a-z]+)\|(?P<state_seconds>-?\d*)"
    r"(?:\|(?P<error>.*))?$")


def parse_envelope(line: str) -> Envelope:
    found = _ENVELOPE_LINE.match(line)
    if found is None:
        raise ValueError(f"not a `smtpctl show queue` line: {line[:120]!r}")
    try:
        created = datetime.fromtimestamp(int(found["created"]), timezone.utc)
    except (OverflowError, OSError, ValueError):  # a time past what a date holds
        raise ValueError(f"not a `smtpctl show queue` line (its creation time): {line[:120]!r}") from None
    return Envelope(found["id"], found["agent"], found["flags"], found["sender"], found["recipient"], created,
                    int(found["retries"]), (found["error"] or "").strip())


def envelopes(host: HostControl) -> list[Envelope]:
    return [parse_envelope(line) for line in queue(host)]


def paused(show_status: str) -> list[str]:
    """What `smtpctl show status` says is paused: "MDA", "MTA" (nothing queued leaves), "SMTP"
    (no mail taken)."""
    return [line.split()[0] for line in show_status.splitlines() if line.strip().endswith(" paused")]


def bgp_sessions(summary_json: str) -> dict[str, str]:
    """Neighbor address -> session state, from `bgpctl -j show summary` (the update job reads the
    same answer). bgpd with no neighbor answers nothing at all."""
    answer = json.loads(summary_json or "{}")
    neighbors = answer.get("neighbors", []) if isinstance(answer, dict) else None
    # Not bgpctl's shape (a list, null, a neighbor that is no object): one line saying so, never a crash.
    if not isinstance(neighbors, list) or not all(isinstance(n, dict) and "remote_addr" in n and "state" in n for n in neighbors):
        raise ValueError(f"not a `bgpctl -j show summary` answer: {summary_json.strip()[:120]!r}")
    return {str(neighbor["remote_addr"]): str(neighbor["state"]) for neighbor in neighbors}


def bgp_summary(host: HostControl) -> dict[str, str]:
    return bgp_sessions(host.run("bgpctl", "-j", "show", "summary"))


@dataclass(frozen=True)
class FileSystem:
    """One `df -kP` line: POSIX's portable format, the same on OpenBSD and Linux."""

    device: str
    used_kb: int
    available_kb: int  # BSD's df says less than zero once root's reserve is in use
    mounted_on: str

    @property
    def free_percent(self) -> float:
        """What users may still write, of what they may write at all (df's own Capacity is the
        rest of it, rounded up): root's reserve counts as full."""
        room = self.used_kb + max(self.available_kb, 0)
        return 100.0 * max(self.available_kb, 0) / room if room else 0.0


_DF_LINE = re.compile(r"^(?P<device>.+?)\s+\d+\s+(?P<used>\d+)\s+(?P<available>-?\d+)\s+\d+%\s+(?P<mounted>/.*)$")


def parse_df(text: str) -> FileSystem:
    """The file system of the one path given to `df -kP`."""
    lines = [line for line in text.splitlines()[1:] if line.strip()]
    found = _DF_LINE.match(lines[-1]) if lines else None
    if found is None:
        raise ValueError(f"not a `df -kP` answer: {text.strip()[:200]!r}")
    return FileSystem(found["device"], int(found["used"]), int(found["available"]), found["mounted"])


def file_system(host: HostControl, path: str) -> FileSystem:
    return parse_df(host.run("df", "-kP", path))


_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


def parse_end_date(text: str) -> datetime:
    """`openssl x509 -noout -enddate`: `notAfter=Dec  3 11:40:12 2026 GMT` (OpenSSL and LibreSSL
    alike); read without the locale's month names."""
    words = text.strip().removeprefix("notAfter=").split()
    if len(words) != 5 or words[0] not in _MONTHS or words[4] != "GMT":
        raise ValueError(f"not an `openssl x509 -enddate` answer: {text.strip()[:120]!r}")
    hour, minute, second = (int(part) for part in words[2].split(":"))
    return datetime(int(words[3]), _MONTHS[words[0]], int(words[1]), hour, minute, second, tzinfo=timezone.utc)


def certificate_end(host: HostControl, path: str) -> datetime:
    return parse_end_date(host.run("openssl", "x509", "-noout", "-enddate", "-in", path))


def parse_line_counts(text: str) -> dict[str, int]:
    """`wc -l FILE...`: lines by file (its "total" line left out)."""
    counts = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0].isdigit() and words[1] != "total":
            counts[words[1].strip()] = int(words[0])
    return counts


def spamd_sync(flags: str) -> tuple[list[str], list[str]]:
    """spamd's flags (`rcctl get spamd flags`): the addresses it listens for sync on (-y) and
    sends its greylist to (-Y)."""
    try:
        words = shlex.split(flags)
    except ValueError:  # a stray quote in rc.conf.local: read its words as rcctl would pass them on
        words = flags.split()
    listen = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-y"]
    peers = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-Y"]
    return listen, peers
