"""Figure: end-to-end latency of one message from the internet node through a backup (mx2) to
a mailbox on the primary: from swaks's start to the file in the maildir."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.lab import mail  # noqa: E402
from mailsite.lab.lab import Lab  # noqa: E402
from mailsite.lab.procs import wait_until  # noqa: E402

RUNS = 20


def main() -> None:
    lab = Lab.up(ROOT / "Pulumi.example.yaml")
    try:
        backup = lab.plan.site.backups[0].name
        to = f"{lab.plan.site.recipients.users[0]}@{lab.plan.site.domains[0]}"
        latencies, sessions = [], []
        for _ in range(RUNS):
            marker = f"latency-{uuid.uuid4().hex}"
            started = time.monotonic()
            sent = mail.send(lab, backup, to, marker)
            sessions.append(time.monotonic() - started)
            assert sent.accepted, sent.transcript
            assert wait_until(lambda marker=marker: mail.delivered(lab, marker), 30, 0.005), "not delivered in 30 s"
            latencies.append(time.monotonic() - started)
    finally:
        lab.down()
    print(f"end-to-end latency internet -> {backup} -> primary maildir, {RUNS} messages: "
          f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
          f"(of which the swaks session to {backup}: median {statistics.median(sessions) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
