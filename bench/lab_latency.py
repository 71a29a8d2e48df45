"""Figure: end-to-end latency of one message from the internet node through a backup (mx2) to
the primary, until the user sees it over IMAPS: from swaks's start until a logged-in IMAP
session of the user's (on the internet node, certificate verified) finds it in the INBOX.
Target: median under 1.5 s."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.lab import imap, mail  # noqa: E402
from mailsite.lab.lab import Lab  # noqa: E402
from mailsite.lab.procs import wait_until  # noqa: E402

RUNS = 20
TARGET = 1.5


def main() -> None:
    lab = Lab.up(ROOT / "Pulumi.example.yaml")
    try:
        site = lab.plan.site
        backup, user = site.backups[0].name, site.recipients.users[0]
        to = f"{user}@{site.domains[0]}"
        latencies, sessions = [], []
        # One session, logged in before the clock starts, as a mail client stays connected.
        with imap.mailbox(lab, user, lab.password(user)) as box:
            def visible(marker: str) -> bool:
                box.noop()
                return bool(box.uids(marker))

            for _ in range(RUNS):
                marker = f"latency-{uuid.uuid4().hex}"
                started = time.monotonic()
                sent = mail.send(lab, backup, to, marker)
                sessions.append(time.monotonic() - started)
                assert sent.accepted, sent.transcript
                assert wait_until(partial(visible, marker), 30, 0.01), "not in the INBOX in 30 s"
                latencies.append(time.monotonic() - started)
    finally:
        lab.down()
    median = statistics.median(latencies)
    print(f"end-to-end latency internet -> {backup} -> primary -> Dovecot -> {user}'s INBOX over IMAPS, {RUNS} messages: "
          f"median {median * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms (target < {TARGET * 1000:.0f} ms: "
          f"{'met' if median < TARGET else 'NOT met'}; of which the swaks session to {backup}: median "
          f"{statistics.median(sessions) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
