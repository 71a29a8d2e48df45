"""TLS in the lab, as the world meets it: the example site's smtpd 7.6 (from the daemon root) with
certificates from the lab's CA, made per up; swaks on the internet node as a stranger's MTA, a
site user's mail client and a client that verifies certificates. One lab for the module.

The scenarios of the demonstration say the same in the admin's words (tests/test_lab.py runs
them); these pin what a client sees at each step: the reply, swaks's status, the header. No
password is ever printed: a test that finds one says so without showing it.

These need root (network namespaces, mounts); CI runs as root and never skips them.
"""

from __future__ import annotations

import base64
import os
import time

import pytest

from mailsite.lab import imap, mail
from mailsite.lab.ca import LabCA
from mailsite.lab.mail import Sent
from mailsite.lab.procs import wait_until
from tests.sites import example_settings, site_of

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)

EXAMPLE_SITE = site_of(example_settings())  # the names the lab keeps; its addresses are the lab's
MX_NAMES = [host.mx_name for host in EXAMPLE_SITE.hosts]
WRONG_PASSWORD = "not-the-password"


def _marker(label: str) -> str:
    return f"mailsite-tls-{label}-{os.urandom(6).hex()}"


def _delivered(lab, marker: str) -> list:
    wait_until(lambda: mail.delivered(lab, marker), 30, 0.1)
    return mail.delivered(lab, marker)


def _hop_by(path, mx_name: str) -> str:
    return mail.received_by(path.read_bytes(), mx_name)


def _users(lab) -> tuple[str, str]:
    users = lab.plan.site.recipients.users
    return users[0], f"{users[-1]}@{lab.plan.site.domains[0]}"


# What swaks 20240103 printed against smtpd 7.6 from the daemon root: the client's side of the
# lab tests below, read without a lab.
REFUSED_INSIDE_TLS = """\
<-  220 mx1.example.org ESMTP OpenSMTPD
 -> EHLO internet.test
<-  250-mx1.example.org Hello internet.test [10.77.0.3], pleased to meet you
<-  250-8BITMIME
<-  250-STARTTLS
<-  250 HELP
 -> STARTTLS
<-  220 2.0.0 Ready to start TLS
=== TLS started with cipher TLSv1.3:TLS_AES_256_GCM_SHA384:256
=== TLS peer certificate passed CA verification, failed host verification (using host mx2.example.org to verify)
 ~> EHLO internet.test
<~  250-mx1.example.org Hello internet.test [10.77.0.3], pleased to meet you
<~  250-AUTH PLAIN LOGIN
<~  250 HELP
 ~> AUTH PLAIN AGFsaWNlAFBST1ZJREVEX0JVVF9SRU1PVkVE
<~* 535 Authentication failed
"""


def test_a_refusal_inside_tls_is_read_as_one():
    sent = Sent(28, REFUSED_INSIDE_TLS)
    assert sent.refusal == "535 Authentication failed"
    assert sent.tls == "TLSv1.3:TLS_AES_256_GCM_SHA384:256"
    assert sent.offered_in_clear == ["8BITMIME", "STARTTLS", "HELP"]  # AUTH came only inside TLS
    assert sent.certificate_check.startswith("passed CA verification, failed host verification")
    assert Sent(24, REFUSED_INSIDE_TLS.replace("535 Auth", "550 Invalid recipient")).refused_permanently
    assert not Sent(0, "<-  250 2.0.0 Ok\n").refusal and not Sent(0, "").tls


# A stranger's MTA on port 25.

@pytest.mark.parametrize("host", [host.name for host in EXAMPLE_SITE.hosts])
def test_internet_sender_uses_starttls_and_is_accepted(lab, host):
    site = lab.plan.site
    marker = _marker(f"starttls-{host}")
    sent = mail.send(lab, host, f"{site.recipients.users[0]}@{site.domains[0]}", marker)
    assert sent.accepted and sent.tls.startswith("TLSv1."), f"swaks {sent.status}: {sent.refusal}"
    found = _delivered(lab, marker)
    assert len(found) == 1
    hop = _hop_by(found[0], site.host(host).mx_name)
    assert " with ESMTPS " in hop and f" ({sent.tls}:" in hop, hop


def test_received_header_says_esmtp_without_tls_for_mail_sent_in_clear(lab):
    """What the TLS tests read in the header is there only for TLS: a public MX still takes mail
    in clear (RFC 3207), and then says so."""
    site = lab.plan.site
    marker = _marker("clear")
    sent = mail.send(lab, site.primary.name, f"{site.recipients.users[0]}@{site.domains[0]}", marker, tls=False)
    assert sent.accepted and not sent.tls
    found = _delivered(lab, marker)
    assert len(found) == 1
    hop = _hop_by(found[0], site.primary.mx_name)
    assert " with ESMTP " in hop and "TLSv1." not in hop, hop


# Between the MXes.

def test_backup_relays_to_primary_over_required_starttls(lab):
    """`relay backup mx ... tls`: STARTTLS required of every relay session, and the primary's
    certificate verified for its MX name (the lab's CA stands in for the site's ACME CA)."""
    site = lab.plan.site
    for backup in site.backups:
        log_before = len(mail.smtpd_log(lab, backup.name).splitlines())
        marker = _marker(f"relay-{backup.name}")
        assert mail.send(lab, backup.name, f"{site.recipients.users[0]}@{site.domains[0]}", marker).accepted
        found = _delivered(lab, marker)
        assert len(found) == 1
        hop = _hop_by(found[0], site.primary.mx_name)
        assert hop.startswith(f"Received: from {backup.mx_name} "), hop
        assert " with ESMTPS " in hop and " (TLSv1." in hop, hop
        sessions = mail.relay_sessions(lab, backup.name, log_before)
        assert sessions, f"{backup.name} logged no relay"
        for session in sessions:
            assert any(" mta connecting address=smtp+tls://" in line for line in session), session
            assert any(' mta cert-check result="valid"' in line for line in session), session


# The MSA on the primary: 587 (STARTTLS required) and 465 (smtps), both with AUTH.

def test_submission_in_clear_is_refused_and_offers_no_auth(lab):
    user, to = _users(lab)
    sent = mail.submit(lab, user, to, _marker("clear-587"), password=None, protection="none")
    assert sent.status == 23 and sent.refusal.startswith("530 "), sent.transcript
    assert "STARTTLS" in sent.refusal
    assert "STARTTLS" in sent.offered_in_clear and not any(e.startswith("AUTH") for e in sent.offered_in_clear)


def test_submission_without_auth_is_refused(lab):
    user, to = _users(lab)
    sent = mail.submit(lab, user, to, _marker("no-auth"), password=None)
    assert sent.tls and sent.status == 23 and sent.refusal.startswith("530 "), sent.transcript
    assert "AUTH" in sent.refusal


@pytest.mark.parametrize("protection", ["starttls", "smtps"])
def test_submission_with_a_wrong_password_is_refused(lab, protection):
    user, to = _users(lab)
    marker = _marker(f"wrong-{protection}")
    sent = mail.submit(lab, user, to, marker, password=WRONG_PASSWORD, protection=protection)
    assert sent.tls and sent.status == 28 and sent.refusal.startswith("535 "), sent.transcript
    time.sleep(0.5)
    assert not mail.delivered(lab, marker)


@pytest.mark.parametrize("protection", ["starttls", "smtps"])
def test_user_with_tls_and_password_submits_to_a_site_user(lab, protection):
    user, to = _users(lab)
    marker = _marker(f"submit-{protection}")
    sent = mail.submit(lab, user, to, marker, password=lab.password(user), protection=protection)
    assert sent.accepted and sent.tls, f"swaks {sent.status}: {sent.refusal}"
    found = _delivered(lab, marker)
    assert len(found) == 1 and mail.mailbox_of(lab, found[0]) == to.split("@")[0]
    hop = _hop_by(found[0], lab.plan.site.primary.mx_name)
    assert " with ESMTPSA " in hop and " (TLSv1." in hop, hop


def test_user_with_tls_and_password_may_send_out_where_a_stranger_may_not(lab):
    user, _ = _users(lab)
    outside = "someone@foreign.test"
    sent = mail.submit(lab, user, outside, _marker("out"), password=lab.password(user), quit_after="RCPT")
    assert sent.accepted, f"swaks {sent.status}: {sent.refusal}"
    assert mail.send(lab, lab.plan.site.primary.name, outside, _marker("stranger-out")).refused_permanently


# The password, and transcripts or logs that could hold it, stay inside these two functions: a
# failing test's report (pytest --showlocals, its explanation of a call) prints a test's locals
# and arguments, never these.

def _holding_the_password(lab, user: str, texts: dict[str, str]) -> list[str]:
    """Which of `texts` hold `user`'s password, as is or as AUTH PLAIN or LOGIN send it (base64)."""
    password = lab.password(user)
    forms = [password, base64.b64encode(f"\0{user}\0{password}".encode()).decode(), base64.b64encode(password.encode()).decode()]
    return [name for name, text in texts.items() if any(form in text for form in forms)]


def _submitted_then_holding_the_password(lab, user: str, to: str, unhidden: bool = False) -> tuple[bool, list[str]]:
    """Submit on 587 and 465 as `user` and log in over IMAPS; whether all were taken, and which
    transcripts and lab logs (smtpd's, Dovecot's) hold the password after. `unhidden`: plus a
    transcript as swaks prints AUTH PLAIN without --auth-hide-password, which the search must find."""
    sent = {protection: mail.submit(lab, user, to, _marker("secret"), password=lab.password(user), protection=protection)
            for protection in ("starttls", "smtps")}
    if imap.login_answer(lab, user, lab.password(user)) != "accepted":
        return False, []
    texts = {f"swaks on {protection}": s.transcript for protection, s in sent.items()}
    texts |= {str(path.relative_to(lab.dir)): path.read_text(errors="replace") for path in (lab.dir / "nodes").rglob("*.log")}
    if unhidden:
        texts["swaks without --auth-hide-password"] = " ~> AUTH PLAIN " + base64.b64encode(f"\0{user}\0{lab.password(user)}".encode()).decode()
    logs = {name.rsplit("/", 1)[-1] for name in texts}
    return all(s.accepted for s in sent.values()) and {"smtpd.log", "dovecot.log"} <= logs, _holding_the_password(lab, user, texts)


def test_no_password_in_transcripts_or_logs(lab):
    user, to = _users(lab)
    submitted, leaks = _submitted_then_holding_the_password(lab, user, to)
    assert submitted
    assert not leaks, f"these hold the password (not shown here): {leaks}"


def test_the_password_search_finds_a_password_swaks_did_not_hide(lab):
    """The test above can fail: the search finds the password where swaks would print it."""
    user, to = _users(lab)
    assert _submitted_then_holding_the_password(lab, user, to, unhidden=True)[1] == ["swaks without --auth-hide-password"]


# Certificates, checked by clients that verify them.

def test_smtps_presents_the_site_certificate_verified_by_the_lab_ca(lab):
    site = lab.plan.site
    primary = site.primary
    sent = mail.verifying(lab, primary.name, primary.mx_name, smtps=True, lab_ca_only=True)
    assert sent.accepted and sent.tls, f"swaks {sent.status}: {sent.certificate_check}"
    assert sent.certificate_check.startswith("passed CA verification, passed host verification")
    site_certificate = lab.path_on(primary.name, site.tls.certificate_for(primary)).read_text()
    assert sent.peer_certificate == site_certificate
    assert mail.issued_by(lab.ca_certificate, sent.peer_certificate, primary.mx_name) == ""


@pytest.mark.parametrize("name", MX_NAMES)
def test_verifying_client_accepts_each_mx_name(lab, name):
    host = next(host for host in lab.plan.site.hosts if host.mx_name == name)
    sent = mail.verifying(lab, host.name, name)
    assert sent.accepted, f"swaks {sent.status}: {sent.certificate_check}"
    assert sent.certificate_check == f"passed CA verification, passed host verification (using host {name} to verify)"
    assert mail.issued_by(lab.ca_certificate, sent.peer_certificate, name) == ""


def test_verifying_client_refuses_another_mx_name(lab):
    site = lab.plan.site
    other = site.backups[0].mx_name
    sent = mail.verifying(lab, site.primary.name, other)
    assert sent.status == 29, sent.transcript
    assert sent.certificate_check.startswith("passed CA verification, failed host verification")
    assert "failed host verification" not in mail.verifying(lab, site.primary.name, site.primary.mx_name).certificate_check


def test_the_mx_certificate_does_not_verify_against_another_ca(lab, tmp_path):
    """Each up makes its CA: the check against lab.ca_certificate is against this one alone."""
    site = lab.plan.site
    sent = mail.verifying(lab, site.primary.name, site.primary.mx_name)
    other = tmp_path / "other-ca.pem"
    other.write_bytes(LabCA.new("other").pem)
    assert mail.issued_by(lab.ca_certificate, sent.peer_certificate, site.primary.mx_name) == ""
    assert mail.issued_by(other, sent.peer_certificate, site.primary.mx_name) != ""
    assert mail.issued_by(lab.ca_certificate, sent.peer_certificate, site.backups[0].mx_name) != ""
