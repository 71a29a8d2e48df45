"""`user passwd` and the hashes secret at their edges: a script's stdin as it really arrives
(CRLF, bytes that are not UTF-8, whatever the locale), a site with more users than one secret
holds, a store edited by hand, a user who left the stack, two admins at once."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
import yaml

from mailsite.config import load_site
from mailsite.problems import SiteConfigError
from mailsite.secrets import host_store, init_secrets, password_hashes, password_hashes_id, site_secrets
from mailsite.secrets.aws import AwsStore
from mailsite.secrets.store import MAX_SECRET_BYTES
from tests.sites import EXAMPLE, ROOT, example_settings
from tests.test_user_passwd import ALICE, BOB, _files, passwd

_BCRYPT_ALPHABET = "./" + string.ascii_letters + string.digits


def _a_hash() -> str:
    """A hash of the shape bcrypt writes, made without a bcrypt round (a thousand would take minutes)."""
    return "$2b$12$" + "".join(random.choice(_BCRYPT_ALPHABET) for _ in range(53))


def _stack(directory: Path, stack: str, secrets: dict, users: list[str] | None = None) -> tuple[Path, dict]:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["config"]["mailsite:secrets"] = secrets
    settings = example_settings()
    settings["secrets"] = secrets
    if users is not None:
        document["config"]["mailsite:recipients"]["users"] = users
        settings["recipients"]["users"] = users
    path = directory / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, settings


@pytest.fixture
def file_stack(tmp_path) -> Path:
    return _stack(tmp_path, "pw", {"backend": "file", "path": str(tmp_path / "keys")})[0]


def _stored_hash(stack_file: Path, user: str) -> str:
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(stack_file.parent / "keys")}})
    return password_hashes(host_store(site, ROOT), "pw")[0][user]


def _passwd_bytes(stack_file: Path, user: str, stdin: bytes, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailsite", "user", "passwd", user, "--config", str(stack_file)],
                          input=stdin, capture_output=True, cwd=ROOT, timeout=60, env={**os.environ, **env})


# ---- a script's stdin -----------------------------------------------------------------------------

def test_a_crlf_line_from_a_windows_script_is_the_password_without_its_line_end(file_stack):
    done = passwd(file_stack, "alice", ALICE + "\r\n")
    assert done.returncode == 0, done.stderr
    assert bcrypt.checkpw(ALICE.encode(), _stored_hash(file_stack, "alice").encode())


@pytest.mark.parametrize("env", [{"LC_ALL": "C.UTF-8"}, {"LC_ALL": "C"}, {"PYTHONIOENCODING": "latin-1"}],
                         ids=["utf-8-locale", "c-locale", "latin-1-stdin"])
def test_stdin_that_is_not_utf8_is_one_line_exit_2_whatever_the_locale(file_stack, env):
    """A mail client sends the password's UTF-8: a Latin-1 password would be hashed as another one
    (or, in the C locale, end in a traceback)."""
    refused = _passwd_bytes(file_stack, "alice", "caf\xe9 au lait, noir\n".encode("latin-1"), **env)
    assert (refused.returncode, refused.stdout) == (2, b"")
    assert refused.stderr == (b"error: the password of alice = (not shown): is not UTF-8 text, as a mail client would "
                              b"send it; type it in a UTF-8 terminal or write it as UTF-8; nothing was changed\n")
    assert _files(file_stack.parent / "keys") == {}


def test_a_utf8_password_is_hashed_as_its_utf8_whatever_the_locale(file_stack):
    password = "café au lait, noir"
    done = _passwd_bytes(file_stack, "alice", password.encode() + b"\n", LC_ALL="C")
    assert done.returncode == 0, done.stderr
    assert bcrypt.checkpw(password.encode(), _stored_hash(file_stack, "alice").encode())


def test_an_endless_line_is_refused_as_too_long_without_a_traceback(file_stack):
    # Cut inside a two-byte character where reading stops.
    refused = _passwd_bytes(file_stack, "alice", b"a" + "é".encode() * 100_000)
    assert refused.returncode == 2 and refused.stderr.count(b"\n") == 1
    assert refused.stderr.startswith(b"error: the password of alice = (not shown): is longer than 72 bytes")


# ---- more users than one secret holds -------------------------------------------------------------

def _many_users(count: int) -> list[str]:
    # alice and bob stay: the example's aliases name them.
    return ["alice", "bob"] + [f"user{n:04d}" for n in range(1, count - 1)]


def _just_under_the_limit(users: list[str]) -> dict[str, str]:
    """Hashes for as many of these users as one secret holds, stored as user passwd stores them."""
    hashes: dict[str, str] = {}
    for user in users:
        if len(json.dumps({**hashes, user: _a_hash()}, separators=(",", ":")).encode()) > MAX_SECRET_BYTES:
            return hashes
        hashes[user] = _a_hash()
    raise AssertionError("every user fits: the test needs more")


@pytest.mark.parametrize("backend", ["file", "aws-secretsmanager"])
def test_a_thousand_user_site_is_told_of_the_secret_limit_before_the_password_is_asked(tmp_path, backend, request):
    """Secrets Manager holds 65536 bytes a secret (moto does not enforce it; AWS does). Before: the
    file backend wrote the secret and then read it cut short, as a 'malformed' secret to delete."""
    stack = f"big{os.urandom(4).hex()}"
    if backend == "file":
        secrets = {"backend": "file", "path": str(tmp_path / "keys")}
    else:
        secrets = {"backend": "aws-secretsmanager", "region": "eu-central-1",
                   "endpointUrl": request.getfixturevalue("moto_endpoint"), "profile": None}
    users = _many_users(1000)
    stack_file, settings = _stack(tmp_path, stack, secrets, users)
    site = load_site(settings)
    init_secrets(site, stack, ROOT)
    store = host_store(site, ROOT)
    hashes = _just_under_the_limit(users)
    store.create(password_hashes_id(stack), json.dumps(hashes, separators=(",", ":")))
    before = store.read(password_hashes_id(stack))
    newcomer = users[len(hashes)]

    refused = passwd(stack_file, newcomer, ALICE + "\n")
    assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"error: secret = mailsite/{stack}/password-hashes: {len(hashes) + 1} users' hashes "
                                     f"would take ")
    assert f"past the {MAX_SECRET_BYTES} bytes a secret may hold" in refused.stderr
    assert f"room for about {len(hashes)} users with a password; nothing was changed; give fewer users a password" in refused.stderr
    assert store.read(password_hashes_id(stack)) == before, "nothing written"

    # A user who has a password keeps room for a new one; the site still renders.
    changed = passwd(stack_file, "bob", BOB + "\n")
    assert changed.returncode == 0, changed.stderr
    stored, _ = password_hashes(store, stack)
    assert set(stored) == set(hashes) and bcrypt.checkpw(BOB.encode(), stored["bob"].encode())
    assert len(site_secrets(site, stack, ROOT)["mx1"].password_hashes) == len(hashes)


def test_the_file_backend_refuses_a_version_past_the_limit_instead_of_cutting_it_short(tmp_path):
    """A store edited by hand (or a version from before the limit): named for what it is, not
    called malformed, whose advice is to delete every password."""
    users = _many_users(1000)
    _, settings = _stack(tmp_path, "pw", {"backend": "file", "path": str(tmp_path / "keys")}, users)
    site = load_site(settings)
    init_secrets(site, "pw", ROOT)
    store = host_store(site, ROOT)
    created = store.create(password_hashes_id("pw"), json.dumps({"alice": _a_hash()}))
    version_file = tmp_path / "keys" / password_hashes_id("pw") / "versions" / created.version
    version_file.write_text(json.dumps({user: _a_hash() for user in users}) + "\n")
    with pytest.raises(SiteConfigError) as refused:
        site_secrets(site, "pw", ROOT)
    assert str(refused.value) == (f"secret = mailsite/pw/password-hashes: version {created.version} is larger than the "
                                  f"{MAX_SECRET_BYTES} bytes a secret may hold (Secrets Manager's limit, kept by the file "
                                  "backend); make its previous version current again")
    with pytest.raises(SiteConfigError, match=f"a value of 7[0-9]{{4}} bytes is past the {MAX_SECRET_BYTES} bytes"):
        store.put_current(password_hashes_id("pw"), version_file.read_text())


def test_secrets_manager_is_never_sent_a_value_past_its_limit(moto_endpoint):
    store = AwsStore("eu-central-1", None, moto_endpoint)
    secret_id = f"mailsite/limit{os.urandom(4).hex()}/password-hashes"
    with pytest.raises(SiteConfigError, match=f"a value of {MAX_SECRET_BYTES + 1} bytes is past the"):
        store.create(secret_id, "x" * (MAX_SECRET_BYTES + 1))
    assert store.read(secret_id) is None


# ---- a user who left the stack ------------------------------------------------------------------

def test_a_damaged_entry_of_a_user_who_left_the_stack_stops_no_render(tmp_path, file_stack):
    """carol left the stack: user passwd refuses her, so a check of her entry would leave the site
    unrenderable until someone edited the backend by hand. Her entry is not carried, so not checked."""
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(tmp_path / "keys")}})
    init_secrets(site, "pw", ROOT)
    store = host_store(site, ROOT)
    alice = _a_hash()
    store.create(password_hashes_id("pw"), json.dumps({"alice": alice, "carol": "carol's old password"}))
    assert passwd(file_stack, "carol", BOB + "\n").returncode == 2, "carol is no user of the stack"
    carried = site_secrets(site, "pw", ROOT)["mx1"].password_hashes
    assert {user: hashed.get_secret_value() for user, hashed in carried.items()} == {"alice": alice}
    # A damaged entry of a user in the stack is still named.
    store.put_current(password_hashes_id("pw"), json.dumps({"alice": "not a hash", "carol": alice}))
    with pytest.raises(SiteConfigError, match="the entry of alice is not a bcrypt"):
        site_secrets(site, "pw", ROOT)


# ---- two admins at once ---------------------------------------------------------------------------

def test_two_user_passwd_at_once_never_leave_a_damaged_secret(file_stack):
    """The documented race: the later write wins, and one change may be lost (the command says to
    run it again). The secret is always one whole JSON object of good hashes."""
    site = load_site({**example_settings(), "secrets": {"backend": "file", "path": str(file_stack.parent / "keys")}})
    store = host_store(site, ROOT)
    assert passwd(file_stack, "alice", ALICE + "\n").returncode == 0
    for _ in range(3):
        both = [subprocess.Popen([sys.executable, "-m", "mailsite", "user", "passwd", user, "--config", str(file_stack)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
                for user in ("alice", "bob")]
        for process, password in zip(both, (ALICE, BOB)):
            process.stdin.write(password.encode() + b"\n")
            process.stdin.close()
        assert [process.wait(timeout=60) for process in both] == [0, 0]
        hashes, _ = password_hashes(store, "pw")
        assert set(hashes) <= {"alice", "bob"} and "alice" in hashes
