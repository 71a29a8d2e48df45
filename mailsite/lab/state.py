"""What the lab records about itself in state.json, so that any later process (lab status, send,
down, the next up) knows it again: a typed record, read back strictly.

A state.json that is not a whole record (a run killed while writing it, a lab from an older
version), or that names a namespace the lab never makes, is UnreadableState: `down` then cleans by
the lab's namespace names it finds instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..problems import printable
from .net import is_lab_namespace
from .procs import LabError, ProcessRecord, alive

STATE_FILE = "state.json"
ALREADY_UP = "a lab is already up or coming up; run lab down"


class UnreadableState(LabError):
    """state.json is there but is not a lab's record."""


@dataclass
class LabState:
    config: str  # the stack file, resolved: another process renders the same plan from it
    stack: str
    # The process the lab lives for (a demo, a test, a bench): once it is gone the lab is a
    # leftover anyone may clean. None: left up on purpose by `lab up`.
    owner: ProcessRecord | None
    blacklist: list[str]  # what the route servers announce now, by community
    bypass: list[str]
    namespaces: list[str] = field(default_factory=list)  # recorded before any is made
    processes: dict[str, ProcessRecord] = field(default_factory=dict)  # "node/daemon"; "node/host": its holder
    cleaned_before: int | None = None  # the killed run whose lab `up` cleaned first (its pid; 0 unknown)
    up_seconds: float | None = None  # None until every daemon answered

    def killed_owner(self) -> ProcessRecord | None:
        """The run that brought the lab up and is gone without taking it down: nobody wants the
        lab, anyone may clean it. None while its owner runs, or when `lab up` left it up."""
        return self.owner if self.owner is not None and not alive(self.owner) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config, "stack": self.stack, "owner": self.owner.to_json() if self.owner else None,
            "blacklist": self.blacklist, "bypass": self.bypass, "namespaces": self.namespaces,
            "processes": {key: record.to_json() for key, record in self.processes.items()},
            "cleaned_before": self.cleaned_before, "up_seconds": self.up_seconds,
        }

    @classmethod
    def from_json(cls, data: object) -> LabState:
        """The record, or UnreadableState naming the first field that is not what it should be."""
        if not isinstance(data, dict):
            raise UnreadableState("state.json does not hold a lab's record")

        def get(name: str, kind: type | tuple[type, ...]) -> Any:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, kind):  # no field is a bool
                raise UnreadableState(f"state.json holds {name} as {type(value).__name__}, not as a lab's record")
            return value

        def strings(name: str) -> list[str]:
            values = get(name, list)
            if not all(isinstance(value, str) for value in values):
                raise UnreadableState(f"state.json holds something other than names in {name}")
            return list(values)

        def record(name: str, value: object) -> ProcessRecord:
            if not isinstance(value, dict) or not all(type(value.get(key)) is int for key in ("pid", "start")):
                raise UnreadableState(f"state.json holds no process record at {name}")
            return ProcessRecord.from_json(value)

        namespaces = strings("namespaces")
        # `down` deletes these and stops every process in them: only a name the lab gives passes.
        foreign = [name for name in namespaces if not is_lab_namespace(name)]
        if foreign:
            raise UnreadableState(f"state.json names {printable(foreign[0])} among the namespaces, not a lab's")
        owner = get("owner", (dict, type(None)))
        up_seconds = get("up_seconds", (int, float, type(None)))
        return cls(
            config=get("config", str), stack=get("stack", str),
            owner=record("owner", owner) if owner is not None else None,
            blacklist=strings("blacklist"), bypass=strings("bypass"), namespaces=namespaces,
            processes={str(key): record(f"processes/{key}", value) for key, value in get("processes", dict).items()},
            cleaned_before=get("cleaned_before", (int, type(None))),
            up_seconds=float(up_seconds) if up_seconds is not None else None,
        )

    def save(self, state_dir: Path) -> None:
        """Whole or not at all: a run killed now leaves the previous record."""
        temporary = state_dir / f"{STATE_FILE}.new"
        temporary.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        temporary.replace(state_dir / STATE_FILE)


def read_state(state_dir: Path) -> LabState | None:
    """The lab's record; None when there is none; UnreadableState when it is not a whole one."""
    try:
        text = (state_dir / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        raise UnreadableState("state.json is not JSON (a run killed while writing it?)") from None
    return LabState.from_json(data)


# The lock files this process holds, by path: `up` holds its lab's through a teardown of its own.
_held: set[Path] = set()


def lock_file(state_dir: Path) -> Path:
    """Beside the state directory, not in it: `down` removes the directory while holding it."""
    return state_dir.with_name(state_dir.name + ".lock")


@contextmanager
def lab_lock(state_dir: Path, wait: float = 0) -> Iterator[None]:
    """The lab to oneself: `up` holds it from its claim until the lab answers (or is down again),
    `down` while it tears down, so two runs never build, or tear down, the same namespaces at once.
    `wait`: seconds to wait for another process's `up` to end; 0 refuses at once (UserError).
    The kernel drops the lock with its holder: a killed run leaves none."""
    path = lock_file(state_dir)
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    if wait:
                        raise LabError(f"another process has been bringing a lab up for {wait:g} s"
                                       f" (it holds {path}); run lab down again") from None
                    raise UserError(ALREADY_UP) from None
                time.sleep(0.1)
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
    finally:
        os.close(descriptor)  # closing drops the lock
