"""Figure: a backup and a restore of 1,000 messages in the lab, on the primary's own job (doveadm,
restic 0.18) against the lab's S3 endpoint (moto_server): the first backup of the mailbox, a
second with nothing new (what each scheduled run costs), and the restore onto a new primary
whose volume was lost, until every message is back over IMAPS. Target: restore under 30 s."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.backup import backup_now, restore, snapshots  # noqa: E402
from mailsite.lab import imap  # noqa: E402
from mailsite.lab.backup import backup_control  # noqa: E402
from tests.test_backup_lab import lab_with_s3  # noqa: E402

MESSAGES = 1000
FOLDERS = ("INBOX", "Archive", "Projects", "Lists")
TARGET = 30.0


def _message(number: int) -> bytes:
    # A few kilobytes each, as mail with a quoted thread is.
    body = "".join(f"> line {line} of message {number}, quoted from the thread before it\r\n" for line in range(40))
    return (f"From: sender{number % 37}@example.net\r\nTo: alice@example.org\r\nSubject: bench {number}\r\n"
            f"Message-ID: <bench.{number}@backup.bench>\r\n\r\n{body}").encode()


def _count(lab, user: str) -> int:
    with imap.mailbox(lab, user, lab.password(user)) as box:
        total = 0
        for folder in FOLDERS:
            total += box.select(folder)
        return total


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="mailsite-bench-backup-"))
    try:
        with lab_with_s3(directory) as (lab, _, _):
            primary, user = lab.plan.site.primary.name, "alice"
            started = time.monotonic()
            with imap.mailbox(lab, user, lab.password(user)) as box:
                client = box._client  # imaplib's APPEND: the fastest way to fill a mailbox
                for folder in FOLDERS[1:]:
                    client.create(folder)
                for number in range(MESSAGES):
                    flags = r"(\Seen)" if number % 3 else r"(\Seen \Flagged)"
                    client.append(FOLDERS[number % len(FOLDERS)], flags, None, _message(number))
            filled = time.monotonic() - started

            started = time.monotonic()
            backup_now(backup_control(lab))
            first = time.monotonic() - started
            started = time.monotonic()
            backup_now(backup_control(lab))
            again = time.monotonic() - started
            size = snapshots(backup_control(lab))[-1].size or 0

            shutil.rmtree(lab.volume(primary))
            lab.replace_host(primary)
            started = time.monotonic()
            said = restore(backup_control(lab))
            restored = time.monotonic() - started
            back = _count(lab, user)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert back == MESSAGES, f"{back} of {MESSAGES} messages back after the restore ({said})"
    print(f"{MESSAGES} messages ({size / 1e6:.1f} MB in {len(FOLDERS)} folders, filled over IMAPS in {filled:.1f} s): "
          f"first backup {first:.1f} s, a backup with nothing new {again:.1f} s, restore onto a new primary "
          f"{restored:.1f} s, all {back} back over IMAPS (target restore < {TARGET:.0f} s: "
          f"{'met' if restored < TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
