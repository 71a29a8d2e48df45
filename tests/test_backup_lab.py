"""The backup and restore rehearsed on the lab's real daemons: the primary's own job (rendered
as the image's), Dovecot 2.3's doveadm and restic 0.18 against a local S3 endpoint (moto_server,
in the lab's internet node, which restic reaches over the lab's network). Mail in several
folders with flags, a backup, the primary's volume destroyed and the primary replaced, new mail,
a restore, the same messages, folders and flags over IMAPS; a one-user restore; one-line refusals.

The lab's tests run one after another on one worker (tests/conftest.py groups test_lab*, and this
module by its own mark below)."""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import dns.resolver
import pytest
import yaml

from mailsite.backup import backup_now, restore, snapshots
from mailsite.doctor.backup import checks as backup_checks
from mailsite.doctor.view import SiteView
from mailsite.hosts import lab_control
from mailsite.lab import imap
from mailsite.lab.backup import BACKUP_TREE, backup_control
from mailsite.lab.lab import Lab, leftovers
from mailsite.lab.site import lab_plan
from tests.conftest import LAB_GROUP
from mailsite.results import Status
from tests.sites import ROOT, example_settings, site_of

pytestmark = pytest.mark.xdist_group(LAB_GROUP)

BUCKET = "mailsite-lab-backups"
MOTO_PORT = 9000  # in the internet node's own network namespace: nothing else listens there
STACK = "backuplab"
PASSWORD_FILE = "/etc/mailsite/backup-password"

# user -> folder -> [(subject, flags)]: flags and keywords as a mail client sets them.
MAIL = {
    "alice": {"INBOX": [("alice read and flagged", r"(\Seen \Flagged)"), ("alice unread", None),
                        ("alice answered", r"(\Seen \Answered $Label1)")],
              "Archive": [("alice archived", r"(\Seen)")],
              "Projects": [("alice project draft", r"(\Draft \Flagged)")]},
    "bob": {"INBOX": [("bob read", r"(\Seen)")],
            "Archive": [("bob archived unread", None)]},
}


def _message(subject: str) -> bytes:
    return (f"From: someone@example.net\r\nTo: user@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@backup.test>\r\n\r\n{subject}\r\n").encode()


def _append(lab: Lab, user: str, folders: dict) -> None:
    with imap.mailbox(lab, user, lab.password(user)) as box:
        # imaplib's own CREATE and APPEND, as a mail client files mail: the lab's helper reads only.
        client = box._client
        for folder, messages in folders.items():
            if folder != "INBOX":
                client.create(folder)
            for subject, flags in messages:
                status, data = client.append(folder, flags, None, _message(subject))
                assert status == "OK", data


def _folders(client: imaplib.IMAP4) -> list[str]:
    status, listed = client.list()
    assert status == "OK", listed
    return sorted(line.decode().rsplit(" ", 1)[1].strip('"') for line in listed if isinstance(line, bytes))


def mail_of(lab: Lab, user: str) -> dict[str, dict[str, frozenset[str]]]:
    """Every folder of the user's, each message by Subject with its flags, as IMAPS shows them
    (\\Recent aside: it says which session saw a message first, not what the user set)."""
    with imap.mailbox(lab, user, lab.password(user)) as box:
        found = {}
        for folder in _folders(box._client):
            box.select(folder)
            found[folder] = {message.subject: message.flags - {"\\Recent"} for message in box.messages().values()}
        return found


def _counts(lab: Lab, user: str) -> dict[str, int]:
    """How many messages each folder holds: mail_of keys them by Subject, so a copy would not show there."""
    with imap.mailbox(lab, user, lab.password(user)) as box:
        found = {}
        for folder in _folders(box._client):
            box.select(folder)
            found[folder] = len(box.uids())
        return found


def _expected(user: str) -> dict[str, dict[str, frozenset[str]]]:
    return {folder: {subject: frozenset((flags or "()").strip("()").split()) for subject, flags in messages}
            for folder, messages in MAIL[user].items()}


def _in_internet(lab: Lab, argv: list[str], **options) -> subprocess.Popen | subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.plan.internet.namespace, *argv], **options)


@contextlib.contextmanager
def lab_with_s3(directory: Path) -> Iterator[tuple[Lab, Path, str]]:
    """The example site with backups on, in the lab, and its S3 endpoint: moto_server on the
    internet node's address, where the primary's restic reaches it; both stopped at the end.
    Gives the lab, its stack file (in `directory`) and the endpoint. bench/backup.py uses it too."""
    settings = example_settings()
    internet = lab_plan(site_of(settings), Path("/nonexistent")).internet
    endpoint = f"http://{internet.ipv4}:{MOTO_PORT}"
    settings["backup"] = {"endpointUrl": endpoint, "bucket": BUCKET, "prefix": "lab", "region": "us-east-1"}
    config = directory / f"Pulumi.{STACK}.yaml"
    config.write_text(yaml.safe_dump({"config": {f"mailsite:{key}": value for key, value in settings.items()}}))
    lab = Lab.up(config)
    moto = None
    try:
        moto = subprocess.Popen(["ip", "netns", "exec", internet.namespace, str(Path(sys.executable).parent / "moto_server"),
                                 "-H", str(internet.ipv4), "-p", str(MOTO_PORT)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                imap.connect_in(internet.namespace, str(internet.ipv4), MOTO_PORT, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or moto.poll() is not None:
                    raise RuntimeError("moto_server did not start in the lab's internet node") from None
                time.sleep(0.2)
        _s3(lab, endpoint, f"s3.create_bucket(Bucket={BUCKET!r})")
        yield lab, config, endpoint
    finally:
        if moto is not None:
            os.killpg(moto.pid, signal.SIGTERM)
            moto.wait(timeout=10)
        left = lab.down()
    assert left == [] and leftovers() == [], left


@pytest.fixture(scope="module")
def backup_lab(tmp_path_factory):
    with lab_with_s3(tmp_path_factory.mktemp("backup")) as running:
        yield running


def _s3(lab: Lab, endpoint: str, statement: str) -> None:
    """A boto3 statement against the lab's S3 endpoint, from the internet node (as the bucket's owner)."""
    code = f"import boto3; s3 = boto3.client('s3', endpoint_url={endpoint!r}, region_name='us-east-1'); {statement}"
    result = _in_internet(lab, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AWS_ACCESS_KEY_ID": "owner", "AWS_SECRET_ACCESS_KEY": "owner"})
    assert result.returncode == 0, result.stderr


def _cli(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsite", "backup", arguments[0], "--config", str(config), "--lab",
                           *arguments[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_restore_after_the_volume_is_lost_brings_back_every_message_folder_and_flag(backup_lab):
    lab, config, _ = backup_lab
    primary = lab.plan.site.primary.name
    for user, folders in MAIL.items():
        _append(lab, user, folders)
    before = {user: mail_of(lab, user) for user in MAIL}
    for user in MAIL:  # what the test put there, and the special folders Dovecot made
        assert {folder: before[user][folder] for folder in MAIL[user]} == _expected(user)

    snapshot = backup_now(backup_control(lab))
    assert snapshot in [found.id for found in snapshots(backup_control(lab))]

    # The volume is lost: a new, blank one, and a new primary VM with it.
    shutil.rmtree(lab.volume(primary))
    lab.replace_host(primary)
    assert all(not messages for messages in mail_of(lab, "alice").values()), "the new volume is not blank"
    # Mail reaches the new primary before the restore; it must survive it.
    _append(lab, "alice", {"INBOX": [("alice after the loss", r"(\Seen)")]})
    # A backup before the restore (cron's, or the admin's) would be the latest snapshot, holding
    # none of the lost mail: refused in one line until the restore.
    early = _cli(config, "now")
    assert early.returncode == 2 and early.stderr.count("\n") == 1, (early.stdout, early.stderr)
    assert "holds no copy of the mailboxes" in early.stderr and "restore first" in early.stderr, early.stderr

    said = restore(backup_control(lab))
    assert said.startswith("restored 2 mailboxes from snapshot latest"), said
    after = {user: mail_of(lab, user) for user in MAIL}
    before["alice"]["INBOX"]["alice after the loss"] = frozenset({"\\Seen"})
    assert after == before

    # The same restore again adds nothing: messages are matched, never copied twice.
    restore(backup_control(lab), snapshot)
    assert {user: mail_of(lab, user) for user in MAIL} == before


def test_restoring_one_user_leaves_the_other_untouched(backup_lab):
    lab, config, _ = backup_lab
    _append(lab, "bob", {"INBOX": [("bob new since the backup", None)]})
    with imap.mailbox(lab, "bob", lab.password("bob")) as box:
        box.flag(box.uids("bob read")[0], "\\Flagged")
    with imap.mailbox(lab, "alice", lab.password("alice")) as box:
        box.flag(box.uids("alice unread")[0], "\\Deleted")
        box._client.expunge()
    bob = mail_of(lab, "bob")
    alice = mail_of(lab, "alice")
    assert "alice unread" not in alice["INBOX"] and "\\Flagged" in bob["INBOX"]["bob read"]

    result = _cli(config, "restore", "--user", "alice")
    assert result.returncode == 0, result.stderr
    assert "restored 1 mailboxes" in result.stdout
    assert mail_of(lab, "bob") == bob, "another user's mailbox changed"
    restored = mail_of(lab, "alice")
    assert restored["INBOX"]["alice unread"] == frozenset()
    assert restored["INBOX"]["alice after the loss"] == frozenset({"\\Seen"}), "mail since the snapshot was lost"


def test_status_shows_each_backup_and_the_last_ones_age(backup_lab):
    lab, config, _ = backup_lab
    result = _cli(config, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{lab.plan.site.primary.mx_name}: 1 backup in s3:http://")
    assert " UTC  " in lines[1] and "kB" in lines[1]
    assert re.fullmatch(r"last backup \d min ago \(backup.everyHours 24\)", lines[-1]), lines[-1]


def test_doctor_finds_the_last_backup_within_the_schedule(backup_lab):
    lab, _, _ = backup_lab
    view = SiteView(lab.plan.site, STACK, dns.resolver.Resolver(configure=False),
                    lambda host: lab_control(lab.holder(host.name).pid, timeout=60), lambda: None,  # type: ignore[arg-type, return-value]
                    None, datetime.now(timezone.utc), 30, in_lab=True)
    (check,) = backup_checks(view)
    status, seen, fix = check.run()
    assert status is Status.PASS, (seen, fix)
    assert seen.startswith("the last backup (") and "backup.everyHours is 24" in seen


def test_a_restore_brings_back_mail_and_a_folder_deleted_since_the_snapshot_and_keeps_new_mail(backup_lab):
    # A fresh snapshot of the live mailboxes: they share their folders' and messages' GUIDs and
    # UIDs, as on a site whose volume was never lost, where Dovecot's log of a deletion is what
    # dsync goes by.
    lab, config, _ = backup_lab
    # What a restore cut short left goes with the next backup, not at the next restore.
    restored = lab.volume(lab.plan.site.primary.name) / "backup/restore"
    left = restored / "var/mailsite/backup/mail/alice/Maildir/cur/1.left"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"x" * 4096)
    backup_now(backup_control(lab))
    assert not restored.exists(), "a cut-short restore's files are still on the volume"
    before = mail_of(lab, "alice")
    bob = mail_of(lab, "bob")
    with imap.mailbox(lab, "alice", lab.password("alice")) as box:
        box.flag(box.uids("alice read and flagged")[0], "\\Deleted")
        box._client.expunge()
        box._client.delete("Projects")
    _append(lab, "alice", {"INBOX": [("alice after the deletion", None)]})
    assert "alice read and flagged" not in mail_of(lab, "alice")["INBOX"]

    result = _cli(config, "restore")
    assert result.returncode == 0, result.stderr
    before["INBOX"]["alice after the deletion"] = frozenset()
    assert mail_of(lab, "alice") == before, "the deleted message or folder did not come back, or new mail went"
    assert mail_of(lab, "bob") == bob
    counts = _counts(lab, "alice")
    assert counts == {folder: len(messages) for folder, messages in before.items()}, "a message came back twice"
    _cli(config, "restore")
    assert mail_of(lab, "alice") == before and _counts(lab, "alice") == counts, "a second restore changed the mailbox"


def test_a_whole_site_restore_brings_back_every_user_past_a_home_whose_user_has_gone(backup_lab):
    # A home left on the volume by a user since removed from the stack is backed up as it is;
    # named first, it must not stop the users after it from coming back.
    lab, config, _ = backup_lab
    gone = lab.mailboxes(lab.plan.site.primary.name) / "aaron"
    bob = lab.mailboxes(lab.plan.site.primary.name) / "bob"
    for part in ("cur", "new", "tmp"):
        (gone / "Maildir" / part).mkdir(parents=True, exist_ok=True)
    (gone / "Maildir/cur/1.aaron:2,S").write_bytes(_message("aaron kept"))
    shutil.chown(gone, bob.stat().st_uid, bob.stat().st_gid)
    try:
        backup_now(backup_control(lab))
        before = mail_of(lab, "bob")
        with imap.mailbox(lab, "bob", lab.password("bob")) as box:
            box.select("Archive")
            box.flag(box.uids("bob archived unread")[0], "\\Deleted")
            box._client.expunge()
        result = _cli(config, "restore")
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "restored 2 mailboxes" in result.stdout, result.stdout
        assert mail_of(lab, "bob") == before
    finally:
        shutil.rmtree(gone)


def test_a_wrong_repository_password_is_one_line(backup_lab):
    lab, config, _ = backup_lab
    password = lab.path_on(lab.plan.site.primary.name, PASSWORD_FILE, tree=BACKUP_TREE)
    right = password.read_text()
    password.write_text("not the repository's password\n")
    try:
        for verb in ("status", "now", "restore"):
            result = _cli(config, verb)
            assert result.returncode == 2, (verb, result.stdout, result.stderr)
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
            assert result.stderr.startswith("error: the repository password"), result.stderr
            assert right.strip() not in result.stdout + result.stderr
    finally:
        password.write_text(right)


def test_a_missing_bucket_is_one_line(backup_lab):
    lab, config, endpoint = backup_lab
    _s3(lab, endpoint, f"[s3.delete_object(Bucket={BUCKET!r}, Key=o['Key']) for o in "
                       f"s3.list_objects_v2(Bucket={BUCKET!r}).get('Contents', [])]; s3.delete_bucket(Bucket={BUCKET!r})")
    started = time.monotonic()
    for verb in ("status", "now"):
        result = _cli(config, verb)
        assert result.returncode == 2, (verb, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"the bucket of s3:{endpoint}/{BUCKET}/lab does not exist" in result.stderr, result.stderr
    assert time.monotonic() - started < 60, "restic's retries were not cut short"
