"""A check and how checks run: concurrently, each within its time, in the order given.

A dead host must not stall the rest: every check runs in a thread of its own and is waited for
until its deadline; one still running then is reported as a FAIL and left behind (a daemon
thread, never joined at exit), since a thread blocked in a connect cannot be stopped from here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from ..results import Result, Status

if TYPE_CHECKING:
    from .view import SiteView


@dataclass(frozen=True)
class Check:
    name: str  # the admin's words: "mx1.example.org: port 25 answers as mx1.example.org over IPv4"
    area: str  # "dns" | "smtp" | "blocklists" | "inside" | "backup"
    host: str | None  # the host (its name in the stack, "mx1") the check is about; None: the site's
    run: Callable[[], tuple[Status, str, str]]  # status, what was seen, the fix


# What a host or a server said may be megabytes (a hostile banner, a runaway command): a result
# keeps its start, and says how much more there was, so one line stays a line a monitor stores.
MOST_CHARACTERS = 4000


def _bounded(text: str) -> str:
    if len(text) <= MOST_CHARACTERS:
        return text
    return f"{text[:MOST_CHARACTERS]}... ({len(text) - MOST_CHARACTERS} more characters)"


def _outcome(check: Check) -> tuple[Status, str, str]:
    bug = "report it as a mailsite bug, with this line"
    try:
        outcome = check.run()
    except Exception as error:  # a surprise in one check: the others still run and print
        return Status.FAIL, _bounded(f"the check itself failed: {type(error).__name__}: {error}"), bug
    if not (isinstance(outcome, tuple) and len(outcome) == 3 and isinstance(outcome[0], Status)
            and isinstance(outcome[1], str) and isinstance(outcome[2], str)):
        return Status.FAIL, f"the check itself failed: it gave {type(outcome).__name__}, not a status, seen and fix", bug
    return outcome[0], _bounded(outcome[1]), _bounded(outcome[2])


def run_checks(checks: Sequence[Check], timeout: float,
               report: Callable[[Result], None] | None = None) -> list[Result]:
    """Every check at once, each given `timeout` seconds from the start; results in the order of
    `checks`, each reported as soon as it and those before it are known (a monitor reading the
    JSON lines sees them in a stable order)."""
    started = time.monotonic()
    outcomes: list[tuple[Status, str, str] | None] = [None] * len(checks)
    finished = [threading.Event() for _ in checks]
    seconds = [0.0] * len(checks)

    def work(index: int) -> None:
        begun = time.monotonic()
        outcomes[index] = _outcome(checks[index])
        seconds[index] = round(time.monotonic() - begun, 1)
        finished[index].set()

    for index in range(len(checks)):
        threading.Thread(target=work, args=(index,), daemon=True, name=f"doctor-{index}").start()
    results = []
    for index, check in enumerate(checks):
        left = max(0.0, started + timeout - time.monotonic())
        outcome = outcomes[index] if finished[index].wait(left) else None
        if outcome is None:
            result = Result(check.name, Status.FAIL, f"no answer within {timeout:g} s",
                            "the host or service named does not answer: see the other checks of it", round(timeout, 1))
        else:
            result = Result(check.name, *outcome, seconds[index])
        results.append(result)
        if report is not None:
            report(result)
    return results


def areas() -> list[ModuleType]:
    """Each area's module, in the order an admin reads their checks: the names first (nothing
    else works without them), what a sender sees, the lists, the hosts from inside, then the
    primary's backups."""
    # Imported here, not above: every area imports Check from this module.
    from . import backup, blocklists, dns, inside, smtp

    return [dns, smtp, blocklists, inside, backup]


def all_checks(view: SiteView, only_host: str | None = None,
               modules: Sequence[ModuleType] | None = None) -> list[Check]:
    """Every area's checks of the site; `only_host`: only those about that host (its name in the
    stack), none of the site's own (MX set, SPF, DMARC), which a run of the whole site makes."""
    found: list[Check] = []
    for module in areas() if modules is None else modules:
        try:
            built = list(module.checks(view))
        except Exception as error:  # one area's bug: the other areas still run, and this one is a FAIL
            found.append(_unbuilt(module, error))
            continue
        found += [check for check in built if only_host is None or check.host == only_host]
    return found


def _unbuilt(module: ModuleType, error: Exception) -> Check:
    area = module.__name__.rsplit(".", 1)[-1]
    seen = f"its checks could not be made from the stack: {type(error).__name__}: {error}"
    return Check(f"doctor's {area} checks", area, None,
                 lambda: (Status.FAIL, seen, "report it as a mailsite bug, with this line"))
