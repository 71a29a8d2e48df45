"""Figure: how fast a backup (mx2) accepts a bounded burst of 1,000 messages, with the primary
up and with its smtpd down, and proof that none is lost: with the primary down every message is
in the backup's queue, then each is delivered exactly once when it returns; with it up, each is
delivered exactly once. Delivered means stored by the primary's Dovecot in the user's Maildir on
the mail volume (counted there, one file per copy). Target: 0 lost, 0 duplicated."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.lab import mail  # noqa: E402
from mailsite.lab.lab import Lab  # noqa: E402
from mailsite.lab.procs import in_network, run, wait_until  # noqa: E402

COUNT = 1000
DRAIN_TIMEOUT = 600


def _burst(lab: Lab, backup: str, to: str, marker: str) -> dict:
    argv = [sys.executable, "-m", "mailsite.lab.burst", "--server", str(lab.plan.node(backup).ipv4),
            "--to", to, "--marker", marker, "--count", str(COUNT)]
    result = run(in_network(lab.plan.internet.namespace, argv), timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _delivered_numbers(lab: Lab, marker: str) -> list[int]:
    """The burst numbers found in the primary's mailboxes (Dovecot's Maildirs), one per stored copy."""
    pattern = re.compile(rf"^Subject: {marker} (\d+)$".encode(), re.M)
    return [int(m[1]) for path in mail.stored(lab) if (m := pattern.search(_read(path)))]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # moved from new/ to cur/ meanwhile: found there next time
        return b""


def _drain(lab: Lab, marker: str, flush: str | None = None) -> tuple[float, list[int]]:
    """Wait for every message in the primary's mailbox; `flush`: retry that backup's queue meanwhile."""
    started = time.monotonic()
    done = lambda: len(_delivered_numbers(lab, marker)) >= COUNT
    if flush:
        mail.flush(lab, flush, done, DRAIN_TIMEOUT)
    else:
        wait_until(done, DRAIN_TIMEOUT, 0.5)
    seconds = time.monotonic() - started
    time.sleep(2)  # late duplicates would show now
    return seconds, _delivered_numbers(lab, marker)


def _verdict(numbers: list[int]) -> str:
    lost, duplicated = COUNT - len(set(numbers)), len(numbers) - len(set(numbers))
    return f"{len(set(numbers))} delivered, {lost} lost, {duplicated} duplicated"


def main() -> None:
    lab = Lab.up(ROOT / "Pulumi.example.yaml")
    try:
        site = lab.plan.site
        backup, primary = site.backups[0].name, site.primary.name
        to = f"{site.recipients.users[0]}@{site.domains[0]}"

        marker = f"burst-up-{uuid.uuid4().hex[:8]}"
        sent = _burst(lab, backup, to, marker)
        seconds, numbers = _drain(lab, marker)
        print(f"burst into {backup}, primary up (smtpd, Dovecot over LMTP): {sent['accepted']}/{COUNT} accepted in {sent['seconds']:.1f} s "
              f"({sent['accepted'] / sent['seconds']:.0f} msg/s, 4 connections); "
              f"{_verdict(numbers)} ({seconds:.1f} s after the burst)")

        marker = f"burst-down-{uuid.uuid4().hex[:8]}"
        lab.stop_daemon(primary, "smtpd")
        sent = _burst(lab, backup, to, marker)
        wait_until(lambda: len(mail.queue(lab, backup)) >= sent["accepted"], 60, 0.5)
        queued = len(mail.queue(lab, backup))
        lab.start_daemon(primary, "smtpd")
        wait_until(lambda: lab.smtpd_listening(primary), 10)
        seconds, numbers = _drain(lab, marker, flush=backup)
        print(f"burst into {backup}, primary's smtpd down: {sent['accepted']}/{COUNT} accepted in {sent['seconds']:.1f} s "
              f"({sent['accepted'] / sent['seconds']:.0f} msg/s); {queued} in {backup}'s encrypted queue; "
              f"primary back, queue flushed: {_verdict(numbers)} ({seconds:.1f} s to drain)")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
