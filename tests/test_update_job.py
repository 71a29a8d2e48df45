"""The bgp list update job, run by /bin/sh on an answer captured from real bgpctl -j.

The lab runs it against live bgpd sessions; here it meets the edge cases of the JSON itself.
The job writes /etc/mail, which Debian lacks: it runs under a private, writable overlay of /etc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mailsite.daemons.bgp_spamd_update import render_bgp_spamd_update

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "bgpctl-show-rib-community.json"
# `bgpctl -j show summary` from OpenBGPD 7.7 in the lab: both route servers Established, then
# both Idle once the route servers' bgpd stopped.
SUMMARY = FIXTURES / "bgpctl-show-summary.json"
SUMMARY_IDLE = FIXTURES / "bgpctl-show-summary-idle.json"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for a private mount namespace (CI runs it as root)"
)


def _rib(*prefixes: str) -> str:
    """A `bgpctl -j show rib` answer shaped like the captured one, for other prefixes."""
    entry = json.loads(FIXTURE.read_text())["rib"][0]
    if not prefixes:
        return "{}\n"  # bgpctl's answer when nothing matches
    return json.dumps({"rib": [dict(entry, prefix=p) for p in prefixes]}, indent="\t") + "\n"


# OpenBSD runs the job with its ksh as /bin/sh and its awk, the one true awk: mksh and
# original-awk (Makefile DEBS) are their nearest kin here. Debian's sh and awk are dash and mawk.
OPENBSD_LIKE = ("mksh", "original-awk")


def replay_bgpctl(tmp_path: Path, fail: bool = False) -> Path:
    """Stands in for bgpctl only to replay recorded answers; the lab runs the job on live bgpd."""
    replay = tmp_path / "bgpctl"
    replay.write_text(
        "#!/bin/sh\n"
        + ("exit 1\n" if fail else "")
        + f'[ "$3" = summary ] && exec cat "{tmp_path}/summary.json"\n'
        + f'exec cat "{tmp_path}/rib-$(echo "$5" | tr : _).json"\n'
    )
    replay.chmod(0o755)
    return replay


def in_etc_overlay(tmp_path: Path, commands: str, awk: str | None = None, timeout: int = 60) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs `commands` where /etc is a private, writable overlay holding the previous black list
    (192.0.2.99); returns the result and the overlay's /etc/mail. With `awk`, /usr/bin/awk is it."""
    upper, work = tmp_path / "upper", tmp_path / "work"
    (upper / "mail").mkdir(parents=True)
    work.mkdir()
    (upper / "mail/bgp-spamd.black").write_text("192.0.2.99\n")
    script = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && "
    if awk:  # /usr/bin/awk points through /etc/alternatives, now in the overlay
        script += f"ln -sf {shutil.which(awk)} /etc/alternatives/awk && "
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script + commands],
                            capture_output=True, text=True, timeout=timeout)
    return result, upper / "mail"


def run_job(tmp_path: Path, example_site, answers: dict[str, str], fail: bool = False,
            summary: str | None = None, shell: tuple[str, str | None] = ("sh", None),
            replay: Path | None = None, seconds: int = 300) -> tuple[subprocess.CompletedProcess, Path]:
    job = tmp_path / "bgp-spamd-update"
    job.write_text(render_bgp_spamd_update(example_site))
    for community, answer in answers.items():
        (tmp_path / f"rib-{community.replace(':', '_')}.json").write_text(answer)
    (tmp_path / "summary.json").write_text(SUMMARY.read_text() if summary is None else summary)
    replay = replay or replay_bgpctl(tmp_path, fail)
    sh, awk = shell
    return in_etc_overlay(tmp_path, f"BGPCTL={replay} BGPCTL_SECONDS={seconds} SPAMD_SETUP=true exec {sh} {job}", awk)


SHELLS = pytest.mark.parametrize("shell", [("sh", None), OPENBSD_LIKE], ids=["dash+mawk", "mksh+original-awk"])


@SHELLS
def test_job_extracts_black_and_bypass_addresses(tmp_path, example_site, shell):
    answers = {
        "65066:666": _rib("198.51.100.5/32", "198.51.100.6/32", "198.51.100.5/32"),
        "65066:42": FIXTURE.read_text().replace("198.51.100.5/32", "203.0.113.7/32"),
    }
    result, mail = run_job(tmp_path, example_site, answers, shell=shell)
    assert result.returncode == 0, result.stderr
    # Each address once (two route servers send the same /32), a /32 as a bare address.
    assert (mail / "bgp-spamd.black").read_text() == "198.51.100.5\n198.51.100.6\n"
    assert (mail / "bgp-spamd.bypass").read_text() == "203.0.113.7\n"


def test_job_refuses_prefixes_that_are_not_host_routes(tmp_path, example_site):
    """A network tagged as listed (bgpd.conf's /32 filter lost, say) would list every sender in
    it: the job writes only IPv4 host routes and says what it refused."""
    wide = ("0.0.0.0/0", "198.51.100.0/24", "203.0.113.0/28", "2001:db8::1/128")
    answers = {"65066:666": _rib("198.51.100.5/32", *wide), "65066:42": _rib("203.0.113.0/24", "203.0.113.7/32")}
    result, mail = run_job(tmp_path, example_site, answers)
    assert result.returncode == 0, result.stderr
    assert (mail / "bgp-spamd.black").read_text() == "198.51.100.5\n"
    assert (mail / "bgp-spamd.bypass").read_text() == "203.0.113.7\n"
    assert "refused 5 prefixes that are not IPv4 host routes" in result.stderr


def test_empty_answer_empties_the_list(tmp_path, example_site):
    # Sessions up and nothing listed: the route servers withdrew everything, and so does spamd.
    result, mail = run_job(tmp_path, example_site, {"65066:666": _rib(), "65066:42": _rib()})
    assert result.returncode == 0, result.stderr
    assert (mail / "bgp-spamd.black").read_text() == ""


def test_no_established_session_keeps_the_previous_lists(tmp_path, example_site):
    """Route servers unreachable: bgpd holds no routes, and emptied lists would let every listed
    sender through. The job fails and leaves the lists alone."""
    answers = {"65066:666": _rib(), "65066:42": _rib()}
    result, mail = run_job(tmp_path, example_site, answers, summary=SUMMARY_IDLE.read_text())
    assert result.returncode == 1
    assert "no session with a route server is Established" in result.stderr
    assert (mail / "bgp-spamd.black").read_text() == "192.0.2.99\n"
    assert not (mail / "bgp-spamd.bypass").exists()


def test_only_route_server_sessions_count(tmp_path, example_site):
    """Vultr's own BGP session being up says nothing about the lists."""
    summary = json.loads(SUMMARY_IDLE.read_text())
    vultr = dict(summary["neighbors"][0], description="Vultr", group="vultr", remote_addr="169.254.169.254", state="Established")
    summary["neighbors"].append(vultr)
    result, mail = run_job(tmp_path, example_site, {"65066:666": _rib(), "65066:42": _rib()}, summary=json.dumps(summary, indent="\t"))
    assert result.returncode == 1
    assert (mail / "bgp-spamd.black").read_text() == "192.0.2.99\n"


def test_one_established_session_is_enough(tmp_path, example_site):
    summary = SUMMARY_IDLE.read_text().replace('"Idle"', '"Established"', 1)
    result, mail = run_job(tmp_path, example_site, {"65066:666": _rib("198.51.100.5/32"), "65066:42": _rib()}, summary=summary)
    assert result.returncode == 0, result.stderr
    assert (mail / "bgp-spamd.black").read_text() == "198.51.100.5\n"


def test_compact_summary_is_read_too(example_site):
    """bgpctl may print its JSON on one line: the session count does not depend on layout."""
    compact = json.dumps(json.loads(SUMMARY.read_text()))
    job = render_bgp_spamd_update(example_site)
    script = job.split("\nsessions_up()")[0] + f"\nprintf '%s' '{compact}' > \"$work/s.json\"\nestablished < \"$work/s.json\"\n"
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "2", result.stderr


def test_failed_bgpctl_keeps_the_previous_list(tmp_path, example_site):
    result, mail = run_job(tmp_path, example_site, {}, fail=True)
    assert result.returncode != 0
    assert (mail / "bgp-spamd.black").read_text() == "192.0.2.99\n"
    assert not (mail / "bgp-spamd.bypass").exists()


def test_job_runs_spamd_setup_from_libexec(example_site):
    # OpenBSD installs spamd-setup in /usr/libexec, outside any PATH the job sets.
    assert 'SPAMD_SETUP="${SPAMD_SETUP:-/usr/libexec/spamd-setup}"' in render_bgp_spamd_update(example_site)


def test_job_passes_shellcheck(tmp_path, example_site):
    """OpenBSD runs it with /bin/sh (ksh): no bashisms, every expansion quoted."""
    job = tmp_path / "bgp-spamd-update"
    job.write_text(render_bgp_spamd_update(example_site))
    result = subprocess.run(["shellcheck", "-s", "sh", str(job)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@SHELLS
def test_addresses_that_break_spamd_setup_never_reach_it(tmp_path, example_site, shell):
    """spamd-setup (libexec/spamd-setup/spamd-setup.c) ends a list at its first 0.0.0.0, and
    makes 255.255.255.255 a range that wraps to 0: either one, tagged by a wrong or hostile route
    server, silently drops every other address of that list, so spammers pass or the bypass
    list is lost. No mail comes from 0/8, 127/8 or 224/3, and bgpctl never writes leading zeros."""
    never = ("0.0.0.0/32", "255.255.255.255/32", "0.1.2.3/32", "127.0.0.2/32", "224.0.0.1/32",
             "240.0.0.1/32", "010.0.0.1/32", "256.1.1.1/32", "1.2.3.4/32\n5.6.7.0/24")
    answers = {"65066:666": _rib("198.51.100.5/32", *never, "10.1.2.3/32"),
               "65066:42": _rib("255.255.255.255/32", "203.0.113.7/32", "0.0.0.0/32")}
    result, mail = run_job(tmp_path, example_site, answers, shell=shell)
    assert result.returncode == 0, result.stderr
    # Private addresses stay: the lab's and a site's own senders may be in one.
    assert (mail / "bgp-spamd.black").read_text() == "198.51.100.5\n10.1.2.3\n"
    assert (mail / "bgp-spamd.bypass").read_text() == "203.0.113.7\n"
    assert "refused 11 prefixes" in result.stderr


def _slow_bgpctl(tmp_path: Path, partial: str) -> Path:
    """bgpctl that answers show summary, and for show rib prints `partial` and then hangs, as
    it does when bgpd stops answering mid-answer."""
    replay = tmp_path / "bgpctl"
    replay.write_text(f'#!/bin/sh\n[ "$3" = summary ] && exec cat "{tmp_path}/summary.json"\n'
                      f"printf '%s' '{partial}'\nexec sleep 600\n")
    replay.chmod(0o755)
    return replay


@SHELLS
def test_hung_bgpctl_is_given_up_and_the_lists_kept(tmp_path, example_site, shell):
    """A bgpd that stops answering holds bgpctl; without a time limit the job waits for good, and
    cron (crontab -s) never starts it again. Half an answer is no list either."""
    half = '{"rib": [{"prefix": "198.51.100.5/32", "aspath": "65066"}, {"prefix": "198.51'
    started = time.monotonic()
    result, mail = run_job(tmp_path, example_site, {}, shell=shell, replay=_slow_bgpctl(tmp_path, half), seconds=2)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert "reading the routes with community 65066:666 failed: spamd's lists kept as they were" in result.stderr
    assert (mail / "bgp-spamd.black").read_text() == "192.0.2.99\n"
    assert sorted(p.name for p in mail.iterdir()) == ["bgp-spamd.black"]  # nothing half-written left


def test_failed_rib_read_keeps_the_lists_and_says_so(tmp_path, example_site):
    """bgpd restarting between show summary and show rib: bgpctl fails after the sessions were
    checked. The lists stay, and the failure is said (cron mails only what a run prints)."""
    replay = tmp_path / "bgpctl"
    replay.write_text(f'#!/bin/sh\n[ "$3" = summary ] && exec cat "{tmp_path}/summary.json"\n'
                      "echo 'bgpctl: connect: /var/run/bgpd.rsock: Connection refused' >&2\nexit 1\n")
    replay.chmod(0o755)
    answers = {"65066:666": _rib("198.51.100.5/32"), "65066:42": _rib()}
    result, mail = run_job(tmp_path, example_site, answers, replay=replay)
    assert result.returncode == 1
    assert "reading the routes with community 65066:666 failed" in result.stderr
    assert (mail / "bgp-spamd.black").read_text() == "192.0.2.99\n"
    assert not (mail / "bgp-spamd.bypass").exists()


def test_runs_at_once_each_replace_whole_lists(tmp_path, example_site):
    """A run started by hand while cron's runs (crontab -s only keeps cron's own runs apart):
    each run writes its lists under its own name and renames them into place, so the list is
    always one run's whole answer, never two answers spliced."""
    job = tmp_path / "bgp-spamd-update"
    job.write_text(render_bgp_spamd_update(example_site))
    lists, runs = {}, []
    for run, second in (("a", 1), ("b", 2)):
        answers = tmp_path / run
        answers.mkdir()
        (answers / "summary.json").write_text(SUMMARY.read_text())
        lists[run] = [f"10.{second}.{i >> 8}.{i & 255}" for i in range(60000)]
        (answers / "rib-65066_666.json").write_text(_rib(*(f"{a}/32" for a in lists[run])))
        (answers / "rib-65066_42.json").write_text(_rib())
        runs.append(f"BGPCTL={replay_bgpctl(answers)} SPAMD_SETUP=true sh {job} & ")
    result, mail = in_etc_overlay(tmp_path, "".join(runs * 3) + "wait", timeout=120)
    written = (mail / "bgp-spamd.black").read_text().splitlines()
    assert written in (lists["a"], lists["b"]), f"{len(written)} lines: {written[:2]} ... {written[-2:]}; {result.stderr[-500:]}"
    assert sorted(p.name for p in mail.iterdir()) == ["bgp-spamd.black", "bgp-spamd.bypass"]
