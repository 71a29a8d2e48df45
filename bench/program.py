"""Program evaluation under Pulumi's mocks: the example site, then sites of growing size.

Prints seconds per evaluation and seconds per host; the cost should grow linearly with hosts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sites import example_settings, sized_settings  # noqa: E402
from tests.test_program import evaluate, inline_secrets  # noqa: E402


def timed(settings: dict, rounds: int) -> float:
    evaluate(settings)  # warm: imports, templates, packer's version
    start = time.perf_counter()
    for _ in range(rounds):
        evaluate(settings)
    return (time.perf_counter() - start) / rounds


def main() -> None:
    example = timed(inline_secrets(example_settings()), rounds=5)
    print(f"example site (3 hosts): {example:.3f} s, {example / 3 * 1000:.1f} ms per host")
    for hosts in (10, 25, 50):
        seconds = timed(inline_secrets(sized_settings(hosts)), rounds=2)
        print(f"{hosts}-host site: {seconds:.3f} s, {seconds / hosts * 1000:.1f} ms per host")


if __name__ == "__main__":
    main()
