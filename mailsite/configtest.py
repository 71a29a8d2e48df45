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
import shlex
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
# A tree may be hand-edited, and configtest runs as root: a name taken from it reaches a command
# line or a path below the scratch root only if it is plainly a name. The model's own rule for a
# host path (letters, digits and . _ + - between slashes), and an interface as OpenBSD names them.
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9._+-]+")
_INTERFACE = re.compile(r"[a-z]+[0-9]+")
TIMEOUT_SECONDS = 60


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
    try:
        return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        # A config that includes a fifo, or a parser that hangs: a problem of that file, not a traceback.
        return subprocess.CompletedProcess(command, 124, "", f"did not finish within {TIMEOUT_SECONDS} s")


def _read(tree: Path, path: str) -> str:
    # Bytes that are not UTF-8 reach the parser as they are, which names the line it cannot read.
    return (tree / path).read_text(errors="surrogateescape")


def unsafe_pki_path(path: str) -> str | None:
    """Why a pki path taken from a tree cannot be laid over the check's scratch root, or None."""
    parts = path.split("/")
    if parts[0] != "" or not all(_PATH_COMPONENT.fullmatch(part) and part not in (".", "..") for part in parts[1:]):
        return (f"pki path {path!r} is not an absolute path of letters, digits and . _ + - (no ..); "
                "render the site again rather than editing the tree")
    return None


def _interfaces(tree: Path) -> list[str]:
    """The links the host will have: its hostname.if files (pflog aside) and OpenBSD's lo0."""
    names = [path.name.removeprefix("hostname.") for path in sorted((tree / "etc").glob("hostname.*"))]
    if unnamed := [name for name in names if not _INTERFACE.fullmatch(name)]:
        raise NamespaceSetupFailed(f"etc/hostname.{unnamed[0]!r} does not name an interface (like vmx0)")
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
        # Each top-level name came through unsafe_pki_path or a daemon's own dirs; quoted all the same.
        overlays = " && ".join(
            f"mount -t overlay overlay -o {shlex.quote(f'lowerdir={top}:/{top.name}')} {shlex.quote('/' + top.name)}"
            for top in sorted(root.iterdir())
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
    pki = _PKI.findall(_read(tree, path))
    if unsafe := [reason for reason in map(unsafe_pki_path, pki) if reason]:
        return [CheckProblem(host, "smtpd.conf", None, unsafe[0])]
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
        copy.write_text(linux_bgpd_conf(_read(tree, path)), errors="surrogateescape")
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
