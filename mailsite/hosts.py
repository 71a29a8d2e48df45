"""How a host is reached: a command run on it, its output back (an I/O edge).

On a real site that is `ssh root@mx2.example.org`; in the lab it is `nsenter` into the lab host's
namespaces. Both are a `CommandControl` with another prefix, so rotation, the drain hook and the
coming `doctor` and backups run the very same commands on a lab host as on a real one.

Kept apart, as pyinfra keeps connectors from facts and operations: what is read on a host
(its queue, its key versions) is in `mailsite.facts`, what is changed (the drain) in
`mailsite.drain`; both take any `HostControl`.
"""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import MailsiteError
from .model import Host


class ControlError(MailsiteError):
    """A host could not be reached or a command failed there; one line."""


@runtime_checkable
class HostControl(Protocol):
    """One host, as the tool reaches it."""

    def run(self, *command: str) -> str:
        """The command's output; ControlError if the host does not answer or the command fails."""
        ...

    def reachable(self) -> bool:
        """A shell answers at all (the VM exists and runs), whatever its daemons do."""
        ...

    def replaced(self) -> None:
        """The host is a new VM now (a new ssh host key)."""
        ...


# Commands on hosts still running. A caller that stops waiting for them (doctor at its deadline,
# leaving a hung host's check behind) ends them on its way out: an ssh to a host whose df hangs
# would otherwise outlive the run, one more with every run cron starts.
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()


def end_running_commands() -> None:
    """Kill every command this process still runs on a host (their waiting threads then fail)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        try:
            process.kill()
        except OSError:  # ended meanwhile
            pass


@dataclass
class CommandControl:
    """Commands through a prefix that reaches the host (see ssh_to and lab_control)."""

    prefix: list[str]
    timeout: float = 60
    forget: list[str] | None = None  # run once the host is a new VM (drop its old ssh host key)

    def run(self, *command: str) -> str:
        # stdin: none. ssh would forward ours to the host, eating what a `while read` loop or a
        # pipe feeding the caller meant for itself.
        process = subprocess.Popen([*self.prefix, *command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            stdout, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise ControlError(f"`{' '.join(command)}` did not answer within {self.timeout:g} s") from None
        except BaseException:  # an answer that is not text, an interrupt: the command ends with it
            process.kill()
            process.wait()
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
        if process.returncode != 0:
            raise ControlError(f"`{' '.join(command)}` failed: {(stderr or stdout).strip()}")
        return stdout

    def reachable(self) -> bool:
        try:
            self.run("true")
            return True
        except ControlError:
            return False

    def replaced(self) -> None:
        if self.forget:
            subprocess.run(self.forget, capture_output=True, timeout=30)


KNOWN_HOSTS = Path("~/.ssh/mailsite_known_hosts").expanduser()


def ssh_to(mx_name: str) -> CommandControl:
    """ssh as root, trusting a host key on first use and keeping the site's keys apart: every
    replacement brings a new VM and a new host key, forgotten here once the old VM is gone. By MX
    name, because a host removed from the stack file is still drained before its VM goes."""
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={KNOWN_HOSTS}"]
    return CommandControl(["ssh", *options, f"root@{mx_name}"], forget=["ssh-keygen", "-R", mx_name, "-f", str(KNOWN_HOSTS)])


def ssh_control(host: Host) -> CommandControl:
    return ssh_to(host.mx_name)


# A root login's environment on the lab host, nothing of this machine's: its programs are found
# in the daemon root's directories, whatever PATH the caller had.
LAB_LOGIN = ("/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
             "LANG=C.UTF-8")


def into_lab_host(holder_pid: int) -> list[str]:
    """The command prefix that runs what follows as on a lab host: the network, mounts and name
    of the process holding its namespaces, and its root and working directory (it is chrooted
    into the host's tree over the daemon root), so every program is the root's, never this
    machine's."""
    return ["nsenter", "-t", str(holder_pid), "-m", "-n", "-u", "-r", "-w", "--", *LAB_LOGIN]


def lab_control(holder_pid: int, timeout: float = 30, forget: list[str] | None = None) -> CommandControl:
    """A lab host, reached as ssh reaches a real one (the lab's `holder` holds its namespaces)."""
    return CommandControl(into_lab_host(holder_pid), timeout=timeout, forget=forget)
