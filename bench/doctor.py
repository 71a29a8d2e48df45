"""Figure: `mailsite lab doctor` on the example site in the lab, the whole run as an admin meets
it (the command's start, its re-run inside the internet node, every check, the last line out),
and the checks that cost most. Target: the whole run under 5 s."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.lab.lab import Lab  # noqa: E402
from mailsite.results import Result, Status  # noqa: E402

RUNS = 5
TARGET = 5.0
SLOWEST = 5


def doctor() -> tuple[float, list[Result], int]:
    """One `lab doctor --json` run: its wall time, its results, its exit status."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mailsite", "lab", "doctor", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    results = [Result.from_json(json.loads(line)) for line in done.stdout.splitlines() if line.strip()]
    if not results:
        raise SystemExit(f"lab doctor printed no result (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return seconds, results, done.returncode


def main() -> None:
    lab = Lab.up(ROOT / "Pulumi.example.yaml")
    try:
        runs = [doctor() for _ in range(RUNS)]
    finally:
        left = lab.down()
    assert not left, left
    walls = [seconds for seconds, _, _ in runs]
    median = statistics.median(walls)
    _, results, status = runs[walls.index(max(walls))]
    failed = [result.name for result in results if result.status is Status.FAIL]
    print(f"lab doctor (example site: 3 MX, both families), {len(results)} checks, {RUNS} runs: whole run median "
          f"{median:.2f} s, min {min(walls):.2f} s, max {max(walls):.2f} s (target < {TARGET:.0f} s: "
          f"{'met' if median < TARGET else 'NOT met'}); exit {status}" + (f", FAILED: {failed}" if failed else ""))
    # Per check, the most any run took: what a slow run is made of.
    worst: dict[str, float] = {}
    for _, run_results, _ in runs:
        for result in run_results:
            worst[result.name] = max(worst.get(result.name, 0.0), result.seconds)
    print("slowest checks (most seconds in any run; they run at once, so the run is about the slowest one):")
    for name, seconds in sorted(worst.items(), key=lambda item: -item[1])[:SLOWEST]:
        print(f"  {seconds:5.1f} s  {name}")


if __name__ == "__main__":
    main()
