"""Mailbox users' passwords: `python -m mailsite user passwd` refuses bad input in one line and
writes nothing, keeps only a bcrypt hash in the secrets backend (file, and AWS Secrets Manager on
a real moto_server), and the primary's image, and only the primary's, changes with a new one."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest
import yaml
from pulumi.runtime import rpc

from mailsite.config import load_site
from mailsite.images.bake import identity_of
from mailsite.local import REDACTED, render_stack
from mailsite.passwords import COST, hash_password, is_password_hash, password_problem
from mailsite.problems import SiteConfigError
from mailsite.secrets import (
    CURRENT, PREVIOUS, host_store, init_secrets, password_hashes, password_hashes_id, site_secrets,
)
from mailsite.secrets.aws import AwsStore
from tests.dynamic_engine import provider_process, run_program
from tests.sites import EXAMPLE, ROOT, example_settings
from tests.test_images import _request
from tests.test_program import DYNAMIC, SECRET_MARK, SECRET_SIGNATURE, evaluate
from tests.test_providers import CloudMocks, null_bakes  # noqa: F401  (null_bakes: a fixture)

# Test passwords: none is anyone's, each is long enough and free of the user's name.
ALICE = "correct horse battery staple"
ALICE_NEW = "purple monkey dishwasher 42"
BOB = "tr0ub4dor & three"


# ---- what a password must be ------------------------------------------------------------------

@pytest.mark.parametrize("password, reason", [
    ("", "is empty"),
    ("tiny words", "is shorter than 12 characters"),
    ("aaaaaaaaaaaaaaaa", "is one character repeated"),
    ("my name is Alice, ok?", "contains the user name alice"),
    ("é" * 37, "is longer than 72 bytes"),  # 37 characters, 74 bytes: bcrypt would check 72 of them
    ("first line\nsecond line", "holds a control character"),
    ("tab\tseparated words", "holds a control character"),
], ids=["empty", "short", "one-character", "user-name", "past-72-bytes", "newline", "tab"])
def test_weak_or_unhashable_password_is_refused_with_its_reason(password, reason):
    problem = password_problem("alice", password)
    assert problem is not None and problem.startswith(reason)
    assert not password or password not in problem, "a reason never quotes the password"


def test_a_passphrase_is_accepted_and_hashed_as_2b_at_cost_12():
    assert password_problem("alice", ALICE) is None
    # A name of two letters inside a password is chance ("al" in "metal"), not a choice.
    assert password_problem("al", "metal and wood chairs") is None
    hashed = hash_password(ALICE)
    assert hashed.startswith(f"$2b${COST}$") and is_password_hash(hashed)
    assert bcrypt.checkpw(ALICE.encode(), hashed.encode())
    assert not bcrypt.checkpw(ALICE_NEW.encode(), hashed.encode())
    assert not is_password_hash(hashed + "\n") and not is_password_hash("$1$md5crypt$x")


# ---- the command ------------------------------------------------------------------------------

def _stack_file(directory: Path, stack: str, secrets: dict) -> Path:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["config"]["mailsite:secrets"] = secrets
    path = directory / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def file_stack(tmp_path) -> Path:
    return _stack_file(tmp_path, "pw", {"backend": "file", "path": str(tmp_path / "keys")})


def passwd(stack_file: Path, user: str, stdin: str) -> subprocess.CompletedProcess:
    """`user passwd` as a script runs it: the password on stdin, no terminal."""
    return subprocess.run([sys.executable, "-m", "mailsite", "user", "passwd", user, "--config", str(stack_file)],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


@pytest.mark.parametrize("user, stdin, line", [
    ("carol", ALICE + "\n", "error: USER = carol: not a user of mailsite:recipients.users (alice, bob); add it there first"),
    ("alice", "", "error: the password of alice = (not shown): is empty;"),
    ("alice", "\n", "error: the password of alice = (not shown): is empty;"),
    ("alice", "short one\n", "error: the password of alice = (not shown): is shorter than 12 characters;"),
    ("alice", "alice's own password\n", "error: the password of alice = (not shown): contains the user name alice;"),
    ("alice", "x" * 20 + "\n", "error: the password of alice = (not shown): is one character repeated;"),
    ("alice", "long " * 15 + "\n", "error: the password of alice = (not shown): is longer than 72 bytes"),
    ("alice", "with a\ttab in it\n", "error: the password of alice = (not shown): holds a control character"),
], ids=["unknown-user", "no-input", "empty-line", "short", "user-name", "one-character", "past-72-bytes", "control"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(file_stack, user, stdin, line):
    keys = file_stack.parent / "keys"
    assert passwd(file_stack, "bob", BOB + "\n").returncode == 0  # a backend that already holds a password
    before = _files(keys)
    refused = passwd(file_stack, user, stdin)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.startswith(line) and refused.stderr.count("\n") == 1, refused.stderr
    assert _files(keys) == before, "nothing written"
    if stdin.strip():
        assert stdin.strip() not in refused.stderr


def test_inline_backend_keeps_no_passwords(tmp_path):
    stack = _stack_file(tmp_path, "inline", {"backend": "inline", "spamdSyncKey": "0" * 32,
                                             "queueKeys": {h: "1" * 32 for h in ("mx1", "mx2", "mx3")}})
    refused = passwd(stack, "alice", ALICE + "\n")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("error: mailsite:secrets.backend = inline: keeps no passwords (the stack file is no place "
                              "for them); use file or aws-secretsmanager, then set the password\n")


def test_a_script_sets_a_password_kept_only_as_its_hash(file_stack):
    keys = file_stack.parent / "keys"
    done = passwd(file_stack, "alice", ALICE + "\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("alice's password is set (mailsite/pw/password-hashes, version ")
    assert "next pulumi up rebakes mx1's image with it and replaces mx1" in lines[1]
    assert lines[2] == "Until then alice receives mail but cannot log in."
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(keys)}})
    hashes, version = password_hashes(host_store(site, ROOT), "pw")
    assert set(hashes) == {"alice"} and bcrypt.checkpw(ALICE.encode(), hashes["alice"].encode())
    # The password is nowhere but in its hash; the hash nowhere but in the backend.
    stored = b"".join(_files(keys).values())
    assert ALICE.encode() not in stored and hashes["alice"].encode() in stored
    assert ALICE not in done.stdout + done.stderr and hashes["alice"] not in done.stdout + done.stderr
    assert {oct(p.stat().st_mode & 0o777) for p in keys.rglob("*") if p.is_file()} == {"0o600"}


def test_changing_one_password_keeps_the_others_and_the_old_version(file_stack):
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(file_stack.parent / "keys")}})
    store = host_store(site, ROOT)
    assert passwd(file_stack, "alice", ALICE + "\n").returncode == 0
    assert passwd(file_stack, "bob", BOB).returncode == 0, "a last line without its newline is the password too"
    first = store.read(password_hashes_id("pw"))
    changed = passwd(file_stack, "alice", ALICE_NEW + "\n")
    assert changed.returncode == 0 and changed.stdout.splitlines()[2] == "Until then alice logs in with the old password."
    hashes, version = password_hashes(store, "pw")
    assert bcrypt.checkpw(ALICE_NEW.encode(), hashes["alice"].encode())
    assert not bcrypt.checkpw(ALICE.encode(), hashes["alice"].encode())
    assert bcrypt.checkpw(BOB.encode(), hashes["bob"].encode())
    assert store.read(password_hashes_id("pw"), PREVIOUS).version == first.version != version.version


def _on_a_terminal(stack_file: Path, user: str, typed: list[str]) -> tuple[int, str]:
    """`user passwd` run on a terminal (a pty), typing each entry at its prompt."""
    pid, terminal = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "mailsite", "user", "passwd", user, "--config", str(stack_file)])
    shown, pending = b"", list(typed)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not select.select([terminal], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(terminal, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        # Typed at the prompt, never ahead of it: getpass flushes what was typed before it asked.
        if pending and shown.endswith(b": "):
            os.write(terminal, pending.pop(0).encode() + b"\n")
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_on_a_terminal_the_password_is_asked_twice_unseen(file_stack):
    code, shown = _on_a_terminal(file_stack, "alice", [ALICE, ALICE])
    assert code == 0, shown
    assert "New password for alice:" in shown and "Again, for alice:" in shown and "alice's password is set" in shown
    assert ALICE not in shown, "not echoed"
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(file_stack.parent / "keys")}})
    hashes, _ = password_hashes(host_store(site, ROOT), "pw")
    assert bcrypt.checkpw(ALICE.encode(), hashes["alice"].encode())


def test_on_a_terminal_two_different_entries_change_nothing(file_stack):
    code, shown = _on_a_terminal(file_stack, "alice", [ALICE, ALICE_NEW])
    assert code == 2
    assert "error: the password of alice = (not shown): the two entries differ; nothing was changed" in shown
    assert _files(file_stack.parent / "keys") == {}


def test_aws_backend_keeps_the_hashes_as_versions_of_one_secret(tmp_path, moto_endpoint):
    stack = f"aws{os.urandom(4).hex()}"  # moto_server keeps its secrets for the whole session
    secrets = {"backend": "aws-secretsmanager", "region": "eu-central-1", "endpointUrl": moto_endpoint, "profile": None}
    stack_file = _stack_file(tmp_path, stack, secrets)
    first = passwd(stack_file, "alice", ALICE + "\n")
    assert first.returncode == 0, first.stderr
    second = passwd(stack_file, "alice", ALICE_NEW + "\n")
    assert second.returncode == 0, second.stderr
    assert passwd(stack_file, "dave", BOB + "\n").returncode == 2
    store = AwsStore("eu-central-1", None, moto_endpoint)
    secret_id = password_hashes_id(stack)
    current, previous = store.read(secret_id, CURRENT), store.read(secret_id, PREVIOUS)
    assert current.version in second.stdout and previous.version in first.stdout, "Secrets Manager moved AWSPREVIOUS"
    hashes = json.loads(current.value.get_secret_value())
    assert set(hashes) == {"alice"} and bcrypt.checkpw(ALICE_NEW.encode(), hashes["alice"].encode())
    assert ALICE_NEW not in current.value.get_secret_value()
    described = store.client.describe_secret(SecretId=secret_id)
    assert described["Description"] == "mailbox users' bcrypt password hashes (mailsite)"


# ---- what the images carry ----------------------------------------------------------------------

def _file_site(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    site = load_site(settings)
    init_secrets(site, "test", ROOT)
    return settings, site


def test_only_the_primary_carries_hashes_and_only_of_users_in_the_stack(tmp_path):
    _, site = _file_site(tmp_path)
    none_yet = site_secrets(site, "test", ROOT)
    assert all(s.password_hashes == {} and s.password_hashes_version == "none" for s in none_yet.values()), \
        "no password yet: users receive mail, nobody logs in"
    store = host_store(site, ROOT)
    # carol was removed from the stack since her password was set: she can no longer log in.
    stored = store.create(password_hashes_id("test"), json.dumps({"alice": hash_password(ALICE), "carol": hash_password(BOB)}))
    secrets = site_secrets(site, "test", ROOT)
    assert set(secrets["mx1"].password_hashes) == {"alice"} and secrets["mx1"].password_hashes_version == stored.version
    assert bcrypt.checkpw(ALICE.encode(), secrets["mx1"].password_hashes["alice"].get_secret_value().encode())
    assert all(secrets[h].password_hashes == {} and secrets[h].password_hashes_version == "none" for h in ("mx2", "mx3"))
    assert "$2b$" not in repr(secrets)


@pytest.mark.parametrize("value, message", [
    ("alice: $2b$12$...", "malformed: not a JSON object of user name: bcrypt hash"),
    (json.dumps(["alice"]), "malformed: not a JSON object of user name: bcrypt hash"),
    (json.dumps({"alice": "correct horse battery staple"}), "malformed: the entry of alice is not a bcrypt ($2b$) hash"),
    (json.dumps({"alice": "{SHA512-CRYPT}$6$salt$hash"}), "malformed: the entry of alice is not a bcrypt ($2b$) hash"),
], ids=["not-json", "not-an-object", "a-password-not-a-hash", "another-scheme"])
def test_malformed_hashes_secret_is_one_line_naming_it_never_its_value(tmp_path, value, message):
    _, site = _file_site(tmp_path)
    host_store(site, ROOT).create(password_hashes_id("test"), value)
    with pytest.raises(SiteConfigError) as refused:
        site_secrets(site, "test", ROOT)
    (problem,) = refused.value.problems
    assert str(problem).startswith(f"secret = mailsite/test/password-hashes: {message}")
    assert "correct horse" not in str(problem) and "$6$" not in str(problem) and "$2b$12" not in str(problem)


def test_user_passwd_mends_malformed_entries_one_user_at_a_time(file_stack):
    keys = file_stack.parent / "keys"
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(keys)}})
    init_secrets(site, "pw", ROOT)
    host_store(site, ROOT).create(password_hashes_id("pw"), json.dumps({"alice": "not a hash", "bob": "nor this"}))
    assert passwd(file_stack, "alice", ALICE + "\n").returncode == 0, "bob's entry stops no one setting alice's"
    with pytest.raises(SiteConfigError, match="the entry of bob is not a bcrypt"):
        site_secrets(site, "pw", ROOT)
    assert passwd(file_stack, "bob", BOB + "\n").returncode == 0
    hashes, _ = password_hashes(host_store(site, ROOT), "pw")
    assert set(hashes) == {"alice", "bob"} and all(is_password_hash(h) for h in hashes.values())
    assert site_secrets(site, "pw", ROOT)["mx1"].password_hashes.keys() == {"alice", "bob"}


def test_a_secret_that_is_no_json_object_stops_user_passwd_unchanged(file_stack):
    keys = file_stack.parent / "keys"
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(keys)}})
    host_store(site, ROOT).create(password_hashes_id("pw"), "alice: $2b$12$...")
    before = _files(keys)
    refused = passwd(file_stack, "alice", ALICE + "\n")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: secret = mailsite/pw/password-hashes: malformed: not a JSON object")
    assert _files(keys) == before


def test_identity_follows_the_hashes_version_on_the_primary_only(example_site, tmp_path):
    from tests.sites import fake_secrets

    secrets = fake_secrets(example_site)
    base = {host: identity_of(_request(example_site, tmp_path, host, secrets=secrets), "1.6.6") for host in ("mx1", "mx2")}
    mx1 = secrets["mx1"]
    same_version = {**secrets, "mx1": replace(mx1, password_hashes={})}
    new_version = {**secrets, "mx1": replace(mx1, password_hashes_version="v2")}
    assert identity_of(_request(example_site, tmp_path, "mx1", secrets=same_version), "1.6.6") == base["mx1"], \
        "hashes count by version: the identity shows none"
    assert identity_of(_request(example_site, tmp_path, "mx1", secrets=new_version), "1.6.6") != base["mx1"]
    assert identity_of(_request(example_site, tmp_path, "mx2", secrets=new_version), "1.6.6") == base["mx2"]


def _identities(settings: dict) -> dict[str, str]:
    return {name: host["imageIdentity"] for name, host in evaluate(settings).outputs["hosts"].items()}


def test_a_new_password_changes_the_primary_image_only(tmp_path):
    settings, site = _file_site(tmp_path)
    stack_file = _stack_file(tmp_path, "test", settings["secrets"])
    before = _identities(settings)
    assert passwd(stack_file, "alice", ALICE + "\n").returncode == 0
    first = _identities(settings)
    assert {h for h in before if before[h] != first[h]} == {"mx1"}
    assert passwd(stack_file, "bob", BOB + "\n").returncode == 0
    second = _identities(settings)
    assert {h for h in first if first[h] != second[h]} == {"mx1"}
    assert _identities(settings) == second, "the same hashes, the same image: no rebake"


def test_the_hashes_reach_the_engine_only_as_a_secret_of_the_primary_bake(tmp_path):
    settings, _ = _file_site(tmp_path)
    assert passwd(_stack_file(tmp_path, "test", settings["secrets"]), "alice", ALICE + "\n").returncode == 0
    recorded = evaluate(settings)
    hashed = json.loads(next((tmp_path / "keys").rglob("password-hashes/versions/*")).read_text())["alice"]
    bakes = {r.inputs["host"]["name"]: r for r in recorded.of(DYNAMIC) if "queueKey" in r.inputs}
    sent = bakes["mx1"].inputs["passwordHashes"]
    assert sent.get(SECRET_SIGNATURE) == SECRET_MARK and sent["value"] == {"alice": hashed}
    assert all(bakes[h].inputs["passwordHashes"] in ({}, {SECRET_SIGNATURE: SECRET_MARK, "value": {}}) for h in ("mx2", "mx3"))
    for resource in recorded.resources:
        inputs = {k: v for k, v in resource.inputs.items() if k not in ("passwordHashes", "tree")}
        assert hashed not in json.dumps(inputs, default=str), resource.typ


def test_the_provider_process_bakes_the_primary_the_program_asked_for(tmp_path, null_bakes):  # noqa: F811
    """Through `python -m pulumi.dynamic`: the hashes arrive unwrapped from their secret, and the
    identity the provider computes from them is the one the program asked for."""
    settings, _ = _file_site(tmp_path)
    settings["images"] = {"cacheDir": str(tmp_path / "cache")}
    settings["libvirt"]["zoneDir"] = str(tmp_path / "zones")
    stack_file = _stack_file(tmp_path, "test", settings["secrets"])
    assert passwd(stack_file, "alice", ALICE + "\n").returncode == 0
    with provider_process(null_bakes) as provider:
        provider.configure({"mailsite:target": "libvirt"})
        first = run_program(settings, CloudMocks(), provider)
        assert passwd(stack_file, "alice", ALICE_NEW + "\n").returncode == 0
        preview = run_program(settings, CloudMocks(), provider, previous=first, preview=True)
        again = run_program(settings, CloudMocks(), provider, previous=first)
        log = provider.log()
    bakes = first.urns("-image-bake")
    assert len(bakes) == 3 and set(bakes) <= set(first.ops("create"))
    assert {urn.rsplit("-", 3)[-3] for urn in bakes if again.diffs[urn].replaces} == {"mx1"}
    hashes = [h for p in (tmp_path / "keys").rglob("password-hashes/versions/*") for h in json.loads(p.read_text()).values()]
    assert len(hashes) == 2
    (mx1,) = again.urns("-mx1-image-bake")
    assert again.plain(mx1, "inputs")["passwordHashes"]["alice"] in hashes, "state holds the hashes..."
    assert rpc.is_rpc_secret(rpc.deserialize_properties(again.state[mx1].inputs)["passwordHashes"]), "...as a secret"
    leaked = [h for h in hashes if any(h in text for text in (first.in_clear(), preview.in_clear(), again.in_clear(), log))]
    assert not leaked, "a hash in clear in state or the provider's log"
    # The DKIM private keys (the primary's, and each backup's for its own mail) travel the same way.
    # Their PEM's second half, past the modulus the published public key shares: the private part.
    from mailsite.secrets import site_dkim_keys
    bodies = [[line for line in selector.private_key.get_secret_value().splitlines() if "PRIVATE KEY" not in line]
              for keys in site_dkim_keys(load_site(settings), "test", ROOT).values() for selector in keys.selectors]
    private = [line for body in bodies for line in body[len(body) // 2:-1]]
    assert private, "the file backend holds the site's DKIM keys"
    where = {name for name, text in (("state", first.in_clear()), ("state after a change", again.in_clear()), ("the provider's log", log))
             if any(line in text for line in private)}
    assert not where, f"a DKIM private key in clear in {', '.join(sorted(where))}"  # named, never shown


def test_a_review_render_shows_each_hash_as_redacted_with_its_version(tmp_path):
    settings, _ = _file_site(tmp_path)
    stack_file = _stack_file(tmp_path, "test", settings["secrets"])
    assert passwd(stack_file, "alice", ALICE + "\n").returncode == 0
    _, _, secrets = render_stack(stack_file, redacted=True)
    assert {u: h.get_secret_value() for u, h in secrets["mx1"].password_hashes.items()} == {"alice": REDACTED}
    assert secrets["mx1"].password_hashes_version != "none"
