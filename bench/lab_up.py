"""Figure: how long the lab takes to come up (namespaces, rendering, the users' bcrypt hashes,
every daemon answering, Dovecot on the primary from its own root included, every bgp session
Established with the routes in) and to go down. Target: up in under 2 s."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.daemonroot import daemon_root  # noqa: E402
from mailsite.lab.lab import Lab  # noqa: E402

RUNS = 5


def main() -> None:
    ups, downs = [], []
    for _ in range(RUNS):
        started = time.monotonic()
        lab = Lab.up(ROOT / "Pulumi.example.yaml")
        ups.append(time.monotonic() - started)
        started = time.monotonic()
        left = lab.down()
        downs.append(time.monotonic() - started)
        assert not left, left
    dovecot = daemon_root("dovecot").describe(["dovecot-core"])
    print(f"lab up (example stack, 3 MX + 2 route servers + dns + sender; the primary's Dovecot is {dovecot}), {RUNS} runs: "
          f"median {statistics.median(ups):.2f} s, min {min(ups):.2f} s, max {max(ups):.2f} s (target < 2 s)")
    print(f"lab down: median {statistics.median(downs):.2f} s, max {max(downs):.2f} s")


if __name__ == "__main__":
    main()
