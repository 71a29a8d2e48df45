"""Accounts in the model (issue 15.1): each user a mailbox, written as a plain name as before or as
a section with a quota; a catch-all per site domain onto a user. Bad values are one line each,
naming the setting, the value and the fix; a password has no place in the stack file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings as hypothesis_settings, strategies as st

from mailsite.config import load_site, read_stack_settings
from mailsite.model import MAX_QUOTA, size_bytes
from mailsite.problems import SiteConfigError
from mailsite.render import render_host
from tests.sites import EXAMPLE, ROOT, addresses, example_settings, fake_secrets, refusal_lines, site_of



def _with_users(*users) -> dict:
    settings = example_settings()
    settings["recipients"]["users"] = list(users)
    return settings


def _trees(site) -> dict:
    secrets = fake_secrets(site)
    return {h.name: {path: f.text for path, f in render_host(site, h, addresses(site), secrets[h.name]).items()} for h in site.hosts}


def test_users_written_as_plain_names_still_load_as_mailboxes_without_quota(tmp_path):
    """A stack file of before accounts (users: [alice, bob]) loads as it did: the same names, no
    quotas, and every host renders exactly as from the same users written as sections."""
    stack = tmp_path / "Pulumi.plain.yaml"
    stack.write_text(EXAMPLE.read_text().replace("      - name: bob\n        quota: 1G\n", "      - bob\n", 1))
    assert yaml.safe_load(stack.read_text())["config"]["mailsite:recipients"]["users"] == ["alice", "bob"]
    plain = load_site(read_stack_settings(stack))
    assert plain.recipients.users == ["alice", "bob"]
    assert [account.quota for account in plain.recipients.accounts] == [None, None]
    as_sections = site_of(_with_users({"name": "alice"}, {"name": "bob"}))
    assert as_sections == plain
    assert _trees(as_sections) == _trees(plain)


def test_a_user_with_a_quota_is_written_as_a_section_beside_plain_names(tmp_path):
    stack = tmp_path / "Pulumi.quota.yaml"
    stack.write_text(EXAMPLE.read_text().replace("      - name: bob\n        quota: 1G\n", "      - name: bob\n        quota: 5G\n", 1))
    site = load_site(read_stack_settings(stack))
    assert site.recipients.users == ["alice", "bob"]
    assert site.recipients.account("bob").quota == "5G" and site.recipients.account("alice").quota is None
    assert size_bytes(site.recipients.account("bob").quota) == 5 << 30


def test_a_bad_quota_is_one_line_and_exit_2_from_the_tool(tmp_path):
    settings = _with_users("alice", {"name": "bob", "quota": "5 gigs"})
    stack = tmp_path / "Pulumi.review.yaml"
    stack.write_text(yaml.safe_dump({"config": {f"mailsite:{k}": v for k, v in settings.items()}}))
    result = subprocess.run([sys.executable, "-m", "mailsite", "render", "--config", str(stack), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: mailsite:recipients.users[1].quota = 5 gigs: not a size; write a whole number with K, M or G, like 5G"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("quota,fix", [
    ("5 gigs", "like 5G"), ("5GB", "like 5G"), ("5g", "like 5G"), ("0", "like 5G"), ("-1G", "like 5G"), ("", "like 5G"),
    ("5G\n", "like 5G"), (" 5G", "like 5G"), ("5G # big", "like 5G"), ("\uff15G", "like 5G"), ("1e3", "like 5G"),
    ("5T", "like 5G"), ("99999999999999999999G", "at most 10000G"), (5, "must be text"), (True, "must be text"),
    ([], "must be text"),
])
def test_a_quota_that_is_not_a_size_is_refused_in_one_line(quota, fix):
    lines = refusal_lines(_with_users("alice", {"name": "bob", "quota": quota}))
    assert len(lines) == 1 and lines[0].startswith("mailsite:recipients.users[1].quota = "), lines
    assert fix in lines[0] and lines[0].isprintable(), lines[0]


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789KMGkmgTB .-+_\n\x00\u0660\uff15"), max_size=25))
@example("10000G")
@example("10001G")
def test_an_accepted_quota_is_digits_and_a_unit_within_the_bound(quota):
    """Whatever text is written, a quota the model takes is what a renderer can put in a config as
    it is: ASCII digits with at most K, M or G after them, and no more than MAX_QUOTA bytes."""
    try:
        site = site_of(_with_users("alice", {"name": "bob", "quota": quota}))
    except SiteConfigError as error:
        assert [p.setting for p in error.problems] == ["mailsite:recipients.users[1].quota"]
        return
    accepted = site.recipients.account("bob").quota
    assert accepted == quota and accepted.isascii() and accepted.rstrip("KMG").isdigit()
    assert 50 << 20 <= size_bytes(accepted) <= MAX_QUOTA


@pytest.mark.parametrize("entry,setting,words", [
    ("Alice", "mailsite:recipients.users[1]", "lower-case letters"),
    ("carol\n", "mailsite:recipients.users[1]", "lower-case letters"),
    ({"name": "carol\n@example.org bob"}, "mailsite:recipients.users[1].name", "lower-case letters"),
    ({"name": "c+d"}, "mailsite:recipients.users[1].name", "sub-address"),
    ({"quota": "5G"}, "mailsite:recipients.users[1].name", "required"),
    ({"name": "carol", "qouta": "5G"}, "mailsite:recipients.users[1].qouta", "unknown setting"),
    (7, "mailsite:recipients.users[1]", "must be text"),
    ([["carol"]], "mailsite:recipients.users[1]", "must be text"),
])
def test_a_bad_user_entry_is_one_line_naming_it(entry, setting, words):
    lines = [line for line in refusal_lines(_with_users("alice", entry, "bob")) if line.startswith(setting + " = ")]
    assert len(lines) == 1 and words in lines[0], refusal_lines(_with_users("alice", entry, "bob"))


def test_a_password_in_the_stack_file_is_refused_and_never_shown():
    """Passwords live in the secrets backend only: one put beside a user is an unknown setting,
    and its value is not printed."""
    lines = refusal_lines(_with_users("alice", {"name": "bob", "password": "hunter2-secret"}))
    assert lines == ["mailsite:recipients.users[1].password = <not shown>: unknown setting; remove it or correct its "
                     "spelling (see Pulumi.example.yaml)"]
    assert "hunter2" not in "".join(lines)


def test_catch_all_domains_are_read_as_the_site_domains_are():
    settings = example_settings()
    settings["recipients"]["catchAll"] = {"Example.NET.": "bob"}
    assert site_of(settings).recipients.catch_all == {"example.net": "bob"}


def test_one_domain_given_two_catch_alls_in_two_spellings_is_refused():
    """Two spellings of one domain would otherwise leave one catch-all silently in the other's
    place."""
    settings = example_settings()
    settings["recipients"]["catchAll"] = {"example.org": "alice", "EXAMPLE.org.": "bob"}
    assert refusal_lines(settings) == ["mailsite:recipients.catchAll = {...}: example.org is listed twice (example.org and "
                                  "EXAMPLE.org.); keep one catch-all per domain"]


@pytest.mark.parametrize("catch_all,setting,words", [
    ({"example.org\n": "alice"}, "mailsite:recipients.catchAll.example.org\n", "not a domain name"),
    ({"example.org": "alice\n"}, "mailsite:recipients.catchAll.example.org", "lower-case letters"),
    ({"example.org": "bob@attacker.example"}, "mailsite:recipients.catchAll.example.org", "lower-case letters"),
    ({"example.org": "*"}, "mailsite:recipients.catchAll.example.org", "lower-case letters"),
    ({"@example.org": "alice"}, "mailsite:recipients.catchAll.@example.org", "not a domain name"),
    (["example.org"], "mailsite:recipients.catchAll", "section"),
])
def test_a_hostile_catch_all_is_one_line(catch_all, setting, words):
    settings = example_settings()
    settings["recipients"]["catchAll"] = catch_all
    lines = refusal_lines(settings)
    assert len(lines) == 1 and lines[0].startswith(setting.replace("\n", "\\n") + " = ") and words in lines[0], lines
    assert lines[0].isprintable()


def test_the_example_documents_the_user_entry_settings():
    text = Path(EXAMPLE).read_text()
    assert "#   quota: " in text and "    catchAll:\n      example.net: bob\n" in text
