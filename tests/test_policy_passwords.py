"""The policy pack on a site whose users have passwords: the primary's bake carries their bcrypt
hashes, which must reach it as a declared secret and appear nowhere else in clear. Through the
pack's own analyzer process, with a preview of the program reading the hashes from a file backend."""

from __future__ import annotations

import copy
import json

import pytest

from mailsite.config import load_site
from mailsite.passwords import hash_password
from mailsite.secrets import host_store, init_secrets, password_hashes_id
from tests.sites import ROOT, example_settings
from tests.test_analyzer import DYNAMIC, _find, preview
from tests.test_policy import pack, violations  # noqa: F401  (pack: a fixture)
from tests.test_program import vultr_settings

import mailsite_policies  # noqa: E402  (on sys.path through tests.test_analyzer)


@pytest.fixture(scope="module")
def with_passwords(tmp_path_factory):
    """The example site on Vultr, alice's password set; every value known (nothing else changes)."""
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path_factory.mktemp("keys"))}
    site = load_site(settings)
    init_secrets(site, "pr", ROOT)
    # Hashed here, not kept: the test needs the hash, never the password.
    hashed = hash_password("a passphrase nobody has, " + "x y z")
    host_store(site, ROOT).create(password_hashes_id("pr"), json.dumps({"alice": hashed}))
    return preview(vultr_settings(settings), image_change=False), hashed


def _primary_bake(resources):
    # Other dynamic resources name their host by a plain string (the zone files, say): a bake's is a record.
    return _find(resources, DYNAMIC, lambda r: "queueKey" in r.inputs and isinstance(r.inputs.get("host"), dict)
                 and r.inputs["host"].get("name") == "mx1")


def _plain(value):
    return value["value"] if isinstance(value, dict) and "value" in value else value


def test_the_primary_bake_carries_the_hashes_as_a_declared_secret_and_passes(pack, with_passwords):  # noqa: F811
    resources, hashed = with_passwords
    bake = _primary_bake(resources)
    assert _plain(bake.inputs["passwordHashes"]) == {"alice": hashed}
    assert "passwordHashes" in bake.secret_outputs
    assert violations(pack, resources) == {}


def test_hashes_not_declared_secret_are_caught(pack, with_passwords):  # noqa: F811
    """A program change that drops passwordHashes from additional_secret_outputs (the only mark of
    a secret the analyzer sees) would put every user's hash in clear in state and previews."""
    broken = copy.deepcopy(with_passwords[0])
    bake = _primary_bake(broken)
    bake.secret_outputs = [name for name in bake.secret_outputs if name != "passwordHashes"]
    assert violations(pack, broken) == {"queue-keys-secret": [f"{bake.name}: passwordHashes carries a key but is not a secret"]}


def test_a_users_hash_in_clear_on_another_resource_is_caught(pack, with_passwords):  # noqa: F811
    broken = copy.deepcopy(with_passwords[0])
    hashed = with_passwords[1]
    instance = _find(broken, mailsite_policies.INSTANCE)
    instance.set("userData", f"#!/bin/sh\necho 'alice:{hashed}' > /etc/mail/credentials\n")
    found = violations(pack, broken)
    assert found["keys-not-in-clear-elsewhere"] == [f"{instance.name}: property userData holds a key that is a secret elsewhere"]


def test_any_bcrypt_hash_in_clear_is_caught(pack, with_passwords):  # noqa: F811
    """One that is no user's (yet): a hash in a tag is a hash anyone with the state can attack."""
    broken = copy.deepcopy(with_passwords[0])
    instance = _find(broken, mailsite_policies.INSTANCE)
    instance.set("tags", [*instance.inputs["tags"], "$2b$12$" + "A" * 53])
    assert violations(pack, broken) == {"queue-keys-secret": [f"{instance.name}: property tags.2 holds a password hash in clear"]}
