"""configtest: rendered host trees checked by the real daemons' own parsers (an I/O edge).

Each daemon declares its checks (mailsite.daemons: ConfigTest, a parser and a file); this runs
them. A tree is checked by every check whose file it holds: a host that does not run a daemon
carries none of its files. A daemon every host runs has its files on every host, so one missing
from a tree is a problem (a tree cut short, or hand-edited), never a check quietly skipped.

smtpd -n resolves `listen on vmx0` against the running host and opens every table, include and
pki file by its absolute path, so it runs through `run_shaped_like_host`: a throwaway network
namespace whose links carry the OpenBSD names, and a private mount namespace where the host's
/etc/mail (and a test certificate at each pki path) are laid over this machine's directories. A
parser that must see the host's files where OpenBSD keeps them runs the same way, with its own
directories. bgpd -n runs on the file as rendered, except that Linux has no pf: its `set pftable`
lines are blanked, keeping line numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .daemons import DAEMONS, ConfigTest
from .daemons.base import every_host
from .daemons.basics import MYNAME
from .daemons.bgpd import linux_bgpd_conf
from .errors import UserError

_WHERE = re.compile(r"^(?P<file>[^:\s]+):\s?(?P<line>\d+):\s*(?P<message>.*)$")
_PKI = re.compile(r'^\s*pki \S+ (?:cert|key) "([^"]+)"', re.M)


@dataclass(frozen=True)
class CheckProblem:
    host: str
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.host}: {where}: {self.message}"


def _problems(host: str, file: str, output: str, program: str) -> list[CheckProblem]:
    """One problem per line the parser `program` printed, its own name ("smtpd: ") cut off."""
    problems = []
    for raw in output.splitlines():
        text = raw.strip().removeprefix(f"{program}: ")
        if not text or text == "configuration OK":
            continue
        match = _WHERE.fullmatch(text)
        if match:
            problems.append(CheckProblem(host, file, int(match["line"]), match["message"]))
        else:
            problems.append(CheckProblem(host, file, None, text))
    return problems


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _interfaces(tree: Path) -> list[str]:
    """The links the host will have: its hostname.if files (pflog aside) and OpenBSD's lo0."""
    names = [path.name.removeprefix("hostname.") for path in sorted((tree / "etc").glob("hostname.*"))]
    return [name for name in names if not name.startswith("pflog")] + ["lo0"]


def _test_certificate(path: Path, key: Path) -> None:
    key.parent.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mailsite-check",
          "-keyout", str(key), "-out", str(path)]).check_returncode()
    key.chmod(0o600)


class NamespaceSetupFailed(Exception):
    """The check's namespace could not be made: the message says which command and why."""


def run_shaped_like_host(tree: Path, dirs: tuple[str, ...], argv: list[str],
                         certificates: list[tuple[str, str]] | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run in a throwaway network namespace whose links carry the host's interface names,
    and a private mount namespace where the tree's `dirs` (below its root: "etc/mail") and a test
    certificate at each (certificate, key) path are laid over this machine's own directories (an
    overlay: Debian has no /etc/mail to bind onto). Needs root."""
    namespace = f"mscheck-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="mailsite-check-") as scratch:
        root = Path(scratch)
        for directory in dirs:
            shutil.copytree(tree / directory, root / directory, symlinks=True)
        for certificate, key in certificates or []:
            _test_certificate(root / certificate.lstrip("/"), root / key.lstrip("/"))
        overlays = " && ".join(
            f"mount -t overlay overlay -o lowerdir={top}:/{top.name} /{top.name}" for top in sorted(root.iterdir())
        ) or "true"
        setup = [f"ip netns add {namespace}", f"ip -n {namespace} link set lo up"]
        for index, name in enumerate(_interfaces(tree)):
            setup += [
                f"ip -n {namespace} link add {name} type veth peer name mscheck{index}",
                # An address from the benchmarking range, in a namespace nothing else can reach.
                f"ip -n {namespace} addr add 198.18.0.{index + 1}/32 dev {name}",
                f"ip -n {namespace} link set {name} up",
            ]
        try:
            for command in setup:
                result = _run(command.split())
                if result.returncode != 0:
                    raise NamespaceSetupFailed(f"cannot set up the check namespace ({command}): {result.stderr.strip()}")
            return _run(["ip", "netns", "exec", namespace, "unshare", "--mount", "--propagation", "private",
                         "sh", "-c", f'{overlays} && exec "$@"', "sh", *argv])
        finally:
            _run(["ip", "netns", "del", namespace])


def check_smtpd(host: str, tree: Path, path: str) -> list[CheckProblem]:
    pki = _PKI.findall((tree / path).read_text())
    try:
        result = run_shaped_like_host(tree, ("etc/mail",), ["smtpd", "-n", "-f", f"/{path}"], list(zip(pki[0::2], pki[1::2])))
    except NamespaceSetupFailed as failed:
        return [CheckProblem(host, "smtpd.conf", None, str(failed))]
    output = (result.stdout + result.stderr).replace(f"/{path}", "smtpd.conf")
    problems = _problems(host, "smtpd.conf", output, "smtpd")
    if result.returncode != 0 and not problems:
        problems.append(CheckProblem(host, "smtpd.conf", None, f"smtpd -n failed with status {result.returncode}"))
    return problems


def check_bgpd(host: str, tree: Path, path: str) -> list[CheckProblem]:
    with tempfile.TemporaryDirectory(prefix="mailsite-check-") as scratch:
        copy = Path(scratch) / "bgpd.conf"
        copy.write_text(linux_bgpd_conf((tree / path).read_text()))
        copy.chmod(0o600)  # bgpd refuses a config others can read
        result = _run(["bgpd", "-n", "-f", str(copy)])
    problems = _problems(host, "bgpd.conf", (result.stdout + result.stderr).replace(str(copy), "bgpd.conf"), "bgpd")
    if result.returncode != 0 and not problems:
        problems.append(CheckProblem(host, "bgpd.conf", None, f"bgpd -n failed with status {result.returncode}"))
    return problems


def check_shell(host: str, tree: Path, path: str) -> list[CheckProblem]:
    result = _run(["sh", "-n", str(tree / path)])
    return _problems(host, path, result.stderr.replace(str(tree / path), path), "sh")


@dataclass(frozen=True)
class Parser:
    program: str  # the binary it runs
    package: str  # the Debian package that installs it (the Makefile's DEBS: make deps)
    check: Callable[[str, Path, str], list[CheckProblem]]  # (host, tree, path) -> its problems


# How each parser a daemon names is run on a tree.
_PARSERS: dict[str, Parser] = {
    "smtpd -n": Parser("smtpd", "opensmtpd", check_smtpd),
    "bgpd -n": Parser("bgpd", "openbgpd", check_bgpd),
    "sh -n": Parser("sh", "dash", check_shell),
}


def host_configtests(tree: Path) -> list[ConfigTest]:
    """The checks of every daemon whose file the tree holds, in registry order."""
    return [test for daemon in DAEMONS for test in daemon.configtests if (tree / test.path).is_file()]


def parsers_run(tree: Path) -> list[str]:
    """The parsers that check this tree, in a fixed order for the report."""
    used = {test.parser for test in host_configtests(tree)}
    return [parser for parser in _PARSERS if parser in used]


def missing_files(host: str, tree: Path) -> list[CheckProblem]:
    """The files of the daemons every host runs that the tree lacks: their checks cannot run."""
    return [
        CheckProblem(host, test.path, None, f"missing, so {test.parser} could not check it; render the site again")
        for daemon in DAEMONS if daemon.runs_on is every_host
        for test in daemon.configtests if not (tree / test.path).is_file()
    ]


def require_parsers(tests: list[ConfigTest]) -> None:
    """Every parser the checks need is installed: one line naming the package, not an OSError."""
    for parser in dict.fromkeys(_PARSERS[test.parser] for test in tests):
        if shutil.which(parser.program) is None:
            raise UserError(f"configtest needs {parser.program}, which is not installed here: "
                            f"install the Debian package {parser.package} (make deps)")


def check_host(host: str, tree: Path) -> list[CheckProblem]:
    tests = host_configtests(tree)
    require_parsers(tests)
    return missing_files(host, tree) + [
        problem for test in tests for problem in _PARSERS[test.parser].check(host, tree, test.path)
    ]


def host_trees(directory: Path) -> dict[str, Path]:
    """The rendered hosts below `directory`: each carries the basics' etc/myname, whatever else
    it lacks (a tree missing a daemon's file is a problem check_host reports, not a non-host)."""
    return {tree.name: tree for tree in sorted(directory.iterdir()) if (tree / MYNAME).is_file()}
