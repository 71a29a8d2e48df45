"""The policy pack on a site with DKIM keys: the primary's bake carries each domain's private key,
a backup's the key of the site domain its MX name lies in (it signs its own mail), which must reach
each as a declared secret and appear nowhere else in clear, whole or in part.
Through the pack's own analyzer process, with a preview of the program reading the keys from a
file backend that secrets init filled."""

from __future__ import annotations

import copy

import pytest

from mailsite.config import load_site
from mailsite.secrets import init_secrets
from tests.sites import ROOT, example_settings
from tests.test_analyzer import DYNAMIC, _find, preview
from tests.test_policy import pack, violations  # noqa: F401  (pack: a fixture)
from tests.test_program import vultr_settings

import mailsite_policies  # noqa: E402  (on sys.path through tests.test_analyzer)


@pytest.fixture(scope="module")
def with_dkim(tmp_path_factory):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path_factory.mktemp("keys"))}
    init_secrets(load_site(settings), "pr", ROOT)
    return preview(vultr_settings(settings), image_change=False)


def _bake(resources, host):
    return _find(resources, DYNAMIC, lambda r: r.inputs.get("host", {}).get("name") == host and "queueKey" in r.inputs)


def _keys(bake):
    value = bake.inputs["dkimKeys"]
    return value["value"] if isinstance(value, dict) and "value" in value else value


def test_each_signing_bake_carries_its_dkim_keys_as_a_declared_secret_and_passes(pack, with_dkim):  # noqa: F811
    # The primary every domain's; a backup (mx2.example.org, mx3.example.org) example.org's alone.
    for host, domains in (("mx1", ["example.net", "example.org"]), ("mx2", ["example.org"]), ("mx3", ["example.org"])):
        bake = _bake(with_dkim, host)
        assert sorted(key["domain"] for key in _keys(bake)) == domains
        assert all(key["privateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----") for key in _keys(bake))
        assert "dkimKeys" in bake.secret_outputs
    assert violations(pack, with_dkim) == {}


@pytest.mark.parametrize("host", ["mx1", "mx2"])
def test_dkim_keys_not_declared_secret_are_caught_on_the_primary_and_a_backup(pack, with_dkim, host):  # noqa: F811
    broken = copy.deepcopy(with_dkim)
    bake = _bake(broken, host)
    bake.secret_outputs = [name for name in bake.secret_outputs if name != "dkimKeys"]
    found = violations(pack, broken)
    assert found["queue-keys-secret"] == [f"{bake.name}: dkimKeys carries a key but is not a secret"]
    # example.org's key is a declared secret in the other signing hosts' bakes: in clear here, it is out.
    assert found["keys-not-in-clear-elsewhere"] == [f"{bake.name}: property dkimKeys.0.privateKey holds a key that is a secret elsewhere"]


def test_any_private_key_in_clear_is_caught(pack, with_dkim):  # noqa: F811
    broken = copy.deepcopy(with_dkim)
    instance = _find(broken, mailsite_policies.INSTANCE)
    instance.set("userData", "#!/bin/sh\ncat > /etc/mail/dkim/x.key <<EOF\n-----BEGIN PRIVATE KEY-----\nMIIE\nEOF\n")
    assert violations(pack, broken) == {"queue-keys-secret": [f"{instance.name}: property userData holds a private key in clear"]}


def test_a_dkim_keys_body_in_clear_elsewhere_is_caught(pack, with_dkim):  # noqa: F811
    """Copied without its PEM lines, a key is as much out in the open."""
    broken = copy.deepcopy(with_dkim)
    body = _keys(_bake(broken, "mx1"))[0]["privateKey"].splitlines()[1]
    instance = _find(broken, mailsite_policies.INSTANCE)
    instance.set("tags", [*instance.inputs["tags"], body])
    assert violations(pack, broken)["keys-not-in-clear-elsewhere"] == [
        f"{instance.name}: property tags.2 holds a key that is a secret elsewhere"]
