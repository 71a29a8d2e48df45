"""An authenticated user's From: header (issue 16.2): smtpd's senders table holds the envelope's
sender to the user's own addresses, and the primary's rspamd (local.d/rspamd.lua) holds the From:
header to that sender, as one header of one address, so that no user gets a message signed in
another's name. Asked of the lab's real rspamd with rspamc, as filter-rspamd asks it (the user and
the envelope's sender in the request)."""

from __future__ import annotations

import json

import pytest

SENDER = "alice@example.org"


def _scan(lab, headers: str, user: str | None = "alice") -> dict:
    message = headers + "To: bob@example.org\nSubject: hello\nDate: Thu, 26 Nov 2026 12:00:00 +0000\n" \
                        "Message-Id: <test@example.org>\n\nHello Bob.\n"
    argv = ["rspamc", "-h", "127.0.0.1:11333", "--json", "--ip", "198.51.100.7", "--from", SENDER,
            "--rcpt", "bob@example.org"] + (["--user", user] if user else []) + ["symbols"]
    result = lab.run_in(lab.plan.site.primary.name, argv, input=message)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("headers", [
    "From: bob@example.org\n",
    "From: alice@example.org, bob@example.org\n",
    "From: alice@example.org\nFrom: bob@example.org\n",
    "",  # no From: at all
    'From: "alice@example.org" <bob@example.org>\n',
], ids=["another user", "two addresses", "two headers", "none", "display name"])
def test_an_authenticated_users_other_from_is_refused_and_left_unsigned(lab, headers):
    verdict = _scan(lab, headers)
    assert verdict["action"] == "reject" and "MAILSITE_FROM_NOT_SENDER" in verdict["symbols"], verdict
    assert "From: header must be one address" in verdict["messages"]["smtp_message"]
    assert "DKIM_SIGNED" not in verdict["symbols"] and "dkim-signature" not in verdict


@pytest.mark.parametrize("headers", ["From: alice@example.org\n", "From: Alice <ALICE@Example.ORG>\n"],
                         ids=["same", "other case"])
def test_an_authenticated_users_own_from_is_taken_and_signed(lab, headers):
    verdict = _scan(lab, headers)
    assert verdict["action"] != "reject" and "MAILSITE_FROM_NOT_SENDER" not in verdict["symbols"], verdict
    assert "DKIM_SIGNED" in verdict["symbols"]


def test_mail_no_one_logged_in_for_may_carry_others_from(lab):
    """A list or a forwarder rightly sends someone else's From:; such mail is scored, never held
    to its envelope (nor signed: it came from outside)."""
    verdict = _scan(lab, "From: bob@example.org\n", user=None)
    assert "MAILSITE_FROM_NOT_SENDER" not in verdict["symbols"] and "DKIM_SIGNED" not in verdict["symbols"], verdict


@pytest.mark.parametrize("headers", [
    "From: bob@example.org <alice@example.org>\n",
    'From: "bob@example.org" <alice@example.org>\n',
    "From: =?utf-8?b?Ym9iQGV4YW1wbGUub3Jn?= <alice@example.org>\n",  # "bob@example.org", MIME-encoded
    "From: alice@example.org (bob@example.org)\n",
    "From: alice@example.org\n\tbob@example.org\n",
    "From: alice@example.org\nSender: bob@example.org\n",
], ids=["bare display name", "quoted display name", "encoded display name", "comment", "folded", "sender"])
def test_another_address_a_reader_takes_for_the_sender_is_refused_around_the_users_own(lab, headers):
    """rspamd parses the user's own address out of each From: here, but a reader is shown bob's
    (many mail apps show only the display name, "on behalf of" a Sender:; Python's parser takes
    bob@example.org for the address of the first): signed for example.org, it would pass DMARC as
    bob's. Found in review."""
    verdict = _scan(lab, headers)
    assert verdict["action"] == "reject" and "MAILSITE_FROM_NOT_SENDER" in verdict["symbols"], verdict
    assert "DKIM_SIGNED" not in verdict["symbols"] and "dkim-signature" not in verdict


@pytest.mark.parametrize("headers", [
    'From: "Alice Doe" <alice@example.org>\n',
    "From: =?utf-8?q?Alice_D=C3=B6e?= <alice@example.org>\n",
    "From: alice@example.org <alice@example.org>\n",
    "From: Alice @ Home <alice@example.org>\n",
], ids=["thunderbird", "encoded name", "own address as name", "at sign in name"])
def test_a_mail_apps_from_with_the_users_name_is_taken_and_signed(lab, headers):
    verdict = _scan(lab, headers)
    assert verdict["action"] != "reject" and "MAILSITE_FROM_NOT_SENDER" not in verdict["symbols"], verdict
    assert "DKIM_SIGNED" in verdict["symbols"]


@pytest.mark.parametrize(("header", "signed"), [
    ("From: ROOT@MX1.EXAMPLE.ORG\n", True),
    ("From: x@" + "a" * 3000 + ".example.org\n", True),
    ("From: =?utf-8?b?/w==?= <root@mx1.example.org>\n", True),  # a name that is no UTF-8
    ("From: root\n", False),
    ("From: root@\n", False),
    ("From: <>\n", False),
    ("From: x@exämple.org\n", False),
    ("From: x@mx1.example.org.evil.test\n", False),
    ("", False),
], ids=["capitals", "very long", "bad utf-8 name", "no at", "no domain", "empty", "unicode", "site name inside", "none"])
def test_the_hosts_own_mail_of_any_from_is_answered_and_signed_only_in_a_site_domain(lab, header, signed):
    """A bounce's (no envelope sender) or root's From: may be anything a local program wrote: the
    rendered use_domain_custom Lua, run by rspamd on the message it parsed, never errs (an error
    would leave the mail unsigned or held), never refuses, and signs only a From: in a site domain."""
    message = header + "To: someone@outside.test\nSubject: report\n\nThe nightly report.\n"
    argv = ["rspamc", "-h", "127.0.0.1:11333", "--json", "--ip", "127.0.0.1", "--from", "", "--rcpt",
            "someone@outside.test", "symbols"]
    result = lab.run_in(lab.plan.site.primary.name, argv, input=message)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["action"] == "no action", verdict
    assert ("d=example.org;" in verdict.get("dkim-signature", "")) is signed, verdict
