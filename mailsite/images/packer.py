"""Running Packer (an I/O edge): `packer build -machine-readable`, its progress, its failures."""

from __future__ import annotations

import functools
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import MailsiteError

REDACTED = "<redacted>"


class BakeError(MailsiteError):
    """A bake that failed, in one line: what failed, where the whole log is."""


@dataclass
class PackerRun:
    steps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    failed_step: str | None = None  # the step under way when the first error came


@functools.cache  # one packer per run; asked once, not once per host
def packer_version() -> str:
    try:
        result = subprocess.run(["packer", "version"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise BakeError("packer is not installed; install it (Debian: apt-get install packer)") from None
    match = re.search(r"Packer v?(\d+\.\d+\.\d+)", result.stdout)
    if result.returncode != 0 or not match:
        raise BakeError(f"cannot tell packer's version: {result.stdout.strip() or result.stderr.strip()}")
    return match[1]


def _fields(line: str) -> list[str]:
    # -machine-readable escapes commas and newlines inside a field.
    return [part.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n") for part in line.rstrip("\n").split(",")]


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def run_packer(
    arguments: list[str],
    *,
    cwd: Path,
    log_path: Path,
    timeout: float,
    secrets: list[str],
    progress: Callable[[str], None],
) -> PackerRun:
    """Run `packer build -machine-readable ARGUMENTS`; every line is redacted before it is logged or
    shown. Stops packer (its whole process group) on timeout or interrupt."""
    run = PackerRun()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [*_dying_with_us(), "packer", "build", "-machine-readable", "-color=false", *arguments]
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                except queue.Empty:
                    if time.monotonic() >= deadline:
                        _stop(process)
                        raise BakeError(f"packer did not finish within {timeout:.0f} s (step: {_last(run)}); log: {log_path}") from None
                    continue
                if line is None:
                    break
                line = redact(line, secrets)
                log.write(line)
                _read(line, run, progress)
            process.wait(timeout=30)
        except BaseException:
            _stop(process)
            raise
    if process.returncode != 0:
        error = run.errors[0] if run.errors else f"packer exited with status {process.returncode}"
        raise BakeError(f"bake failed at {run.failed_step or _last(run)}: {error}; log: {log_path}")
    return run


def _dying_with_us() -> list[str]:
    """packer runs in a session of its own, so that it and its VM can be stopped as one group;
    that also keeps it out of the group the Pulumi engine kills when it ends a provider. So the
    kernel stops it (SIGTERM: packer then stops its VM) when the thread that started it dies:
    util-linux's setpriv sets that (prctl PR_SET_PDEATHSIG) and executes packer. A preexec_fn
    could not: Python code after fork() crashes a provider process that runs gRPC threads."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _pump(process: subprocess.Popen, lines: queue.Queue) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def _read(line: str, run: PackerRun, progress: Callable[[str], None]) -> None:
    parts = _fields(line)
    if len(parts) < 3:
        if line.strip():
            _error(run, line.strip())  # packer's own usage and template errors are plain text
        return
    kind, data = parts[2], parts[3:]
    if kind == "ui" and len(data) >= 2:
        level, text = data[0], ",".join(data[1:]).strip()
        if level == "say" and text.startswith("==>"):
            step = text.removeprefix("==>").strip()
            run.steps.append(step)
            progress(step)
        elif level == "error":
            _error(run, text)
    elif kind == "artifact" and len(data) >= 3 and data[1] == "files" and len(data) > 3:
        run.artifacts.append(data[3])
    elif kind == "error" and data:
        _error(run, ",".join(data))


def _error(run: PackerRun, text: str) -> None:
    if not run.errors:
        run.failed_step = f"'{run.steps[-1]}'" if run.steps else "the start (template or variables)"
    # One line: packer's HCL diagnostics spread a message over several, with an empty excerpt.
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "(source code not available)"]
    run.errors.append(": ".join(lines).removeprefix("==> "))


def _last(run: PackerRun) -> str:
    return f"'{run.steps[-1]}'" if run.steps else "the start (template or variables)"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
