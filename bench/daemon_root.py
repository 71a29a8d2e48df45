"""Figures: each daemon root (the daemons' and Dovecot's) built from the registry (a fresh machine's
first run), the same root found again (every later run: its manifest and checksums checked), and a
configtest of the example site with the roots' parsers. Target: built once per machine; a later run
pays only the check."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite import configtest, daemonroot  # noqa: E402

RUNS = 5


def _seconds(action, *args) -> float:
    started = time.monotonic()
    action(*args)
    return time.monotonic() - started


def main() -> None:
    for name, recipe in daemonroot.ROOTS.items():
        with tempfile.TemporaryDirectory(prefix="mailsite-bench-root-") as scratch:
            cache = Path(scratch)
            built = _seconds(daemonroot.build, cache, recipe)
            size = subprocess.run(["du", "-sm", str(cache)], capture_output=True, text=True).stdout.split()[0]
            found = [_seconds(daemonroot._daemon_root.__wrapped__, cache, recipe) for _ in range(RUNS)]
        print(f"daemon root {name!r} ({recipe.origin}) built from the registry (first run on a machine): "
              f"{built:.1f} s, {size} MB")
        print(f"daemon root {name!r} found and checked (every later run), {RUNS} runs: "
              f"median {statistics.median(found) * 1000:.0f} ms, max {max(found) * 1000:.0f} ms")
    with tempfile.TemporaryDirectory(prefix="mailsite-bench-out-") as out:
        python = [sys.executable, "-m", "mailsite"]
        subprocess.run([*python, "secrets", "init", "--config", str(ROOT / "Pulumi.example.yaml")], check=True, capture_output=True)
        subprocess.run([*python, "render", "--config", str(ROOT / "Pulumi.example.yaml"), "--out", out], check=True, capture_output=True)
        checks = []
        for _ in range(RUNS):
            started = time.monotonic()
            result = subprocess.run([*python, "configtest", out], capture_output=True, text=True)
            checks.append(time.monotonic() - started)
            assert result.returncode == 0, result.stdout + result.stderr
        # What Dovecot's check adds to a configtest: doveconf -n on the primary, in its own namespace.
        doveconf = [_seconds(configtest.check_doveconf, "mx1", Path(out) / "mx1", "etc/dovecot/dovecot.conf")
                    for _ in range(RUNS)]
    print(f"configtest of the example site (3 hosts: smtpd -n, bgpd -n, sh -n, doveconf on the primary, from the "
          f"roots), {RUNS} runs: median {statistics.median(checks):.2f} s, max {max(checks):.2f} s")
    print(f"of which doveconf -n on the primary, {RUNS} runs: median {statistics.median(doveconf):.2f} s, "
          f"max {max(doveconf):.2f} s")


if __name__ == "__main__":
    main()
