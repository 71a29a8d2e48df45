"""Draining an MX: what rotation and the drain hook change on a host before its key or its VM goes.

A drained host takes no new mail (the other MXes take it meanwhile) and holds nothing queued, so
nothing written under its queue key is left behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .facts import queue, smtp_status
from .hosts import ControlError, HostControl


@dataclass
class Drained:
    drained: bool
    remaining: list[str] = field(default_factory=list)  # `smtpctl show queue` lines


def pause_smtp(host: HostControl) -> None:
    # A host paused already (by a rotation, before its replacement) stays paused: smtpctl refuses
    # a second pause.
    if "SMTP paused" not in smtp_status(host):
        host.run("smtpctl", "pause", "smtp")


def resume_smtp(host: HostControl) -> None:
    host.run("smtpctl", "resume", "smtp")


def drain(host: HostControl, timeout: float, poll: float = 1.0, clock: Callable[[], float] = time.monotonic) -> Drained:
    """Stop taking mail, deliver everything queued, wait until the queue is empty. On timeout
    smtp is resumed and the envelopes left are returned: no key change."""
    pause_smtp(host)
    deadline = clock() + timeout
    try:
        while True:
            host.run("smtpctl", "schedule", "all")
            remaining = queue(host)
            if not remaining:
                return Drained(True)
            if clock() >= deadline:
                resume_smtp(host)
                return Drained(False, remaining)
            time.sleep(poll)
    except BaseException:
        # Whatever went wrong, the host goes back to taking mail as before.
        try:
            resume_smtp(host)
        except ControlError:
            pass
        raise
