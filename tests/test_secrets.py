"""Secrets backends: the file backend and AWS Secrets Manager (boto3 against a real moto_server)
behave alike: init, read, versions, rotation stages, rollback, and one-line errors that never
show a key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest
import yaml

from mailsite.config import load_site
from mailsite.keys import new_key
from mailsite.problems import SiteConfigError
from mailsite.secrets import (
    CURRENT, PENDING, PREVIOUS, dkim_keys_id, host_label, host_store, init_secrets, queue_key_id, site_secrets, spamd_sync_key_id,
)
from mailsite.secrets.aws import AwsStore
from tests.conftest import moto_server
from tests.sites import ROOT, example_settings


@pytest.fixture(params=["file", "aws-secretsmanager"])
def backend(request, tmp_path, moto_endpoint):
    """Stack settings naming one backend, and the stack name (unique per test: moto keeps state)."""
    settings = example_settings()
    if request.param == "file":
        settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    else:
        settings["secrets"] = {"backend": "aws-secretsmanager", "region": "eu-central-1", "endpointUrl": moto_endpoint}
    return load_site(settings), f"t{os.urandom(4).hex()}"


def test_init_creates_every_key_once_and_reads_them_back(backend):
    site, stack = backend
    created = init_secrets(site, stack, ROOT)
    assert created == [spamd_sync_key_id(stack)] + [queue_key_id(stack, h) for h in ("mx1", "mx2", "mx3")] + [
        dkim_keys_id(stack, domain) for domain in ("example.org", "example.net")]
    assert init_secrets(site, stack, ROOT) == [], "init never replaces a key"
    secrets = site_secrets(site, stack, ROOT)
    keys = {h: s.queue_key.get_secret_value() for h, s in secrets.items()}
    assert len(set(keys.values())) == 3 and all(len(k) == 32 for k in keys.values())
    assert len({s.spamd_sync_key.get_secret_value() for s in secrets.values()}) == 1, "one sync key per site"
    assert len({s.queue_key_version for s in secrets.values()}) == 3
    assert all(k not in repr(secrets) for k in keys.values())


def test_rotation_stages_and_rollback(backend):
    site, stack = backend
    init_secrets(site, stack, ROOT)
    store = host_store(site, ROOT)
    key_id = queue_key_id(stack, "mx2")
    first = store.read(key_id)
    pending = store.put_pending(key_id, new_key())
    assert store.read(key_id, CURRENT).version == first.version
    assert store.read(key_id, PENDING).version == pending.version
    assert site_secrets(site, stack, ROOT)["mx2"].queue_key_version == pending.version, "a new image carries the pending key"

    store.discard_pending(key_id)
    assert store.read(key_id, PENDING) is None
    assert site_secrets(site, stack, ROOT)["mx2"].queue_key_version == first.version

    again = store.put_pending(key_id, new_key())
    store.promote(key_id)
    assert store.read(key_id, CURRENT).version == again.version
    assert store.read(key_id, PREVIOUS).version == first.version
    assert store.read(key_id, PENDING) is None


def test_missing_secret_is_one_line(backend):
    site, stack = backend
    with pytest.raises(SiteConfigError) as raised:
        site_secrets(site, stack, ROOT)
    (problem,) = raised.value.problems
    assert str(problem) == f"secret = {spamd_sync_key_id(stack)}: not in the secrets backend; create it with: python -m mailsite secrets init --config <stack file>"


def test_malformed_key_is_named_never_shown(backend):
    site, stack = backend
    init_secrets(site, stack, ROOT)
    store = host_store(site, ROOT)
    bad = "Z" * 31
    store.put_pending(queue_key_id(stack, "mx3"), bad)
    with pytest.raises(SiteConfigError) as raised:
        site_secrets(site, stack, ROOT)
    line = str(raised.value.problems[0])
    assert line.startswith(f"secret = {queue_key_id(stack, 'mx3')}: malformed key: it is 31 characters")
    assert bad not in line


def test_file_backend_modes(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    init_secrets(load_site(settings), "modes", ROOT)
    root = tmp_path / "keys"
    assert root.stat().st_mode & 0o777 == 0o700
    versions = list(root.rglob("versions/*"))
    # The sync key, three queue keys and two domains' DKIM keys: each private to the user.
    assert len(versions) == 6 and all(v.stat().st_mode & 0o777 == 0o600 for v in versions)


def test_denied_access_is_one_line_naming_the_permission(moto_endpoint):
    # A second moto_server that enforces IAM after the first three calls, which make a user who
    # may describe secrets but not read them.
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="3") as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="describe-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "secretsmanager:DescribeSecret", "Resource": "*"}],
        }))
        access = iam.create_access_key(UserName="reader")["AccessKey"]
        store = AwsStore("eu-central-1", endpoint_url=endpoint)
        store.client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="eu-central-1",
                                    aws_access_key_id=access["AccessKeyId"], aws_secret_access_key=access["SecretAccessKey"])
        with pytest.raises(SiteConfigError) as raised:
            store.read("mailsite/denied/mx1/queue-key")
    (problem,) = raised.value.problems
    assert str(problem).startswith("secret = mailsite/denied/mx1/queue-key: access denied (")
    assert "grant secretsmanager:GetSecretValue" in str(problem)


def test_cli_secrets_init_with_aws_backend(tmp_path, moto_endpoint):
    """The example stack file with its backend switched to Secrets Manager: the keys are made there,
    and no file store appears beside the stack file."""
    document = yaml.safe_load((ROOT / "Pulumi.example.yaml").read_text())
    secrets = document["config"]["mailsite:secrets"]
    assert secrets["backend"] == "file", "the example's backend changed: this test switches it to aws-secretsmanager"
    secrets.update(backend="aws-secretsmanager", region="eu-central-1", endpointUrl=moto_endpoint, profile=None)
    stack_name = f"clitest{os.urandom(4).hex()}"  # moto_server keeps its secrets for the whole session
    stack = tmp_path / f"Pulumi.{stack_name}.yaml"
    stack.write_text(yaml.safe_dump(document))
    run = lambda: subprocess.run([sys.executable, "-m", "mailsite", "secrets", "init", "--config", str(stack)],
                                 capture_output=True, text=True, cwd=ROOT)
    first = run()
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"created mailsite/{stack_name}/spamd-sync-key"
    assert run().stdout == "every key already exists; nothing created\n"
    store = AwsStore("eu-central-1", None, moto_endpoint)
    assert store.read(spamd_sync_key_id(stack_name)) is not None, "made in Secrets Manager"
    assert all(store.read(queue_key_id(stack_name, host)) is not None for host in ("mx1", "mx2", "mx3"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [stack.name], "no file store beside the stack file"


def test_site_key_rollout_labels_one_host_at_a_time(backend):
    site, stack = backend
    init_secrets(site, stack, ROOT)
    store = host_store(site, ROOT)
    sync_id = spamd_sync_key_id(stack)
    current = store.read(sync_id).version
    pending = store.put_pending(sync_id, new_key()).version
    assert {h: s.spamd_sync_key_version for h, s in site_secrets(site, stack, ROOT).items()} == {"mx1": current, "mx2": current, "mx3": current}
    store.label(sync_id, host_label("mx3"), pending)
    assert {h: s.spamd_sync_key_version for h, s in site_secrets(site, stack, ROOT).items()} == {"mx1": current, "mx2": current, "mx3": pending}
    store.unlabel(sync_id, host_label("mx3"))
    assert site_secrets(site, stack, ROOT)["mx3"].spamd_sync_key_version == current
