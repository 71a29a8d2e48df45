"""Processes the lab starts, in its namespaces, and how it knows them again (an I/O edge).

Every process is started through nsenter/unshare, which exec rather than fork, so the pid
Popen sees is the daemon's own. A pid alone is not proof: a pid is recorded with its start time,
and a process is ours only while both match, so a `down` long after a crash kills nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import MailsiteError
from ..hosts import into_lab_host

NETNS_DIR = Path("/run/netns")


class LabError(MailsiteError):
    """An expected failure of the lab, said in one line (no traceback)."""


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start: int  # clock ticks after boot, from /proc/PID/stat

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> ProcessRecord:
        return cls(int(data["pid"]), int(data["start"]))


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    return text[text.rindex(")") + 2:].split()


def record_of(pid: int) -> ProcessRecord | None:
    fields = _stat(pid)
    return ProcessRecord(pid, int(fields[19])) if fields else None


def alive(record: ProcessRecord) -> bool:
    fields = _stat(record.pid)
    return fields is not None and int(fields[19]) == record.start and fields[0] not in ("Z", "X")


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass: the lab never waits unbounded."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def run(argv: Sequence[str], timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv[:6])} ... did not finish in {timeout:g} s") from None


def must(argv: Sequence[str], timeout: float = 30) -> str:
    result = run(argv, timeout)
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip() or f'exit {result.returncode}'}")
    return result.stdout


def in_network(namespace: str, argv: Sequence[str]) -> list[str]:
    """argv run in a lab network namespace, and nothing else of it."""
    return ["nsenter", f"--net={NETNS_DIR / namespace}", "--", *argv]


def in_host(holder: ProcessRecord, argv: Sequence[str]) -> list[str]:
    """argv run as on a lab node: its network, its tree (the daemon root's programs, the node's
    files) and its name."""
    return [*into_lab_host(holder.pid), *argv]


def spawn(argv: Sequence[str], log: Path) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start a daemon in the foreground of its own session: Ctrl-C reaches the lab, not it."""
    with open(log, "ab") as out:
        popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    record = record_of(popen.pid)
    if record is None:  # it died already; its exit status and log say why
        popen.wait()
        raise LabError(f"{argv[-1] if argv else '?'} exited at once ({log.read_text().strip()[-300:]})")
    return popen, record


def stop(records: Sequence[ProcessRecord], timeout: float = 5) -> list[ProcessRecord]:
    """SIGTERM, then SIGKILL what is left; returns the processes still alive after both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for record in records:
            if alive(record):
                try:
                    os.kill(record.pid, sig)
                except ProcessLookupError:
                    pass
        if wait_until(lambda: not any(alive(r) for r in records), timeout):
            return []
    return [record for record in records if alive(record)]


def network_namespace_pids(inode: int) -> list[int]:
    """Every process whose network namespace is the one with this inode (nsfs)."""
    return _namespace_pids("net", inode)


def mount_namespace_pids(inode: int) -> list[int]:
    """Every process whose mount namespace is the one with this inode (nsfs), wherever its
    network is: `nsenter -m` into a node joins its files and not its network."""
    return _namespace_pids("mnt", inode)


def _namespace_pids(kind: str, inode: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / kind).st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
