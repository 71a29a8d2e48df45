"""`doctor` against the running lab, from where a sender on the internet would run it.

The very command an admin runs (`python -m mailsite doctor`) is run again in the internet node's
network namespace alone (`nsenter -n`): its connections leave from the internet node as a
sender's do, while this machine's files (the interpreter, its packages, the lab's state) stay
where they are. Hidden options tell it what the lab stands in for: the lab's DNS as the world's
resolver, each host entered through its holder as ssh would, the lab CA as the trusted one.
The lab's stand-in for the primary's httpd serves the MTA-STS policy while doctor runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mailsite

from .lab import Lab
from .mta_sts import policy_served

# Where `python -m mailsite` finds this very package, whatever directory the lab was started from.
PACKAGE_PARENT = Path(mailsite.__file__).resolve().parent.parent


def doctor_argv(lab: Lab, *options: str) -> list[str]:
    """The doctor command line for the running lab, with `options` (--json, --host mx1) added."""
    return ["nsenter", "-t", str(lab.holder(lab.plan.internet.name).pid), "-n", "--",
            sys.executable, "-m", "mailsite", "doctor", "--config", lab.state.config,
            "--nameserver", str(lab.plan.dns.ipv4), "--lab-state", str(lab.dir), *options]


def run_doctor(lab: Lab, *options: str) -> int:
    """doctor's exit status; what it prints goes to this process's stdout and stderr. The
    MTA-STS policy is served meanwhile, as the primary's httpd serves it (the lab has none)."""
    with policy_served(lab):
        process = subprocess.Popen(doctor_argv(lab, *options), cwd=PACKAGE_PARENT)
        try:
            return process.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached doctor too (one process group): it ends saying so in its one line, and
            # this command adds none. Interrupted alone (kill -INT), it ends doctor the same way.
            try:
                return process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.terminate()
                return process.wait()
