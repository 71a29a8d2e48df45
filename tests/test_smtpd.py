"""smtpd on the primary as a mailbox server's MTA: every site address delivered to Dovecot over
LMTP as the one virtual mail user, aliases and catch-alls onto a user's address, the MSA checking
passwords against the credentials table; and backups taking exactly what the primary takes.

The lab proves the same on the real smtpd (tests/test_lab.py); these read the rendered files.
"""

from __future__ import annotations

import re

import pytest

from mailsite.model import LMTP_SOCKET, MAIL_USER
from tests.test_render import render_site
from tests.sites import example_settings, site_of


def _table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


def _site(catch_all: dict[str, str]):
    settings = example_settings()
    settings["recipients"]["catchAll"] = catch_all
    settings["recipients"]["aliases"]["lists"] = "owner-lists@example.com"
    return site_of(settings)


def _catch_all_site():
    return _site({"example.net": "bob"})


def test_every_user_address_is_delivered_to_dovecot_as_the_mail_user(example_site):
    """No system account per mailbox: a user's address in each domain expands to the virtual mail
    user, and the mailbox action hands it to Dovecot's LMTP socket under the address sent to."""
    tree = render_site(example_site)["mx1"]
    virtuals = dict(_table(tree["etc/mail/virtuals"].text))
    for domain in example_site.domains:
        for user in example_site.recipients.users:
            assert virtuals[f"{user}@{domain}"] == MAIL_USER
    assert not set(example_site.recipients.users) & set(virtuals.values()), "an address maps to a system user"
    smtpd = tree["etc/mail/smtpd.conf"].text
    assert f'action "mailbox" lmtp "{LMTP_SOCKET}" rcpt-to virtual <virtuals>\n' in smtpd
    assert "maildir" not in smtpd and "mbox alias <aliases>" in smtpd  # the host's own accounts keep mbox


def test_aliases_and_catch_alls_go_to_the_users_address_in_the_same_domain():
    """postmaster@example.net reaches alice@example.net (then her mailbox, under that address);
    an outside alias target stays as written; a catch-all is @domain onto the user there."""
    site = _catch_all_site()
    virtuals = dict(_table(render_site(site)["mx1"]["etc/mail/virtuals"].text))
    assert virtuals["postmaster@example.org"] == "alice@example.org"
    assert virtuals["postmaster@example.net"] == "alice@example.net"
    assert virtuals["hostmaster@example.net"] == "bob@example.net"
    assert virtuals["lists@example.org"] == "owner-lists@example.com"
    assert virtuals["@example.net"] == "bob@example.net" and "@example.org" not in virtuals


def test_msa_authenticates_against_the_credentials_table_only(example_site):
    """587 and 465 check passwords against the credentials table (bcrypt hashes, the same as
    Dovecot's), never against the host's system accounts (`auth` alone would)."""
    smtpd = render_site(example_site)["mx1"]["etc/mail/smtpd.conf"].text
    assert "table credentials file:/etc/mail/credentials\n" in smtpd
    listeners = re.findall(r"^listen on .*$", smtpd, re.M)
    auth = [line for line in listeners if " auth" in line]
    # (and through rspamd, as every listener that takes mail from outside: tests/test_rspamd.py)
    assert auth == ["listen on vmx0 port submission tls-require pki mx1.example.org auth <credentials> senders <sendas> mask-src"
                    ' filter "rspamd"',
                    'listen on vmx0 smtps pki mx1.example.org auth <credentials> senders <sendas> mask-src filter "rspamd"']


def _smtpd_takes(table: list[str], address: str) -> bool:
    """Whether smtpd's list-table match (mailaddr_match in smtpd/util.c) takes `address`: @domain
    takes any local part of that domain, user@domain that user, case aside, with any +tag cut
    off the address (the table's entries carry none)."""
    local, _, domain = address.rpartition("@")
    local = local.split("+", 1)[0].lower()
    for entry in table:
        part, _, where = entry.rpartition("@")
        if where.lower() == domain.lower() and (not part or part.lower() == local):
            return True
    return False


PROBES = ["alice@example.org", "alice+x@example.net", "Postmaster@EXAMPLE.NET", "lists@example.org",
          "nobody@example.org", "nobody@example.net", "nobody+alice@example.net", "alice@sub.example.net",
          "alice@unknown.test"]


@pytest.mark.parametrize("catch_all", [False, True], ids=["no catch-all", "catch-all example.net"])
def test_backups_take_exactly_the_recipients_the_primary_takes(catch_all):
    """One list from the model: each backup's recipients table is the primary's virtual keys, and
    read as smtpd reads it, it takes what Site.accepts says the site takes (any name of a
    catch-all domain included), no more, no less."""
    site = _catch_all_site() if catch_all else _site({})
    trees = render_site(site)
    keys = [entry[0] for entry in _table(trees[site.primary.name]["etc/mail/virtuals"].text)]
    assert keys == site.valid_recipients()
    for backup in site.backups:
        table = [entry[0] for entry in _table(trees[backup.name]["etc/mail/recipients"].text)]
        assert table == keys, backup.name
        for address in PROBES:
            assert _smtpd_takes(table, address) == site.accepts(address), (backup.name, address)
    assert site.accepts("nobody@example.net") is catch_all and not site.accepts("nobody@example.org")


def test_users_submit_only_as_their_own_site_addresses(example_site):
    """An authenticated user may send as the site's addresses that reach that user's mailbox (own,
    aliases onto the user, a catch-all domain's), under every name the user logs in with, and as
    no other: 587 and 465 check MAIL FROM against the senders table (smtpd.conf.5 `senders`, table sendas)."""
    tree = render_site(example_site)["mx1"]
    smtpd = tree["etc/mail/smtpd.conf"].text
    assert "table sendas file:/etc/mail/sendas\n" in smtpd
    auth = [line for line in re.findall(r"^listen on .*$", smtpd, re.M) if " auth" in line]
    assert len(auth) == 2 and all(" senders <sendas> " in line for line in auth)
    senders = {login: [address.strip() for address in addresses.split(",")]
               for login, addresses in (line.split(None, 1) for line in tree["etc/mail/sendas"].text.splitlines()
                                        if line and not line.startswith("#"))}
    assert set(senders) == {f"{user}{suffix}" for user in example_site.recipients.users
                            for suffix in ["", *(f"@{domain}" for domain in example_site.domains)]}
    alice, bob = senders["alice@example.net"], senders["bob"]
    assert alice == senders["alice"] and _smtpd_takes(alice, "alice+x@example.net")
    assert _smtpd_takes(alice, "postmaster@example.org") and _smtpd_takes(bob, "anything@example.net")
    for address in ["bob@example.org", "someone@outside.test", "anything@example.net"]:
        assert not _smtpd_takes(alice, address), address
    assert "senders" not in render_site(example_site)["mx2"]["etc/mail/smtpd.conf"].text
