"""The bgp list update job, run by /bin/sh on an answer captured from real bgpctl -j.

The lab runs it against live bgpd sessions; here it meets the edge cases of the JSON itself.
The job writes /etc/mail, which Debian lacks: it runs under a private, writable overlay of /etc.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mailsite.render import render_bgp_spamd_update

FIXTURE = Path(__file__).parent / "fixtures/bgpctl-show-rib-community.json"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for a private mount namespace (CI runs it as root)"
)


def _rib(*prefixes: str) -> str:
    """A `bgpctl -j show rib` answer shaped like the captured one, for other prefixes."""
    entry = json.loads(FIXTURE.read_text())["rib"][0]
    if not prefixes:
        return "{}\n"  # bgpctl's answer when nothing matches
    return json.dumps({"rib": [dict(entry, prefix=p) for p in prefixes]}, indent="\t") + "\n"


def run_job(tmp_path: Path, example_site, answers: dict[str, str], fail: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    job = tmp_path / "bgp-spamd-update"
    job.write_text(render_bgp_spamd_update(example_site))
    for community, answer in answers.items():
        (tmp_path / f"rib-{community.replace(':', '_')}.json").write_text(answer)
    # Stands in for bgpctl only to replay recorded answers; the lab runs the job on live bgpd.
    replay = tmp_path / "bgpctl"
    replay.write_text(
        "#!/bin/sh\n"
        + ("exit 1\n" if fail else "")
        + f'exec cat "{tmp_path}/rib-$(echo "$5" | tr : _).json"\n'
    )
    replay.chmod(0o755)
    upper, work = tmp_path / "upper", tmp_path / "work"
    (upper / "mail").mkdir(parents=True)
    work.mkdir()
    previous = upper / "mail/bgp-spamd.black"
    previous.write_text("192.0.2.99\n")
    script = (
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && "
        f"BGPCTL={replay} SPAMD_SETUP=true exec sh {job}"
    )
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=60)
    return result, upper / "mail"


def test_job_extracts_black_and_bypass_addresses(tmp_path, example_site):
    answers = {
        "65066:666": _rib("198.51.100.5/32", "198.51.100.6/32", "198.51.100.5/32", "203.0.113.0/28"),
        "65066:42": FIXTURE.read_text().replace("198.51.100.5/32", "203.0.113.7/32"),
    }
    result, mail = run_job(tmp_path, example_site, answers)
    assert result.returncode == 0, result.stderr
    # Each address once (two route servers send the same /32), a /32 as a bare address.
    assert (mail / "bgp-spamd.black").read_text() == "198.51.100.5\n198.51.100.6\n203.0.113.0/28\n"
    assert (mail / "bgp-spamd.bypass").read_text() == "203.0.113.7\n"


def test_empty_answer_empties_the_list(tmp_path, example_site):
    result, mail = run_job(tmp_path, example_site, {"65066:666": _rib(), "65066:42": _rib()})
    assert result.returncode == 0, result.stderr
    assert (mail / "bgp-spamd.black").read_text() == ""


def test_failed_bgpctl_keeps_the_previous_list(tmp_path, example_site):
    result, mail = run_job(tmp_path, example_site, {}, fail=True)
    assert result.returncode != 0
    assert (mail / "bgp-spamd.black").read_text() == "192.0.2.99\n"
    assert not (mail / "bgp-spamd.bypass").exists()


def test_job_runs_spamd_setup_from_libexec(example_site):
    # OpenBSD installs spamd-setup in /usr/libexec, outside any PATH the job sets.
    assert 'SPAMD_SETUP="${SPAMD_SETUP:-/usr/libexec/spamd-setup}"' in render_bgp_spamd_update(example_site)
