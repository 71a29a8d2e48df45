"""DKIM keys: made by secrets init in the backend, one signing key per domain carried by the
primary (a backup: the key of the site domain its MX name lies in), as files only the signer's
user reads, never in a review render or a non-secret file; their TXT records checked by a real
DKIM verifier (dkimpy), not by comparing strings."""

from __future__ import annotations

import json
import os
import re

import dkim
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from mailsite.config import load_site
from mailsite.configtest import run_shaped_like_host
from mailsite.daemons.dkim import CONFIG, RSPAMD_USER
from mailsite.daemons.dkimsign import FILTER as DKIMSIGN_FILTER, USER as DKIMSIGN_USER
from mailsite.dkim import SIGNING, dkim_records, key_path, own_mail_domain
from mailsite.local import REDACTED, render_stack
from mailsite.problems import SiteConfigError
from mailsite.render import render_host
from mailsite.secrets import dkim_keys_id, host_store, init_secrets, site_dkim_keys, site_secrets
from tests.sites import ROOT, addresses, example_settings, fake_secrets, site_of

MESSAGE = b"From: alice@example.org\r\nTo: someone@outside.test\r\nSubject: hello\r\n\r\nSigned by the site.\r\n"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The example site with a file backend that secrets init filled."""
    directory = tmp_path_factory.mktemp("dkim")
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(directory / "keys")}
    site = load_site(settings)
    created = init_secrets(site, "test", ROOT)
    return site, settings, directory, created


def _dnsfunc(records):
    texts = {record.name: record.value for record in records if record.type == "TXT"}
    return lambda name, timeout=5: texts.get(name.decode().rstrip("."), "").encode()


def test_secrets_init_makes_one_signing_rsa_2048_key_per_domain_and_never_replaces_one(stored):
    site, _, _, created = stored
    assert [i for i in created if "/dkim/" in i] == [dkim_keys_id("test", d) for d in ("example.org", "example.net")]
    assert [i for i in init_secrets(site, "test", ROOT) if "/dkim/" in i] == []
    for keys in site_dkim_keys(site, "test", ROOT).values():
        (selector,) = keys.selectors
        assert selector.state == SIGNING and selector.name.startswith("mailsite2")
        key = serialization.load_pem_private_key(selector.private_key.get_secret_value().encode(), None)
        assert key.key_size == 2048


def test_published_record_verifies_mail_the_primary_key_signs_and_no_other(stored):
    site, _, _, _ = stored
    secrets = site_secrets(site, "test", ROOT)
    records = dkim_records(site_dkim_keys(site, "test", ROOT).values())
    key = next(k for k in secrets["mx1"].dkim_keys if k.domain == "example.org")
    assert any(r.name == f"{key.selector}._domainkey.example.org" and r.value.startswith("v=DKIM1; k=rsa; p=") for r in records)
    signed = dkim.sign(MESSAGE, key.selector.encode(), b"example.org", key.private_key.get_secret_value().encode()) + MESSAGE
    assert dkim.verify(signed, dnsfunc=_dnsfunc(records))
    other = next(k for k in secrets["mx1"].dkim_keys if k.domain == "example.net")
    forged = dkim.sign(MESSAGE, key.selector.encode(), b"example.org", other.private_key.get_secret_value().encode()) + MESSAGE
    assert not dkim.verify(forged, dnsfunc=_dnsfunc(records)), "another key under the same selector fails"


def test_each_signing_host_carries_its_keys_as_files_only_its_signer_reads(stored):
    """The primary every domain's key (rspamd's); a backup only the key of the site domain its MX
    name lies in (filter-dkimsign's), for its own mail."""
    site, _, _, _ = stored
    secrets = site_secrets(site, "test", ROOT)
    assert [k.domain for k in secrets["mx2"].dkim_keys] == ["example.org"] == [k.domain for k in secrets["mx3"].dkim_keys]
    every = [k.private_key.get_secret_value() for k in secrets[site.primary.name].dkim_keys]
    for host in site.hosts:
        tree = render_host(site, host, addresses(site), secrets[host.name])
        keys = secrets[host.name].dkim_keys
        holders = {path for path, rendered in tree.items() if any(pem.strip() in rendered.text for pem in every)}
        assert holders == {key_path(k.domain, k.selector) for k in keys}
        owner = RSPAMD_USER if host.is_primary else DKIMSIGN_USER
        for path in holders:
            assert tree[path].secret and tree[path].mode == 0o400 and tree[path].owner == owner
        if host.is_primary:
            config = tree[CONFIG].text
            for k in keys:
                assert f'selector = "{k.selector}";' in config and f'path = "/{key_path(k.domain, k.selector)}";' in config
        else:
            assert CONFIG not in tree
            [key] = keys
            assert (f'proc-exec "{DKIMSIGN_FILTER} -c relaxed/relaxed -d {key.domain} -s {key.selector} '
                    f'-k /{key_path(key.domain, key.selector)}" user {DKIMSIGN_USER} group {DKIMSIGN_USER}') in tree["etc/mail/smtpd.conf"].text
        versions = tree["etc/mailsite/key-versions"].text.splitlines()
        assert {f"dkim-{k.domain} {k.selector}/{k.fingerprint}" for k in keys} <= set(versions)


def test_only_users_and_loopback_are_signed_never_mail_a_backup_relays(stored):
    """rspamd counts private networks as local (its local_addrs): a libvirt site's backups sit
    there, and a forger's mail through them must not leave signed."""
    site, _, _, _ = stored
    config = render_host(site, site.primary, addresses(site), site_secrets(site, "test", ROOT)["mx1"])[CONFIG].text
    lines = {line.split(" = ")[0]: line.split(" = ")[1] for line in config.splitlines() if " = " in line and not line.startswith(" ")}
    assert lines["sign_local"] == "false;" and lines["sign_inbound"] == "false;" and lines["sign_authenticated"] == "true;"
    assert lines["sign_networks"] == '["127.0.0.0/8", "::1"];' and lines["try_fallback"] == "false;"


def test_review_render_shows_no_private_key(stored):
    site, settings, directory, _ = stored
    config = directory / "Pulumi.test.yaml"
    document = yaml.safe_load((ROOT / "Pulumi.example.yaml").read_text())
    document["config"]["mailsite:secrets"] = settings["secrets"]
    config.write_text(yaml.safe_dump(document))
    _, trees, _ = render_stack(config, redacted=True, secrets_base=ROOT)
    pems = [k.private_key.get_secret_value() for k in site_secrets(site, "test", ROOT)["mx1"].dkim_keys]
    assert not any(pem.splitlines()[1] in rendered.text for tree in trees.values() for rendered in tree.values() for pem in pems)
    assert all(trees["mx1"][path].text == REDACTED + "\n" for path in trees["mx1"] if path.startswith("etc/mail/dkim/"))


def test_a_damaged_dkim_secret_is_one_line_that_never_shows_it(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    site = load_site(settings)
    init_secrets(site, "test", ROOT)
    store = host_store(site, ROOT)
    secret_id = dkim_keys_id("test", "example.net")
    value = json.loads(store.read(secret_id).value.get_secret_value())
    value["selectors"][0]["privateKey"] = value["selectors"][0]["privateKey"][:200]
    store.put_current(secret_id, json.dumps(value))
    with pytest.raises(SiteConfigError) as raised:
        site_secrets(site, "test", ROOT)
    (problem,) = raised.value.problems
    assert str(problem).startswith(f"secret = {secret_id}: malformed DKIM keys") and "not an unencrypted PEM key" in str(problem)
    assert value["selectors"][0]["privateKey"][40:80] not in str(problem)


def test_a_site_without_dkim_keys_is_told_to_run_secrets_init(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    site = load_site(settings)
    init_secrets(site, "test", ROOT)
    store = host_store(site, ROOT)
    store.unlabel(dkim_keys_id("test", "example.org"), "AWSCURRENT")
    with pytest.raises(SiteConfigError) as raised:
        site_secrets(site, "test", ROOT)
    assert [str(p) for p in raised.value.problems] == [
        f"secret = {dkim_keys_id('test', 'example.org')}: not in the secrets backend; create it with: "
        "python -m mailsite secrets init --config <stack file>"]


@pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)")
def test_own_mail_is_signed_for_the_nearest_site_domain_its_from_lies_in(tmp_path):
    """rspamd's choice of d= (the rendered use_domain_custom, run by the daemon root's own rspamd
    Lua) is the model's (own_mail_domain, which gives a backup its key): the longest site domain
    the From: domain is or lies in, letter case aside, and none for any other domain."""
    settings = example_settings()
    settings["domains"] = ["example.org", "example.net", "mail.example.org"]
    settings["hosts"][0]["fqdn"] = "mx1.mail.example.org"
    site = site_of(settings)
    config = render_host(site, site.primary, addresses(site), fake_secrets(site)[site.primary.name])[CONFIG].text
    chooser = re.search(r"use_domain_custom = <<EOD\n(.*?)\nEOD\n", config, re.S)[1]
    froms = ["root@MX1.Mail.Example.org", "MAILER-DAEMON@mx2.example.org", "alice@example.org", "bob@xexample.org",
             "ceo@outside.test"]
    script = ("local choose = (loadstring or load)([==[" + chooser + "]==])()\n"
              + "".join(f"print(choose({{ get_from = function() return {{ {{ domain = '{address.split('@')[1]}' }} }} end }}) or 'none')\n"
                        for address in froms))
    (tmp_path / "etc").mkdir()
    result = run_shaped_like_host(tmp_path, (), ["rspamadm", "lua", "/choose.lua"], written={"choose.lua": script})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mail.example.org", "example.org", "example.org", "none", "none"]
    assert own_mail_domain(site, site.primary) == "mail.example.org"
    assert own_mail_domain(site, site.host("mx2")) == "example.org"
