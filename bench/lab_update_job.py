"""Figure: the rendered bgp list update job on a 200,000-prefix `bgpctl -j` answer (the size the
article sizes pf's table-entries for). bgpctl is replayed from a file shaped like the answer
captured from real bgpd (tests/fixtures); the job runs under a private, writable overlay of /etc
(it writes /etc/mail) as root. Target: under 2 s."""

from __future__ import annotations

import ipaddress
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailsite.config import load_site_file  # noqa: E402
from mailsite.daemons.bgp_spamd_update import render_bgp_spamd_update  # noqa: E402

PREFIXES = 200_000
BYPASS = 1_000
RUNS = 3
FIXTURE = ROOT / "tests/fixtures/bgpctl-show-rib-community.json"
SUMMARY = ROOT / "tests/fixtures/bgpctl-show-summary.json"


def _answer(count: int, first: str) -> str:
    entry = json.loads(FIXTURE.read_text())["rib"][0]
    start = int(ipaddress.IPv4Address(first))
    rib = [dict(entry, prefix=f"{ipaddress.IPv4Address(start + n)}/32") for n in range(count)]
    return json.dumps({"rib": rib}, indent="\t") + "\n"


def main() -> None:
    site = load_site_file(ROOT / "Pulumi.example.yaml")
    bgp = site.bgp_spamd
    with tempfile.TemporaryDirectory(prefix="mailsite-bench-") as scratch:
        work = Path(scratch)
        job = work / "bgp-spamd-update"
        job.write_text(render_bgp_spamd_update(site))
        answers = {bgp.blacklist_community: _answer(PREFIXES, "100.64.0.0"), bgp.bypass_community: _answer(BYPASS, "198.18.0.0")}
        for community, answer in answers.items():
            (work / f"rib-{community.replace(':', '_')}.json").write_text(answer)
        size = len(answers[bgp.blacklist_community]) / 1e6
        # Replays the recorded answers: both route servers Established, then the community asked ($5).
        replay = work / "bgpctl"
        replay.write_text(f'#!/bin/sh\n[ "$3" = summary ] && exec cat "{SUMMARY}"\n'
                          f'exec cat "{work}/rib-$(echo "$5" | tr : _).json"\n')
        replay.chmod(0o755)
        seconds = []
        for run in range(RUNS):
            upper, overlay_work = work / f"upper{run}", work / f"work{run}"
            (upper / "mail").mkdir(parents=True)
            overlay_work.mkdir()
            script = (f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={overlay_work} /etc && "
                      f"BGPCTL={replay} SPAMD_SETUP=true exec sh {job}")
            started = time.monotonic()
            result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                    capture_output=True, text=True, timeout=120)
            seconds.append(time.monotonic() - started)
            assert result.returncode == 0, result.stderr
            listed = (upper / "mail/bgp-spamd.black").read_text().count("\n")
            assert listed == PREFIXES, f"{listed} addresses listed, want {PREFIXES}"
    print(f"bgp list update job, {PREFIXES:,} blacklist + {BYPASS:,} bypass prefixes ({size:.0f} MB of bgpctl -j), "
          f"{RUNS} runs: median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
