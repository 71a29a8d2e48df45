"""configtest: rendered host trees checked by the real daemons' own parsers (an I/O edge).

Each daemon declares its checks (mailsite.daemons: ConfigTest, a parser and a file); this runs
them. A tree is checked by every check whose file it holds: a host that does not run a daemon
carries none of its files. A daemon every host runs has its files on every host, so one missing
from a tree is a problem (a tree cut short, or hand-edited), never a check quietly skipped.

The daemons' parsers are those of the daemon roots (mailsite.daemonroot: Debian trixie's smtpd 7
and bgpd 8, the majors OpenBSD 7.8 ships; bookworm-backports' Dovecot 2.3, as OpenBSD 7.8's
packages ship it), never this machine's own, which may be two majors behind and accept what the
images' daemons refuse. smtpd -n resolves `listen on vmx0` against the
running host and opens every table, include and pki file by its absolute path, so each parser runs
through `run_shaped_like_host`: a throwaway network namespace whose links carry the OpenBSD names,
and a private mount namespace where the host's files (its /etc/mail, a test certificate at each
pki path) are laid over the daemon root with overlayfs, the parser chrooted into the merged tree.
The root is the overlay's lowest, read-only layer, and the tree's directories are read-only layers
too, never copied: what a parser writes lands in a scratch directory, never in the root or the
tree. configtest runs as root on any directory, so what it reads of a tree on this machine is
never a link (that would hand the parser a file of this machine) nor a special file, and it
writes only in its scratch directory, which it made. bgpd -n runs on the file as rendered, except that Linux has no pf:
its `set pftable` lines are blanked, keeping line numbers. doveconf -n looks up the users the
config runs Dovecot as, so it reads the accounts an OpenBSD primary has (not Debian's). rspamadm
configtest reads the package's own /etc/rspamd (trixie's rspamd 3) with the tree's local.d and
override.d over it. sh -n is
this machine's sh (no daemon).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .daemonroot import ROOTS, DaemonRoot, daemon_root
from .daemons import DAEMONS, ConfigTest
from .daemons.base import every_host
from .daemons.basics import MYNAME
from .daemons.bgpd import linux_bgpd_conf
from .errors import UserError
from .model import MAIL_UID, MAIL_USER

# Used with fullmatch: the whole line, never a prefix of it.
_WHERE = re.compile(r"(?P<file>[^:\s]+):\s?(?P<line>\d+):\s*(?P<message>.*)")
_PKI = re.compile(r'^\s*pki (?P<name>\S+) (?P<kind>cert|key) "(?P<path>[^"]+)"', re.M)
# A tree may be hand-edited, and configtest runs as root: a name taken from it reaches a command
# line or a path below the scratch root only if it is plainly a name. The model's own rule for a
# host path (letters, digits and . _ + - between slashes), and an interface as OpenBSD names them.
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9._+-]+")
_INTERFACE = re.compile(r"[a-z]+[0-9]+")
TIMEOUT_SECONDS = 60
# What a parser run from the root needs on this machine, and the Debian package of each.
_HOST_TOOLS = {"ip": "iproute2", "unshare": "util-linux", "mount": "mount", "chroot": "coreutils",
               "openssl": "openssl"}
# Inside the root the caller's PATH means nothing (it may name a virtualenv): Debian's own.
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# overlayfs takes its layers as one option string: these characters would split it.
_OVERLAY_UNSAFE = re.compile(r"[,:\\\s]")
_SPECIAL_FILES = {stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                  stat.S_IFBLK: "a block device"}


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
    # Its own session: a Ctrl-C at the terminal reaches configtest alone, which ends the whole
    # group (what the parser started too) however it stops. No stdin: a config that includes
    # /dev/stdin reads nothing, rather than waiting on the terminal.
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, errors="replace", start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _end(process)
        # A config that includes a fifo, or a parser that hangs: a problem of that file, not a traceback.
        return subprocess.CompletedProcess(command, 124, "", f"did not finish within {TIMEOUT_SECONDS} s")
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): nothing of the check may outlive configtest
        _end(process)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _end(process: subprocess.Popen[str]) -> None:
    try:
        # Not reaped yet, so its process group cannot have been reused.
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()


class TreeFileRefused(Exception):
    """A file of the tree configtest will not read: `file` names it below the tree."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(message)
        self.file = file


def _no_link_below(tree: Path, path: str) -> os.stat_result:
    """The lstat of tree/path, none of whose components below the tree is a link: configtest
    reads the tree on this machine, where a link would lead to this machine's own files."""
    parts = Path(path).parts
    for depth in range(1, len(parts) + 1):
        below = "/".join(parts[:depth])
        try:
            found = os.lstat(tree / below)
        except FileNotFoundError:
            raise TreeFileRefused(path, "missing; render the site again") from None
        if stat.S_ISLNK(found.st_mode):
            raise TreeFileRefused(below, "a symbolic link, which configtest does not follow on this machine; "
                                         "render the site again rather than linking files into the tree")
    return found


def _not_special(path: str, mode: int) -> None:
    if kind := _SPECIAL_FILES.get(stat.S_IFMT(mode)):
        raise TreeFileRefused(path, f"not a regular file ({kind}): a host's daemon files are regular files, "
                                    "directories or links; remove it")


def _regular_file(tree: Path, path: str) -> Path:
    _not_special(path, _no_link_below(tree, path).st_mode)
    return tree / path


def _read(tree: Path, path: str) -> str:
    # Bytes that are not UTF-8 reach the parser as they are, which names the line it cannot read.
    return _regular_file(tree, path).read_text(errors="surrogateescape")


def _tree_directory(tree: Path, directory: str) -> Path:
    """tree/directory, to be laid over the root as it is: no link on the way to it, nothing below
    it that is not a regular file, a directory or a link (which resolves inside the chroot)."""
    if not stat.S_ISDIR(_no_link_below(tree, directory).st_mode):
        raise TreeFileRefused(directory, "not a directory; render the site again")
    for parent, subdirectories, files in os.walk(tree / directory):
        for name in subdirectories + files:
            _not_special(str((Path(parent) / name).relative_to(tree)), os.lstat(Path(parent) / name).st_mode)
    return tree / directory


def unsafe_pki_path(path: str) -> str | None:
    """Why a pki path taken from a tree cannot be laid over the check's scratch root, or None."""
    parts = path.split("/")
    if parts[0] != "" or not all(_PATH_COMPONENT.fullmatch(part) and part not in (".", "..") for part in parts[1:]):
        return (f"pki path {path!r} is not an absolute path of letters, digits and . _ + - (no ..); "
                "render the site again rather than editing the tree")
    return None


def _interfaces(tree: Path) -> list[str]:
    """The links the host will have: its hostname.if files (pflog aside) and OpenBSD's lo0, which
    a host has whether or not it has a hostname.lo0."""
    names = [path.name.removeprefix("hostname.") for path in sorted((tree / "etc").glob("hostname.*"))]
    if unnamed := [name for name in names if not _INTERFACE.fullmatch(name)]:
        raise NamespaceSetupFailed(f"etc/hostname.{unnamed[0]!r} does not name an interface (like vmx0)")
    return list(dict.fromkeys([name for name in names if not name.startswith("pflog")] + ["lo0"]))


def pki_pairs(text: str) -> list[tuple[str | None, str | None]]:
    """The (certificate, key) paths of each pki an smtpd.conf names, paired by pki name, in the
    order the names first appear: None where it names only one of them."""
    pairs: dict[str, dict[str, str]] = {}
    for match in _PKI.finditer(text):
        pairs.setdefault(match["name"], {})[match["kind"]] = match["path"]
    return [(pki.get("cert"), pki.get("key")) for pki in pairs.values()]


def _test_certificate(files: Path, certificate: str | None, key: str | None) -> None:
    """A test certificate and its key at their paths below `files`, the scratch layer this check
    made (so no link of the tree is on the way); a half missing from the config goes elsewhere
    in the scratch directory, and smtpd names what is missing."""
    paths = []
    for index, path in enumerate((certificate, key)):
        target = files / path.lstrip("/") if path else files.parent / f"unused-{index}.pem"
        target.parent.mkdir(parents=True, exist_ok=True)
        paths.append(target)
    made = _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mailsite-check",
                 "-keyout", str(paths[1]), "-out", str(paths[0])])
    if made.returncode != 0:
        raise NamespaceSetupFailed(f"cannot make a test certificate with openssl: {made.stderr.strip()[-200:]}")
    paths[1].chmod(0o600)


class NamespaceSetupFailed(Exception):
    """The check's namespace could not be made: the message says which command and why."""


def _lay_out(files: Path, dirs: tuple[str, ...], certificates: list[tuple[str | None, str | None]],
             written: dict[str, str]) -> None:
    """The check's own layer of the overlay, in the scratch directory: a directory for each of
    `dirs` (where the tree's is mounted), a test certificate at each pki path, and each `written`
    file (path below the root -> text) as the parser must read it."""
    for directory in dirs:
        (files / directory).mkdir(parents=True, exist_ok=True)
    for certificate, key in certificates:
        _test_certificate(files, certificate, key)
    for path, text in written.items():
        target = files / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, errors="surrogateescape")
        target.chmod(0o600)  # bgpd refuses a config others can read


def _overlay_and_chroot(scratch: Path, root: DaemonRoot, tree_dirs: dict[str, Path]) -> str:
    """The shell line, run in the private mount namespace, that merges the check's layer over the
    root, mounts each of the tree's directories (below the root -> where it is) read-only at its
    place with the check's files for it on top, and chroots into it: writes go to the scratch."""
    merged = scratch / "merged"
    for layer in ("upper", "work", "merged"):
        (scratch / layer).mkdir()
    if _OVERLAY_UNSAFE.search(f"{scratch}{root.path}{''.join(tree_dirs)}"):
        raise NamespaceSetupFailed(f"the overlay cannot take {scratch} or {root.path} as a layer (a comma, colon, "
                                   "backslash or space in it); set TMPDIR to a plain path")
    options = f"lowerdir={scratch / 'files'}:{root.path},upperdir={scratch / 'upper'},workdir={scratch / 'work'}"
    lines = [f"mount -t overlay overlay -o {shlex.quote(options)} {shlex.quote(str(merged))}"]
    for index, (directory, source) in enumerate(tree_dirs.items()):
        # A mount of its own: the root's directory of that name (Debian's /etc/ssl) does not show
        # through, as on the host. The tree's directory goes in by a bind mount, so that its path
        # (any name the user gave) never has to fit overlayfs's option string; nodev: what the
        # tree holds is never a way to this machine's devices.
        lower, upper, work = (scratch / f"{kind}-{index}" for kind in ("lower", "upper", "work"))
        for made in (lower, upper, work):
            made.mkdir()
        nested = f"nodev,nosuid,lowerdir={scratch / 'files' / directory}:{lower},upperdir={upper},workdir={work}"
        lines += [f"mount --bind -- {shlex.quote(str(source))} {shlex.quote(str(lower))}",
                  f"mount -t overlay overlay -o {shlex.quote(nested)} {shlex.quote(str(merged / directory))}"]
    # /proc and /sys as the network namespace sees them: a parser may read its links there.
    lines += [f"mount -t proc proc {shlex.quote(str(merged / 'proc'))}",
              f"mount -t sysfs sysfs {shlex.quote(str(merged / 'sys'))}",
              f'exec chroot {shlex.quote(str(merged))} /usr/bin/env -i PATH={_ROOT_PATH} "$@"']
    return " && ".join(lines)


def require_scratch_for_overlays() -> None:
    """The temporary directory can hold overlay layers: overlayfs takes them as one option
    string, which a comma, colon or space would split. A fact of this machine, not of any host."""
    scratch = tempfile.gettempdir()
    if _OVERLAY_UNSAFE.search(scratch):
        raise UserError(f"TMPDIR {scratch!r}: overlayfs cannot take a path with a comma, colon, backslash or space "
                        "as a layer; set TMPDIR to a plain directory (like /tmp)")


def run_shaped_like_host(tree: Path, dirs: tuple[str, ...], argv: list[str],
                         certificates: list[tuple[str | None, str | None]] | None = None,
                         written: dict[str, str] | None = None, root_name: str = "daemons",
                         ) -> subprocess.CompletedProcess[str]:
    """`argv`, a program of the daemon root `root_name`, run as on the host: in a throwaway network
    namespace whose links carry the host's interface names, chrooted into the daemon root with the
    tree's `dirs` (below its root: "etc/mail"), a test certificate at each (certificate, key) path
    and each `written` file (path -> text) laid over it, in a private mount namespace. Needs root.
    Raises TreeFileRefused for a link on the way to one of `dirs` or a special file below one."""
    root = daemon_root(root_name)
    require_scratch_for_overlays()
    tree_dirs = {directory: _tree_directory(tree, directory) for directory in dirs}
    namespace = f"mscheck-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="mailsite-check-") as scratch:
        files = Path(scratch) / "files"
        files.mkdir()
        _lay_out(files, dirs, certificates or [], written or {})
        enter = _overlay_and_chroot(Path(scratch), root, tree_dirs)
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
            # A pid namespace too, ended with unshare (--kill-child): nothing the parser starts outlives it.
            return _run(["ip", "netns", "exec", namespace, "unshare", "--mount", "--propagation", "private",
                         "--pid", "--fork", "--kill-child", "sh", "-c", enter, "sh", *argv])
        finally:
            _run(["ip", "netns", "del", namespace])


def _parser_problems(host: str, file: str, result: subprocess.CompletedProcess[str], path: str,
                     program: str) -> list[CheckProblem]:
    """The parser's complaints about the file it read at `path`, named `file` as the admin knows it."""
    output = (result.stdout + result.stderr).replace(path, file)
    problems = _problems(host, file, output, program)
    if result.returncode != 0 and not problems:
        problems.append(CheckProblem(host, file, None, f"{program} -n failed with status {result.returncode}"))
    return problems


def check_smtpd(host: str, tree: Path, path: str) -> list[CheckProblem]:
    try:
        pki = pki_pairs(_read(tree, path))
        if unsafe := [reason for pair in pki for reason in map(unsafe_pki_path, filter(None, pair)) if reason]:
            return [CheckProblem(host, "smtpd.conf", None, unsafe[0])]
        result = run_shaped_like_host(tree, ("etc/mail",), ["smtpd", "-n", "-f", f"/{path}"], pki)
    except TreeFileRefused as refused:
        return [CheckProblem(host, refused.file, None, str(refused))]
    except NamespaceSetupFailed as failed:
        return [CheckProblem(host, "smtpd.conf", None, str(failed))]
    return _parser_problems(host, "smtpd.conf", result, f"/{path}", "smtpd")


def check_bgpd(host: str, tree: Path, path: str) -> list[CheckProblem]:
    try:
        result = run_shaped_like_host(tree, (), ["bgpd", "-n", "-f", f"/{path}"],
                                      written={path: linux_bgpd_conf(_read(tree, path))})
    except TreeFileRefused as refused:
        return [CheckProblem(host, refused.file, None, str(refused))]
    except NamespaceSetupFailed as failed:
        return [CheckProblem(host, "bgpd.conf", None, str(failed))]
    return _parser_problems(host, "bgpd.conf", result, f"/{path}", "bgpd")


# The accounts of an OpenBSD primary that doveconf looks up: default_internal_user and
# default_login_user must exist. Those OpenBSD's dovecot package makes (its PLIST's @newuser
# _dovecot:518 and _dovenull:666) and the mail user the image makes; Debian's dovecot and
# dovenull are not among them, so a config leaning on Debian's compiled-in users fails here as
# it would on OpenBSD.
DOVECOT_HOST_ACCOUNTS = (("root", 0), ("_dovecot", 518), ("_dovenull", 666), (MAIL_USER, MAIL_UID))
# "doveconf: Fatal: Error in configuration file /etc/dovecot/dovecot.conf line 1: Unknown setting: x",
# "doveconf: Warning: Obsolete setting in /etc/dovecot/dovecot.conf:3: ...", or a message alone.
# Used with fullmatch.
_DOVECONF = re.compile(r"(?:doveconf: )?(?:Panic|Fatal|Error|Warning): "
                       r"(?:Error in configuration file (?P<file>/\S+?)(?: line (?P<line>\d+))?: "
                       r"|(?P<what>[^:]*) in (?P<in_file>/\S+?):(?P<in_line>\d+): )?(?P<message>.*)")


def _account_files() -> dict[str, str]:
    """/etc/passwd and /etc/group holding DOVECOT_HOST_ACCOUNTS alone (each its own group), in
    place of the root's: what getpwnam finds in the check."""
    passwd = [f"{name}:*:{uid}:{uid}::/nonexistent:/sbin/nologin" for name, uid in DOVECOT_HOST_ACCOUNTS]
    group = [f"{name}:*:{uid}:" for name, uid in DOVECOT_HOST_ACCOUNTS]
    return {"etc/passwd": "\n".join(passwd) + "\n", "etc/group": "\n".join(group) + "\n"}


def doveconf_problems(host: str, path: str, stderr: str) -> list[CheckProblem]:
    """One problem per complaint of doveconf about the config at `path` (named dovecot.conf; an
    included file by its path in the tree), each once: an Error line is said again by a Fatal one
    naming the file."""
    said: dict[tuple[str | None, int | None, str], None] = {}  # (file or None, line, message), in order
    for raw in stderr.splitlines():
        if not (text := raw.strip()):
            continue
        match = _DOVECONF.fullmatch(text)
        if match is None:
            said[(None, None, text.removeprefix("doveconf: "))] = None
            continue
        where = match["file"] or match["in_file"]
        line = match["line"] or match["in_line"]
        message = f"{match['what']}: {match['message']}" if match["what"] else match["message"]
        message = message.replace(f"/{path}", "dovecot.conf")  # "section started at /etc/dovecot/dovecot.conf:4"
        file = None if where is None else "dovecot.conf" if where == f"/{path}" else where.lstrip("/")
        said[(file, int(line) if line else None, message)] = None
    placed = {message for file, _, message in said if file is not None}
    return [CheckProblem(host, file or "dovecot.conf", line, message) for file, line, message in said
            if file is not None or message not in placed]


def check_doveconf(host: str, tree: Path, path: str) -> list[CheckProblem]:
    try:
        # Only stderr: doveconf prints the config it parsed on stdout, even when it refuses it.
        result = run_shaped_like_host(tree, (str(Path(path).parent),), ["doveconf", "-n", "-c", f"/{path}"],
                                      written=_account_files(), root_name="dovecot")
    except TreeFileRefused as refused:
        return [CheckProblem(host, refused.file, None, str(refused))]
    except NamespaceSetupFailed as failed:
        return [CheckProblem(host, "dovecot.conf", None, str(failed))]
    problems = doveconf_problems(host, path, result.stderr)
    if result.returncode != 0 and not problems:
        problems.append(CheckProblem(host, "dovecot.conf", None, f"doveconf -n failed with status {result.returncode}"))
    return problems


# The package's rspamd.conf resolves rspamd's public fuzzy servers as it loads, and the check's
# namespace has no DNS: /etc/hosts gives these names an address of the benchmarking range, so
# that --strict fails on the tree's own problems alone (the bake checks on the real network). Its
# resolver needs a nameserver to start: one on loopback, where nothing answers.
RSPAMD_RESOLVED_AT_LOAD = ("fuzzy1.rspamd.com", "fuzzy2.rspamd.com")
# "failed to load config: ucl parser error: error while parsing /etc/rspamd/local.d/actions.conf:
# line: 1, column: 9 - 'string value must not be empty', character: ';'". Used with search.
_RSPAMADM_WHERE = re.compile(r"error while parsing (?P<file>/\S+): line: (?P<line>\d+), column: \d+ - (?P<message>.*)")
_RSPAMADM_TALLY = re.compile(r"syntax OK|syntax BAD|\d+ errors? found")
_LONGEST = 300  # a module's schema error spells its whole schema out: the start says what is wrong


def rspamadm_problems(host: str, output: str) -> list[CheckProblem]:
    """One problem per complaint of rspamadm configtest (its tally lines aside): a parse error
    names the local.d file and line, a module's schema error only itself."""
    problems = []
    for raw in output.splitlines():
        text = raw.strip()
        if not text or _RSPAMADM_TALLY.fullmatch(text):
            continue
        if where := _RSPAMADM_WHERE.search(text):
            problems.append(CheckProblem(host, where["file"].lstrip("/"), int(where["line"]), where["message"]))
        else:
            problems.append(CheckProblem(host, "etc/rspamd/local.d", None,
                                         text if len(text) <= _LONGEST else text[:_LONGEST] + " ..."))
    return problems


def check_rspamd(host: str, tree: Path, path: str) -> list[CheckProblem]:
    local_d = str(Path(path).parent)
    # local.d, and override.d where the tree has one (what replaces a default rather than adds to it).
    dirs = tuple(str(Path(local_d).parent / name) for name in ("local.d", "override.d")
                 if (tree / Path(local_d).parent / name).is_dir() or name == "local.d")
    hosts = "127.0.0.1\tlocalhost\n" + "".join(f"198.18.0.1\t{name}\n" for name in RSPAMD_RESOLVED_AT_LOAD)
    try:
        # The package's /etc/rspamd (Debian's, of the same major) with the tree's files laid over it.
        result = run_shaped_like_host(tree, dirs, ["rspamadm", "configtest", "--strict"],
                                      written={"etc/hosts": hosts, "etc/resolv.conf": "nameserver 127.0.0.1\n"})
    except TreeFileRefused as refused:
        return [CheckProblem(host, refused.file, None, str(refused))]
    except NamespaceSetupFailed as failed:
        return [CheckProblem(host, local_d, None, str(failed))]
    problems = rspamadm_problems(host, result.stdout + result.stderr)
    if result.returncode != 0 and not problems:
        problems.append(CheckProblem(host, local_d, None, f"rspamadm configtest failed with status {result.returncode}"))
    return problems


def check_shell(host: str, tree: Path, path: str) -> list[CheckProblem]:
    try:
        script = _regular_file(tree, path)
    except TreeFileRefused as refused:
        return [CheckProblem(host, refused.file, None, str(refused))]
    result = _run(["sh", "-n", str(script)])
    return _problems(host, path, result.stderr.replace(str(script), path), "sh")


@dataclass(frozen=True)
class Parser:
    program: str  # the binary it runs
    package: str  # the Debian package that installs it (in the daemon root, or this machine's: make deps)
    check: Callable[[str, Path, str], list[CheckProblem]]  # (host, tree, path) -> its problems
    # A daemon's parser comes from a daemon root (mailsite.daemonroot.ROOTS), in the version the
    # images run; None: this machine's own.
    root: str | None = "daemons"

    @property
    def from_root(self) -> bool:
        return self.root is not None


# How each parser a daemon names is run on a tree.
_PARSERS: dict[str, Parser] = {
    "smtpd -n": Parser("smtpd", "opensmtpd", check_smtpd),
    "bgpd -n": Parser("bgpd", "openbgpd", check_bgpd),
    "doveconf": Parser("doveconf", "dovecot-core", check_doveconf, root="dovecot"),
    "rspamadm configtest": Parser("rspamadm", "rspamd", check_rspamd),
    # A shell script's syntax, no daemon's grammar: this machine's sh will do.
    "sh -n": Parser("sh", "dash", check_shell, root=None),
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
    """Everything the checks need is here: one line naming what to install, not an OSError. A
    parser from the daemon root needs the root (built here when missing) and the tools that lay
    the host's files over it; the others, their own program on this machine."""
    parsers = dict.fromkeys(_PARSERS[test.parser] for test in tests)
    if any(parser.from_root for parser in parsers):
        require_scratch_for_overlays()
    for parser in parsers:
        for program, package in (_HOST_TOOLS if parser.from_root else {parser.program: parser.package}).items():
            if shutil.which(program) is None:
                raise UserError(f"configtest needs {program}, which is not installed here: "
                                f"install the Debian package {package} (make deps)")
    for parser in parsers:
        if parser.root is not None and parser.package not in daemon_root(parser.root).versions:
            raise UserError(f"the daemon root {parser.root!r} has no {parser.package}, so {parser.program} cannot "
                            "run: add it to its packages in mailsite/daemonroot.py")


def _host_version(package: str) -> str | None:
    try:
        result = _run(["dpkg-query", "-W", "-f", "${Version}", package])
    except OSError:  # no dpkg here: the report says "this machine's sh" without a version
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def parser_versions(parsers: Iterable[str]) -> list[str]:
    """Which program, in which version, ran each of `parsers` ("smtpd -n"), in the report's fixed
    order: what a pass is worth depends on it, since each major of a daemon has its own grammar."""
    lines, ran = [], set(parsers)
    for name in [name for name in _PARSERS if name in ran]:
        parser = _PARSERS[name]
        if parser.root is not None:
            lines.append(f"{name}: {daemon_root(parser.root).describe([parser.package])} "
                         f"({ROOTS[parser.root].origin} daemon root)")
        elif version := _host_version(parser.package):
            lines.append(f"{name}: {parser.package} {version} (this machine)")
        else:
            lines.append(f"{name}: this machine's {parser.program}")
    return lines


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
