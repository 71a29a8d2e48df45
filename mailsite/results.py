"""What a check found, and how it is printed: one type for the lab's scenarios and `doctor`.

A mail admin reads the text form (one line per check, then a count); a monitoring system reads
the JSON form, one object per line (JSON Lines), so that it can parse each check as it arrives.
Pure: no check is run here.
"""

from __future__ import annotations

import enum
import json as json_module
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from .problems import printable


class Status(enum.Enum):
    PASS = "PASS"
    WARN = "WARN"  # not wrong yet, or not known (a check that could not be tried): worth a look
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    name: str  # what is checked, in the admin's words: "no open relay: every MX refuses a foreign domain"
    status: Status
    seen: str  # what the check saw: the evidence behind a PASS, what was wrong behind a FAIL
    fix: str = ""  # what to do about a WARN or FAIL; empty when there is nothing to do
    seconds: float = 0.0

    def __post_init__(self) -> None:
        # JSON has no NaN or infinity: a monitor's parser would reject the whole line.
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) or not math.isfinite(self.seconds):
            raise ValueError(f"a result's seconds must be a finite number, not {self.seconds!r}")

    @property
    def ok(self) -> bool:
        """Nothing to fix before relying on it: a WARN is reported, and does not fail a run."""
        return self.status is not Status.FAIL

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status.value, "seen": self.seen, "fix": self.fix,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> Result:
        return cls(str(data["name"]), Status(data["status"]), str(data["seen"]), str(data.get("fix", "")),
                   float(data.get("seconds", 0.0)))


def timed(name: str, check: Callable[[], tuple[Status, str, str]]) -> Result:
    """Run `check` (it returns status, seen, fix) and say how long it took."""
    started = time.monotonic()
    status, seen, fix = check()
    return Result(name, status, seen, fix, round(time.monotonic() - started, 1))


def result_lines(result: Result, width: int = 0) -> list[str]:
    """A result as text: status, name (padded to `width`), seconds, what was seen; the fix, if
    any, on a line of its own below, where a reader looking for what to do finds it."""
    lines = [f"{result.status.value}  {_one_line(result.name):<{width}}  {result.seconds:5.1f} s  {_one_line(result.seen)}"]
    if result.fix:
        lines.append(f"      fix: {_one_line(result.fix)}")
    return lines


def _one_line(text: str) -> str:
    """A daemon's message may span lines; in the text form each result keeps to its own, and
    what it holds (an escape sequence from a hostile banner) is shown, never obeyed."""
    return printable(" ".join(text.split()))


def summary_line(results: Sequence[Result]) -> str:
    """'12 of 14 passed, 1 warning, 1 FAILED': every count that is not zero after the first."""
    passed = sum(r.status is Status.PASS for r in results)
    warned = sum(r.status is Status.WARN for r in results)
    failed = sum(r.status is Status.FAIL for r in results)
    line = f"{passed} of {len(results)} passed"
    if warned:
        line += f", {warned} warning{'s' if warned > 1 else ''}"
    if failed:
        line += f", {failed} FAILED"
    return line


def json_line(result: Result, about: dict[str, str | None] | None = None) -> str:
    """`about`: what a monitor sorts the result by, added after its own keys (doctor's area and host)."""
    # ASCII: U+2028, U+2029 and U+0085 are line breaks to many readers, and one object keeps to one line.
    return json_module.dumps({**result.to_json(), **(about or {})}, ensure_ascii=True, allow_nan=False)


def print_result(result: Result, json: bool = False, file: TextIO | None = None, width: int = 0) -> None:
    """One result as soon as it is known (a long run shows progress)."""
    text = json_line(result) if json else "\n".join(result_lines(result, width))
    print(text, file=file or sys.stdout, flush=True)


def print_results(results: Sequence[Result], json: bool = False, file: TextIO | None = None) -> None:
    """Every result, then in text the count; JSON has no count: a reader counts the objects."""
    out = file or sys.stdout
    if json:
        for result in results:
            print(json_line(result), file=out)
        return
    width = max((len(_one_line(r.name)) for r in results), default=0)
    for result in results:
        print("\n".join(result_lines(result, width)), file=out)
    print(summary_line(results), file=out)


def exit_status(results: Iterable[Result]) -> int:
    """0 when nothing failed (warnings included), 1 otherwise: what cron and monitoring read."""
    return 0 if all(result.ok for result in results) else 1
