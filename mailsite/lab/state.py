"""What the lab records about itself in state.json, so that any later process (lab status, send,
down, the next up) knows it again: a typed record, read back strictly.

A state.json that is not a whole record (a run killed while writing it, a lab from an older
version) is UnreadableState: `down` then cleans by the namespace names it finds instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import LabError, ProcessRecord

STATE_FILE = "state.json"


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

        owner = get("owner", (dict, type(None)))
        up_seconds = get("up_seconds", (int, float, type(None)))
        return cls(
            config=get("config", str), stack=get("stack", str),
            owner=record("owner", owner) if owner is not None else None,
            blacklist=strings("blacklist"), bypass=strings("bypass"), namespaces=strings("namespaces"),
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
