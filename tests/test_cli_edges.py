"""The command-line tool at its edges: hostile or broken stack files, odd --out paths, a damaged
key store, Ctrl-C mid-render. Each ends in one line and exit 2 (130 for Ctrl-C), shows no secret,
and leaves what was on disk whole."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mailsite.cli import main as mailsite_main
from tests.sites import ROOT, example_settings

KEY = "fedcba9876543210fedcba9876543210"


def _stack(tmp_path: Path, settings: dict, name: str = "edge") -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump({"config": {f"mailsite:{k}": v for k, v in settings.items()}}))
    return path


def _keyed(tmp_path: Path, settings: dict | None = None) -> Path:
    """A stack file whose keys are in a file backend under tmp_path, created."""
    settings = settings or example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    stack = _stack(tmp_path, settings)
    assert _tool("secrets", "init", "--config", str(stack)).returncode == 0
    return stack


def _limited() -> None:
    # The bomb's expansion took 3.6 GB before: a test that fails must fail fast, not take the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _process(*args: str, cwd: Path = ROOT, umask: int | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    """`python -m mailsite ARGS` in a process of its own: for what only a process shows, under a
    memory limit (a stack file bomb), a umask, a timeout (a read that would wait forever), and
    configtest (it takes SIGTERM as Ctrl-C, for the rest of the process)."""
    def start():
        _limited()
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "mailsite", *args], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=start, timeout=timeout)


def _tool(*args: str) -> subprocess.CompletedProcess:
    """What `python -m mailsite ARGS` prints and its exit status, from the same main() run in this
    process: the interpreter and the commands' imports cost a second of CPU a call otherwise."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = mailsite_main(list(args), prog="python -m mailsite")
        except SystemExit as exit:  # argparse's refusal of the command line
            status = exit.code if isinstance(exit.code, int) else 2
    return subprocess.CompletedProcess(["python", "-m", "mailsite", *args], status, out.getvalue(), err.getvalue())


def _one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- what an error line shows -------------------------------------------------------------------

@pytest.mark.parametrize("place", [
    lambda s: s.update(queueKeys={"mx1": KEY}),           # the top-level name for secrets.queueKeys
    lambda s: s.update(secrets=KEY),                       # a key where the secrets section goes
    lambda s: s.update(secret={"spamdSyncKey": KEY}),      # a misspelt section
    lambda s: s["hosts"][0].update(queueKey=KEY),          # a key beside a host's settings
], ids=["queueKeys", "secrets", "secret", "host"])
def test_a_key_under_a_misspelt_setting_is_never_shown(tmp_path, place):
    settings = example_settings()
    place(settings)
    line = _one_line(_tool("render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out")))
    assert KEY not in line and KEY[:8] not in line


@pytest.mark.parametrize("value,escaped", [
    ("7d\nmatch from any for any action relay", "7d\\nmatch from any"),
    ("7d\r\x1b[2J\x1b]0;owned\x07", "7d\\r\\x1b[2J\\x1b]0;owned\\x07"),
    ("7d\u2028\u2029\u0085", "7d\\u2028\\u2029\\x85"),
])
def test_control_characters_in_a_value_are_shown_escaped(tmp_path, value, escaped):
    settings = example_settings()
    settings["queue"]["ttl"] = value
    line = _one_line(_tool("render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out")),
                     "mailsite:queue.ttl = ", escaped, "like 7d")
    assert line.isprintable()


def _every_setting(data, loc=()):
    yield loc
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _every_setting(value, loc + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _every_setting(value, loc + (index,))


# Pydantic's own words: the type names of Python and of the model's classes, and no fix.
PYDANTIC_WORDS = ("Input should", "String should", "List should", "instance of", "Value error", "valid dictionary",
                  "valid string", "valid integer", "valid list", "valid boolean", "pattern '")


def test_every_message_says_the_fix_in_the_sites_words():
    from pydantic import ValidationError

    from mailsite.model import Site
    from mailsite.problems import from_validation_error

    wrong = ["x", 3.5, True, None, [], {}, "", -1, 10 ** 20, "9" * 5000, ["a"], {"a": 1}]
    raw = set()
    example = example_settings()
    for loc in list(_every_setting(example))[1:]:
        for value in wrong:
            settings = copy.deepcopy(example)
            place = settings
            for part in loc[:-1]:
                place = place[part]
            place[loc[-1]] = value
            try:
                Site.model_validate(settings)
            except ValidationError as error:
                for problem in from_validation_error(error):
                    says_fix = ";" in problem.message or problem.message.startswith("must ")
                    if any(word in problem.message for word in PYDANTIC_WORDS) or not says_fix:
                        raw.add(f"{problem.setting}: {problem.message}")
    assert sorted(raw) == [], "\n".join(sorted(raw))


def test_a_loopback_address_on_the_primary_is_blamed_on_the_primary(tmp_path):
    settings = example_settings()
    settings["hosts"][0]["ipv4"] = "127.0.0.1"
    _one_line(_tool("render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out")),
              "mailsite:hosts[0].ipv4 = 127.0.0.1: a loopback address")


def test_missing_media_checksum_is_a_setting_to_fix_exit_2(tmp_path):
    stack = _keyed(tmp_path)
    _one_line(_tool("bake", "--config", str(stack), "--host", "mx2"), "mailsite:images.isoSha256 = (absent): required to bake")


def test_tests_only_inline_backend_is_refused_by_the_tool(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "inline", "spamdSyncKey": KEY, "queueKeys": {h["name"]: KEY for h in settings["hosts"]}}
    line = _one_line(_tool("render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out")),
                     "mailsite:secrets.backend = inline", "tests only")
    assert KEY not in line
    assert not (tmp_path / "out").exists()


# --- reading the stack file ---------------------------------------------------------------------

def _render_text(tmp_path: Path, text: str | bytes) -> subprocess.CompletedProcess:
    path = tmp_path / "Pulumi.odd.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return _process("render", "--config", str(path), "--out", str(tmp_path / "out"))


def test_non_utf8_stack_file_is_one_line(tmp_path):
    _one_line(_render_text(tmp_path, b"config:\n  mailsite:target: libvirt\n  mailsite:domains: [caf\xe9.example]\n"),
              "not UTF-8 text (line 3)")


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ["config:", "  mailsite:recipients:", '    a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"    a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    _one_line(_render_text(tmp_path, "\n".join(lines) + "\n"), "expands to more than")


def test_deeply_nested_or_huge_stack_file_is_one_line(tmp_path):
    _one_line(_render_text(tmp_path, "config:\n  mailsite:domains: " + "[" * 50000 + "]" * 50000 + "\n"), "nested more than")
    _one_line(_render_text(tmp_path, "config:\n  mailsite:domains: [" + "a, " * 400000 + "]\n"), "larger than 1 MiB")
    _one_line(_render_text(tmp_path, "config:\n  mailsite:bgpSpamd: {localAs: " + "9" * 5000 + "}\n"), "number too long")


def test_a_hex_number_too_long_to_print_is_one_line(tmp_path):
    # It reads (hex has no digit limit), then cannot be written in decimal in the error line.
    _one_line(_render_text(tmp_path, "config:\n  mailsite:queue: {drainMinutes: 0x" + "f" * 4000 + "}\n"),
              "number too long to read at line 2")


@pytest.mark.parametrize("raw", [b"\x00", b"\x1b[2J", b"\x7f"], ids=["nul", "escape", "delete"])
def test_a_control_character_in_the_stack_file_is_one_line(tmp_path, raw):
    line = _one_line(_render_text(tmp_path, b"config:\n  mailsite:target: lib" + raw + b"virt\n"),
                     "holds a control character YAML does not allow (line 2)")
    assert line.isprintable()


@pytest.mark.parametrize("kind", ["fifo", "terminal", "device", "directory"])
def test_a_stack_file_that_is_not_a_file_is_one_line_at_once(tmp_path, kind):
    """A FIFO (or /dev/stdin on a terminal) nobody writes to would keep the tool waiting forever."""
    path = tmp_path / "Pulumi.odd.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "terminal":
        main, _ = os.openpty()
        path.symlink_to(os.ttyname(main))
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    expected = "cannot read it (Is a directory)" if kind == "directory" else "not a regular file"
    _one_line(_process("render", "--config", str(path), "--out", str(tmp_path / "out"), timeout=10), expected,
              "give the path of a Pulumi.<stack>.yaml")


@pytest.mark.parametrize("text,line", [
    ("config:\n  mailsite:target: libvirt\n  mailsite:target: vultr\n", "'mailsite:target' at line 3 is already set at line 2"),
    ("config:\n  mailsite:recipients:\n    users: [alice]\n    aliases:\n      postmaster: alice\n      postmaster: bob\n",
     "'postmaster' at line 6 is already set at line 5"),
])
def test_a_key_set_twice_is_refused_as_pulumi_does(tmp_path, text, line):
    _one_line(_render_text(tmp_path, text), line, "keep one")


@pytest.mark.parametrize("setting,value,fix", [
    ("secrets", {"backend": "inline", "spamdSyncKey": {"secure": "v1:c2VjcmV0Y2lwaGVydGV4dA=="}}, "remove it and run python -m mailsite secrets init"),
    ("bgpSpamd", {"localAs": {"secure": "v1:c2VjcmV0Y2lwaGVydGV4dA=="}}, "it is not a secret: set it in clear"),
    ("hosts", [{"name": "mx1", "role": "primary", "ipv4": {"secure": "v1:c2VjcmV0Y2lwaGVydGV4dA=="}}], "it is not a secret"),
])
def test_nested_pulumi_secret_is_refused_naming_the_setting(tmp_path, setting, value, fix):
    settings = example_settings()
    settings[setting] = value
    result = _tool("render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out"))
    name = {"secrets": "mailsite:secrets.spamdSyncKey", "bgpSpamd": "mailsite:bgpSpamd.localAs", "hosts": "mailsite:hosts[0].ipv4"}[setting]
    line = _one_line(result, f"{name} = <encrypted>: ", "only the Pulumi CLI", fix)
    assert "c2VjcmV0" not in line


def test_program_refuses_a_setting_given_twice_or_nested_too_deep():
    import pulumi.runtime.config as runtime

    from mailsite.problems import SiteConfigError
    from mailsite.stack import stack_settings

    token = runtime.CONFIG.set({"mailsite:recipients": '{"users": ["alice"], "users": ["mallory"]}',
                                "mailsite:domains": "[" * 100 + "]" * 100, "mailsite:target": "libvirt"})
    try:
        with pytest.raises(SiteConfigError) as raised:
            stack_settings()
    finally:
        runtime.CONFIG.reset(token)
    assert [str(p) for p in raised.value.problems] == [
        "mailsite:recipients = <not shown>: sets 'users' twice; keep one",
        "mailsite:domains = <not shown>: nested more than 64 levels deep; a stack's settings need a few",
    ]


def _program_problems(monkeypatch, settings: dict, secret_keys: list[str]) -> list[str]:
    """The program's reading of the stack, given its config as the language host gives it (env)."""
    from mailsite.problems import SiteConfigError
    from mailsite.stack import stack_site

    from pulumi.runtime import config as runtime_config

    config = {f"mailsite:{k}": json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in settings.items()}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(secret_keys))
    # A fresh process, as the language host starts: no config left in the SDK by an earlier
    # program run in this one (the mocks' tests set it), which would win over the environment.
    config_token = runtime_config.CONFIG.set({})
    secrets_token = runtime_config._SECRET_KEYS.set(set())
    try:
        with pytest.raises(SiteConfigError) as raised:
            stack_site()
    finally:
        runtime_config.CONFIG.reset(config_token)
        runtime_config._SECRET_KEYS.reset(secrets_token)
    return [str(problem) for problem in raised.value.problems]


def test_program_never_shows_a_setting_the_stack_keeps_secret(monkeypatch):
    """pulumi config set --secret (--path) marks the setting; the engine gives the program its value in clear."""
    settings = example_settings()
    settings["queue"]["ttl"] = KEY
    settings["hosts"][0]["fqdn"] = settings["hosts"][1]["fqdn"] = f"mx.{KEY}.example.org"
    settings["target"] = KEY
    problems = _program_problems(monkeypatch, settings, ["mailsite:queue", "mailsite:hosts", "mailsite:target"])
    assert [problem.split(" = ")[0] for problem in problems] == ["mailsite:target", "mailsite:queue.ttl"], problems
    settings["target"], settings["queue"]["ttl"] = "libvirt", "7d"
    problems += _program_problems(monkeypatch, settings, ["mailsite:queue", "mailsite:hosts", "mailsite:target"])
    assert problems[-1].startswith("mailsite:hosts[1].fqdn = <not shown>: same MX name as hosts[0]"), problems
    assert not [problem for problem in problems if KEY[:8] in problem], problems


def test_program_refuses_an_encrypted_value_as_the_tool_does(monkeypatch):
    settings = example_settings()
    settings["hosts"][0]["ipv4"] = {"secure": "v1:c2VjcmV0Y2lwaGVydGV4dA=="}
    assert _program_problems(monkeypatch, settings, []) == [
        "mailsite:hosts[0].ipv4 = <encrypted>: encrypted by pulumi config set --secret, which only the Pulumi CLI and the "
        "stack's secrets provider can decrypt; it is not a secret: set it in clear (pulumi config set --path without --secret)"]


# --- --out --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _immutable(path: Path):
    """A directory even root cannot write in (chattr +i): 'unwritable' for a test running as root."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_out_that_is_a_file_a_symlink_or_unwritable_is_one_line(tmp_path):
    stack = _keyed(tmp_path)
    render = lambda out: _tool("render", "--config", str(stack), "--out", str(out))  # noqa: E731
    (tmp_path / "file").write_text("mine\n")
    _one_line(render(tmp_path / "file"), "is a file")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    _one_line(render(tmp_path / "link"), "is a symbolic link")
    _one_line(render(tmp_path / "file" / "out"), "cannot write beside it (Not a directory)")
    locked = tmp_path / "locked"
    locked.mkdir()
    with _immutable(locked):
        _one_line(render(locked / "out"), "cannot write beside it (Operation not permitted)")
    assert (tmp_path / "file").read_text() == "mine\n" and list((tmp_path / "elsewhere").iterdir()) == []


def _snapshot(out: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(out)): (p.read_text() if p.is_file() else "", p.stat().st_mode & 0o7777)
            for p in sorted(out.rglob("*"))}


def test_render_never_deletes_what_it_did_not_write(tmp_path):
    stack = _keyed(tmp_path)
    out = tmp_path / "out"
    assert _tool("render", "--config", str(stack), "--out", str(out)).returncode == 0
    mine = out / "mx1" / "etc" / "notes.txt"
    mine.write_text("my notes\n")
    before = _snapshot(out)
    _one_line(_tool("render", "--config", str(stack), "--out", str(out)), "holds mx1/etc/notes.txt, which mailsite did not render")
    assert _snapshot(out) == before
    other = tmp_path / "home"
    other.mkdir()
    (other / "mx1").mkdir()
    (other / "thesis.tex").write_text("years of work\n")
    _one_line(_tool("render", "--config", str(stack), "--out", str(other)), "which mailsite did not render")
    assert (other / "thesis.tex").read_text() == "years of work\n"


def test_render_replaces_its_own_site_whole(tmp_path):
    settings = example_settings()
    stack = _keyed(tmp_path, settings)
    out = tmp_path / "out"
    assert _tool("render", "--config", str(stack), "--out", str(out)).returncode == 0
    settings["hosts"].pop()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    _stack(tmp_path, settings)
    assert _tool("render", "--config", str(stack), "--out", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [".mailsite-render", "mx1", "mx2"]
    assert [p.name for p in tmp_path.iterdir() if "render-" in p.name] == []


# Ctrl-C at the k-th step of a render: a real SIGINT, sent by the process to itself at a step
# chosen by the test, so that every step is hit in turn.
_INTERRUPTED = """
import os, pathlib, shutil, signal, sys
import mailsite.trees as trees
from mailsite.cli import main
count = [0]
def interrupting(real):
    def step(*args, **kwargs):
        count[0] += 1
        if count[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    return step
trees.write_tree = interrupting(trees.write_tree)
pathlib.Path.rename = interrupting(pathlib.Path.rename)
shutil.rmtree = interrupting(shutil.rmtree)
if hasattr(trees, "_exchange"):
    trees._exchange = interrupting(trees._exchange)
sys.exit(main(["render", "--config", sys.argv[2], "--out", sys.argv[3]]))
"""


def test_ctrl_c_at_any_step_leaves_the_previous_site_or_the_new_one_whole(tmp_path):
    settings = example_settings()
    stack = _keyed(tmp_path, settings)
    out = tmp_path / "out"
    assert _tool("render", "--config", str(stack), "--out", str(out)).returncode == 0
    old = _snapshot(out)
    settings["maxMessageSize"] = "25M"
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    _stack(tmp_path, settings)
    assert _tool("render", "--config", str(stack), "--out", str(tmp_path / "expected")).returncode == 0
    new = _snapshot(tmp_path / "expected")
    interrupted = 0
    for step in range(1, 30):
        result = subprocess.run([sys.executable, "-c", _INTERRUPTED, str(step), str(stack), str(out)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert "Traceback" not in result.stderr, result.stderr
        now = _snapshot(out)
        assert now in (old, new), f"a mixed site after Ctrl-C at step {step}"
        assert [p.name for p in tmp_path.iterdir() if "render-" in p.name] == [], f"leftovers after step {step}"
        if result.returncode == 0:
            break
        assert result.returncode == 130 and result.stderr.splitlines() == ["interrupted; nothing half-written was kept"]
        interrupted += 1
        if now == new:
            break  # swapped in whole before the signal was taken
    assert interrupted >= 3


# --- modes whatever the umask -------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_modes_do_not_depend_on_the_umask(tmp_path, umask):
    settings = example_settings()
    store = tmp_path / "made" / "by" / "init" / "keys"
    settings["secrets"] = {"backend": "file", "path": str(store)}
    stack = _stack(tmp_path, settings)
    assert _process("secrets", "init", "--config", str(stack), umask=umask).returncode == 0
    for directory in [tmp_path / "made", *[p for p in (tmp_path / "made").rglob("*") if p.is_dir()]]:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    for file in [p for p in (tmp_path / "made").rglob("*") if p.is_file()]:
        assert file.stat().st_mode & 0o777 == 0o600, file

    out = tmp_path / "rendered" / "site"
    assert _process("render", "--config", str(stack), "--out", str(out), umask=umask).returncode == 0
    assert (tmp_path / "rendered").stat().st_mode & 0o777 == 0o700
    assert out.stat().st_mode & 0o777 == 0o700, "the site holds keys"
    from mailsite.local import render_stack

    tree = render_stack(stack)[1]["mx1"]
    modes = {path: oct(p.stat().st_mode & 0o777) for path, p in ((str(p.relative_to(out / "mx1")), p) for p in (out / "mx1").rglob("*"))}
    expected = {path: oct(rendered.mode) for path, rendered in tree.items()}
    # Every directory the host's files sit in: root's home private, as OpenBSD ships it, the rest 0755.
    directories = {str(parent) for path in tree for parent in Path(path).parents if parent != Path(".")}
    expected |= {d: "0o700" if d.split("/")[0] == "root" else "0o755" for d in directories}
    assert {"etc", "root/.ssh"} <= directories
    assert modes == expected
    assert oct((out / "mx1").stat().st_mode & 0o777) == "0o755"


# --- the key store ------------------------------------------------------------------------------

def test_secrets_init_where_it_cannot_write_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "file" / "keys")}
    _one_line(_tool("secrets", "init", "--config", str(_stack(tmp_path, settings))), "mailsite:secrets.path = ", "Not a directory",
              "set a directory you can write")
    locked = tmp_path / "locked"
    locked.mkdir()
    settings["secrets"] = {"backend": "file", "path": str(locked / "keys")}
    with _immutable(locked):
        _one_line(_tool("secrets", "init", "--config", str(_stack(tmp_path, settings))), "mailsite:secrets.path = ",
                  "Operation not permitted")


def _other_hosts_key(store: Path) -> bytes:
    (version,) = (store / "mx1" / "queue-key" / "versions").iterdir()
    return json.dumps({"AWSCURRENT": f"../../../mx1/queue-key/versions/{version.name}"}).encode()


@pytest.mark.parametrize("labels", [b"[]", b'{"AWSCURRENT": 5}', _other_hosts_key, b"\xff\xfe", b'"AWSCURRENT"', b"{"],
                         ids=["list", "number", "path-to-another-key", "not-utf8", "string", "truncated"])
def test_damaged_label_file_is_one_line(tmp_path, labels):
    stack = _keyed(tmp_path)
    store = tmp_path / "keys" / "mailsite" / "edge"
    (store / "mx2" / "queue-key" / "labels.json").write_bytes(labels(store) if callable(labels) else labels)
    _one_line(_tool("render", "--config", str(stack), "--out", str(tmp_path / "out")), "secret = mailsite/edge/mx2/queue-key: ",
              "restore them from a backup")


def test_damaged_key_version_is_one_line(tmp_path):
    stack = _keyed(tmp_path)
    (version,) = (tmp_path / "keys" / "mailsite" / "edge" / "mx1" / "queue-key" / "versions").iterdir()
    version.write_bytes(b"\xff" * 32)
    _one_line(_tool("render", "--config", str(stack), "--out", str(tmp_path / "out")), "secret = mailsite/edge/mx1/queue-key: ",
              "is unreadable (UnicodeDecodeError)")


# --- diff ---------------------------------------------------------------------------------------

def test_diff_of_a_stack_file_outside_any_repository_is_one_line(tmp_path):
    stack = _stack(tmp_path, example_settings())
    _one_line(_tool("diff", "--config", str(stack), "--base", "HEAD"), "is not inside a git repository")


def test_a_file_system_without_renameat2_still_gets_the_whole_new_site(tmp_path, monkeypatch):
    import mailsite.trees as trees
    from mailsite.templates import RenderedFile

    out = tmp_path / "out"
    trees.write_trees(out, {"mx1": {"etc/myname": RenderedFile("old\n")}, "mx2": {"etc/myname": RenderedFile("old\n")}})
    monkeypatch.setattr(trees, "_libc", object())  # no renameat2: the two-rename swap
    trees.write_trees(out, {"mx1": {"etc/myname": RenderedFile("new\n")}})
    site = {path: found for path, found in _snapshot(out).items() if path != ".mailsite-render"}
    assert site == {"mx1": ("", 0o755), "mx1/etc": ("", 0o755), "mx1/etc/myname": ("new\n", 0o644)}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- a key store others could replace --------------------------------------------------------------

def _store_at(tmp_path: Path, path: Path) -> Path:
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(path)}
    return _stack(tmp_path, settings)


@pytest.mark.parametrize("layout", ["store-is-a-link-to-a-shared-dir", "parent-writable-by-all", "store-of-another-user"])
def test_secrets_init_refuses_a_store_another_user_could_replace(tmp_path, layout):
    shared = tmp_path / "shared"
    shared.mkdir()
    if layout == "store-is-a-link-to-a-shared-dir":
        os.chmod(shared, 0o1777)  # like /tmp: the tool must neither use it nor change its mode
        store = tmp_path / "keys"
        store.symlink_to(shared)
        blamed = shared
    elif layout == "parent-writable-by-all":
        os.chmod(shared, 0o777)  # anyone can rename shared/keys away and put their own keys there
        store, blamed = shared / "keys", shared
    else:
        store = blamed = shared / "keys"
        store.mkdir(mode=0o700)
        os.chown(store, 65534, 65534)
    mode = shared.stat().st_mode
    _one_line(_tool("secrets", "init", "--config", str(_store_at(tmp_path, store))),
              f"mailsite:secrets.path = {store.resolve()}: {blamed} ", "could replace the keys", "choose a directory only you")
    assert shared.stat().st_mode == mode
    assert not list(shared.rglob("labels.json"))


def test_render_refuses_keys_from_a_store_others_can_write(tmp_path):
    stack = _keyed(tmp_path)
    os.chmod(tmp_path / "keys", 0o777)
    _one_line(_tool("render", "--config", str(stack), "--out", str(tmp_path / "out")), "is writable by others (mode 777)")
    assert not (tmp_path / "out").exists()


def test_a_store_below_a_sticky_shared_directory_is_usable(tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    assert _tool("secrets", "init", "--config", str(_store_at(tmp_path, shared / "keys"))).returncode == 0
    assert (shared / "keys").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
@pytest.mark.parametrize("file", ["labels", "version"])
def test_a_label_or_key_file_that_is_not_a_plain_file_is_one_line_at_once(tmp_path, kind, file):
    stack = _keyed(tmp_path)
    secret = tmp_path / "keys" / "mailsite" / "edge" / "mx1" / "queue-key"
    (version,) = (secret / "versions").iterdir()
    target = secret / "labels.json" if file == "labels" else version
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(target.read_bytes())
    target.unlink()
    os.mkfifo(target) if kind == "fifo" else target.symlink_to(elsewhere)
    _one_line(_process("render", "--config", str(stack), "--out", str(tmp_path / "out"), timeout=10),
              "secret = mailsite/edge/mx1/queue-key: ", "unreadable", "restore")


# --- other commands' arguments -------------------------------------------------------------------

@pytest.mark.parametrize("minutes", ["0", "-5", "100000"])
def test_drain_minutes_outside_the_settings_bounds_is_one_line(tmp_path, minutes):
    """0 used to fall back to the stack's setting silently; -5 went on to rotate."""
    stack = _keyed(tmp_path)
    for command in (["rotate-queue-key", "--host", "mx2"], ["rotate-spamd-key"]):
        line = _one_line(_tool(*command, "--config", str(stack), "--drain-minutes", minutes), f"--drain-minutes = {minutes}: too ")
        assert line.endswith(("use 1 or more", "use 1440 or less")), line


def test_configtest_shows_a_directory_name_escaped(tmp_path):
    odd = tmp_path / "\x1b]0;owned\x07"
    odd.mkdir()
    line = _one_line(_process("configtest", str(odd)), "\\x1b]0;owned\\x07 holds no rendered host")
    assert line.isprintable()


def _rendered_example(tmp_path: Path) -> Path:
    stack = _keyed(tmp_path)
    out = tmp_path / "out"
    assert _tool("render", "--config", str(stack), "--out", str(out)).returncode == 0
    return out


def test_configtest_knows_a_host_by_its_name_file_and_reports_what_its_tree_lacks(tmp_path):
    """A host whose smtpd.conf is gone is still a host: configtest says the file is missing
    rather than leaving the host out; a directory of no host is still refused."""
    from mailsite.configtest import host_trees, missing_files

    out = _rendered_example(tmp_path)
    (out / "mx2/etc/mail/smtpd.conf").unlink()
    assert set(host_trees(out)) == {"mx1", "mx2", "mx3"}
    assert [str(p) for p in missing_files("mx2", out / "mx2")] == [
        "mx2: etc/mail/smtpd.conf: missing, so smtpd -n could not check it; render the site again"]
    (tmp_path / "empty").mkdir()
    _one_line(_process("configtest", str(tmp_path / "empty")), "holds no rendered host", "run render first")


def test_parser_output_loses_the_running_parsers_own_name():
    from mailsite.configtest import _problems

    [problem] = _problems("mx1", "dovecot.conf", "doveconf: Fatal: unknown setting: imap_frobnicate\n", "doveconf")
    assert str(problem) == "mx1: dovecot.conf: Fatal: unknown setting: imap_frobnicate"
    [problem] = _problems("mx1", "smtpd.conf", "smtpd.conf:3: syntax error\n", "smtpd")
    assert (problem.line, problem.message) == (3, "syntax error")


def test_check_is_no_longer_a_command(tmp_path):
    """Renamed configtest (the daemons' parsers), so that it cannot be taken for the site's health check."""
    result = _tool("check", str(tmp_path))
    assert result.returncode == 2 and "invalid choice: 'check'" in result.stderr


def test_a_stack_name_with_dots_is_a_stack_as_pulumi_takes_it(tmp_path):
    """The pull-request workflow lists Pulumi.prod.eu.yaml as stack prod.eu; the tool must render it too."""
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    stack = _stack(tmp_path, settings, name="prod.eu")
    init = _tool("secrets", "init", "--config", str(stack))
    assert init.returncode == 0 and "created mailsite/prod.eu/mx1/queue-key" in init.stdout, init.stderr
    assert _tool("render", "--config", str(stack), "--out", str(tmp_path / "out")).returncode == 0


@pytest.mark.parametrize("name", ["..", "\x1b[2J", "a b"])
def test_a_file_name_that_is_no_stack_name_is_one_line(tmp_path, name):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    line = _one_line(_tool("secrets", "init", "--config", str(_stack(tmp_path, settings, name=name))), "not a stack file")
    assert line.isprintable() and not (tmp_path / "keys").exists()


@pytest.mark.parametrize("where", ["secrets-path", "host-name", "list-of-sections"])
def test_a_section_where_a_value_belongs_is_shown_without_its_contents(tmp_path, where):
    """A mis-indented block puts a key under a plain setting; its names and values stay unshown."""
    settings = example_settings()
    if where == "secrets-path":
        settings["secrets"] = {"backend": "file", "path": {"queueKeys": {"mx1": KEY}}}
        name, shown = "mailsite:secrets.path", "{...}"
    elif where == "host-name":
        settings["hosts"][0]["name"] = {"queueKey": KEY}
        name, shown = "mailsite:hosts[0].name", "{...}"
    else:
        settings["domains"] = [{"spamdSyncKey": KEY}]
        name, shown = "mailsite:domains[0]", "{...}"
    line = _one_line(_tool("render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out")),
                     f"{name} = {shown}: ")
    assert KEY[:8] not in line and "Key" not in line


def test_a_key_written_in_the_path_form_is_named_whole(tmp_path):
    """Brackets in a setting's name used to drop it from the line ("mailsite = <not shown>")."""
    text = _stack(tmp_path, example_settings()).read_text() + "  mailsite:hosts[0].ipv4: 192.0.2.99\n  \"mailsite:x\\e[31m\": 1\n"
    result = _render_text(tmp_path, text)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: mailsite:hosts[0].ipv4 = <not shown>: unknown setting; in the stack file, nest it below its section "
        "(a.b[0] is pulumi config set --path's form; see Pulumi.example.yaml)",
        "error: mailsite:x\\x1b[31m = <not shown>: unknown setting; remove it or correct its spelling (see Pulumi.example.yaml)"]


@pytest.mark.parametrize("marker", ["fifo", "link-to-dev-zero"])
def test_a_marker_that_is_not_a_plain_file_is_refused_at_once(tmp_path, marker):
    stack = _keyed(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".mailsite-render") if marker == "fifo" else (out / ".mailsite-render").symlink_to("/dev/zero")
    _one_line(_process("render", "--config", str(stack), "--out", str(out), timeout=20), "holds .mailsite-render, which mailsite did not render")


def test_out_that_is_a_mount_point_says_to_render_inside_it(tmp_path):
    stack = _keyed(tmp_path)
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], check=True)
    try:
        _one_line(_tool("render", "--config", str(stack), "--out", str(mount)), "is a mount point", "render into a directory inside it")
        assert _tool("render", "--config", str(stack), "--out", str(mount / "site")).returncode == 0
        assert sorted(p.name for p in (mount / "site").iterdir()) == [".mailsite-render", "mx1", "mx2", "mx3"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_an_error_line_stays_a_line_however_many_domains_the_site_has():
    from mailsite.config import load_site
    from mailsite.problems import SiteConfigError

    settings = example_settings()
    settings["domains"] = [f"d{n}.example" for n in range(1000)]  # the most a site may have
    settings["hosts"][2]["fqdn"] = "mx3.elsewhere.example"
    with pytest.raises(SiteConfigError) as raised:
        load_site(settings)
    (line,) = [str(p) for p in raised.value.problems if p.setting == "mailsite:hosts[2].fqdn"]
    assert "d0.example, d1.example, d2.example, d3.example, d4.example and 995 more" in line and len(line) < 300, line[:300]


def test_secrets_init_refuses_a_store_git_would_commit(tmp_path):
    """secrets.path: keys (relative to the stack file) in a repository that does not ignore it."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": "keys"}
    stack = _stack(tmp_path, settings)
    _one_line(_tool("secrets", "init", "--config", str(stack)), f"mailsite:secrets.path = {tmp_path / 'keys'}: ",
              "not ignored, so the keys would be committed; add it to .gitignore")
    assert not (tmp_path / "keys").exists()
    (tmp_path / ".gitignore").write_text("/keys/\n")
    assert _tool("secrets", "init", "--config", str(stack)).returncode == 0
    status = subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True)
    assert "keys" not in status.stdout


def test_a_file_written_into_out_during_a_render_is_kept(tmp_path, monkeypatch):
    """The check of OUT runs before the site is built; a file that appears after it is not deleted."""
    import mailsite.trees as trees
    from mailsite.problems import SiteConfigError
    from mailsite.templates import RenderedFile

    out = tmp_path / "out"
    trees.write_trees(out, {"mx1": {"etc/myname": RenderedFile("old\n")}})
    real = trees._exchange

    def meanwhile(new, old):
        (out / "mx1" / "etc" / "notes.txt").write_text("written meanwhile\n")
        real(new, old)
    monkeypatch.setattr(trees, "_exchange", meanwhile)
    with pytest.raises(SiteConfigError) as raised:
        trees.write_trees(out, {"mx1": {"etc/myname": RenderedFile("new\n")}})
    (problem,) = raised.value.problems
    assert "rendered, but mx1/etc/notes.txt appeared in it meanwhile; the previous site, with it, is kept in" in problem.message
    (kept,) = [p for p in tmp_path.iterdir() if "render-" in p.name]
    assert (kept / "mx1" / "etc" / "notes.txt").read_text() == "written meanwhile\n"
    assert (out / "mx1" / "etc" / "myname").read_text() == "new\n"


# --- the one place errors are said ---------------------------------------------------------------

def _command_raising(error: BaseException):
    """A command, registered as every command is, whose run raises `error`."""
    class Command:
        @staticmethod
        def register(commands, parents):
            commands.add_parser("fails", parents=[parents.config]).set_defaults(run=Command.run)

        @staticmethod
        def run(args):
            raise error
    return Command


@pytest.mark.parametrize("error,status,lines", [
    ("operation", 1, ["error: mx2: packer exited 1; see /var/tmp/bake.log"]),
    ("user", 2, ["error: --via mx9: not an MX of the lab\\n; use one of mx1"]),
    ("settings", 2, ["error: mailsite:queue.ttl = 7x: like 7d", "error: mailsite:hosts = mx1: two primaries; keep one"]),
    ("interrupted", 130, ["interrupted; nothing half-written was kept"]),
])
def test_main_says_every_error_once_with_its_exit_status(monkeypatch, capsys, error, status, lines):
    import mailsite.cli as cli
    from mailsite.errors import MailsiteError, UserError
    from mailsite.problems import Problem, SiteConfigError

    raised = {
        "operation": MailsiteError("mx2: packer exited 1; see /var/tmp/bake.log"),
        "user": UserError("--via mx9: not an MX of the lab\n; use one of mx1"),
        "settings": SiteConfigError([Problem("mailsite:queue.ttl", "7x", "like 7d"), Problem("mailsite:hosts", "mx1", "two primaries; keep one")]),
        "interrupted": KeyboardInterrupt(),
    }[error]
    monkeypatch.setattr("mailsite.commands.COMMANDS", (_command_raising(raised),))
    assert cli.main(["fails", "--config", "Pulumi.x.yaml"]) == status
    assert capsys.readouterr().err.splitlines() == lines


def test_a_bug_shows_its_traceback_and_exits_70_not_as_a_failed_operation(monkeypatch, capsys):
    import mailsite.cli as cli

    monkeypatch.setattr("mailsite.commands.COMMANDS", (_command_raising(KeyError("mx9")),))
    assert cli.main(["fails", "--config", "Pulumi.x.yaml"]) == 70
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and "KeyError: 'mx9'" in err
    assert err[-1] == "error: a bug in mailsite, not your settings; report it with the traceback above"


def test_ctrl_c_while_the_command_line_is_read_is_one_line_130(monkeypatch, capsys):
    """The commands load and the arguments are parsed in the first half second of every run."""
    import argparse

    import mailsite.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", interrupted)
    assert cli.main(["render", "--config", "Pulumi.x.yaml", "--out", "out"]) == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted; nothing half-written was kept"]


# The venv's `mailsite` (make venv installs the package editable), run outside the project: the
# installed command, not a module found in the working directory.
MAILSITE = Path(sys.executable).parent / "mailsite"


def test_the_mailsite_command_is_installed():
    result = subprocess.run([str(MAILSITE), "--help"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mailsite ") and "configtest" in result.stdout


def test_the_mailsite_command_says_a_setting_to_fix_in_one_line_exit_2(tmp_path):
    settings = example_settings()
    settings["queue"]["ttl"] = "forever"
    result = subprocess.run([str(MAILSITE), "render", "--config", str(_stack(tmp_path, settings)), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd="/")
    _one_line(result, "error: mailsite:queue.ttl = forever: ")
    assert not (tmp_path / "out").exists()


def test_a_value_past_the_model_says_to_correct_the_stack_file(tmp_path, monkeypatch, capsys):
    """A renderer's second line of defence names no value (it may be a key): the line says what to do."""
    import ipaddress

    import mailsite.cli as cli
    import mailsite.local as local

    stack = _keyed(tmp_path)
    loaded = local.load_site_file

    def slipped_past(path):
        site = loaded(path)
        nameservers = [ipaddress.IPv6Address("2001:db8::1%x\nnameserver 203.0.113.66")]
        return site.model_copy(update={"network": site.network.model_copy(update={"nameservers": nameservers})})

    monkeypatch.setattr(local, "load_site_file", slipped_past)
    assert cli.main(["render", "--config", str(stack), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: a value holds a line break or control character ('\\n'), which no setting may hold; nothing was written: "
        "correct the stack file's value that holds it"]


@pytest.mark.parametrize("planted", ["link", "file"])
def test_snapshot_never_writes_through_a_link_or_into_a_directory_in_use(tmp_path, planted):
    stack = _keyed(tmp_path)
    out, elsewhere = tmp_path / "snap", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    if planted == "link":
        (out / "mx1").symlink_to(elsewhere)
    else:
        (out / "notes.txt").write_text("mine\n")
    _one_line(_tool("snapshot", "--config", str(stack), "--out", str(out)), "--out", "not an empty directory")
    assert list(elsewhere.iterdir()) == []
    fresh = tmp_path / "fresh"
    assert _tool("snapshot", "--config", str(stack), "--out", str(fresh)).returncode == 0
    assert (fresh / "identities.json").is_file() and (fresh / "mx1" / "etc" / "myname").is_file()


@pytest.mark.parametrize("text,line", [
    ("config:\n  hosts: []\n", "error: hosts = <not shown>: a key of config: without its namespace, which pulumi refuses; "
                               "write it mailsite:hosts"),
    ("config:\n  mailsite:\n    domains: [example.org]\n", "error: mailsite = <not shown>: settings do not go in a section of "
                                                            "their own; write each setting on its own line of config:, as mailsite:<name>"),
    ("config:\n  'mailsite:':\n    domains: [example.org]\n", "error: mailsite: = <not shown>: settings do not go in a section"),
], ids=["bare", "nested", "empty-name"])
def test_a_setting_written_without_its_namespace_says_how_to_write_it(tmp_path, text, line):
    stack = tmp_path / "Pulumi.bare.yaml"
    stack.write_text(text)
    result = _tool("render", "--config", str(stack), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith(line), result.stderr
