"""The one result type of the lab's scenarios and doctor's checks, and its two printers: the text
a mail admin reads and the JSON a monitoring system parses. Pure."""

from __future__ import annotations

import io
import json

import pytest

from mailsite.results import Result, Status, exit_status, print_result, print_results, summary_line

RESULTS = [
    Result("dns: MX records as in the stack", Status.PASS, "3 MX records, preferences 10 20 30", seconds=0.21),
    Result("certificate of mx2 valid 14 days more", Status.WARN, "expires in 9 days", "run acme-client on mx2", 1.0),
    Result("no open relay on mx3", Status.FAIL, "mx3 took someone@foreign.test", "drop the relay rule for any\n", 2.5),
]


def text(results, **kwargs) -> str:
    out = io.StringIO()
    print_results(results, file=out, **kwargs)
    return out.getvalue()


def test_text_says_status_name_seconds_and_seen_aligned_then_the_count():
    lines = text(RESULTS).splitlines()
    width = len("certificate of mx2 valid 14 days more")  # the longest name
    assert lines[0] == f"PASS  {'dns: MX records as in the stack':<{width}}    0.2 s  3 MX records, preferences 10 20 30"
    assert lines[1] == f"WARN  {'certificate of mx2 valid 14 days more'}    1.0 s  expires in 9 days"
    assert lines[-1] == "1 of 3 passed, 1 warning, 1 FAILED"


def test_the_fix_is_on_its_own_line_under_what_needs_it():
    lines = text(RESULTS).splitlines()
    assert lines[2] == "      fix: run acme-client on mx2"
    assert lines[3].startswith("FAIL  no open relay on mx3 ") and lines[4] == "      fix: drop the relay rule for any"
    assert not any("fix:" in line for line in text(RESULTS[:1]).splitlines())


def test_counts_name_only_what_happened():
    assert summary_line(RESULTS[:1]) == "1 of 1 passed"
    assert summary_line([RESULTS[1]] * 2) == "0 of 2 passed, 2 warnings"
    assert summary_line([]) == "0 of 0 passed"


def test_json_is_one_object_a_line_a_monitor_reads_back_whole():
    lines = text(RESULTS, json=True).splitlines()
    assert len(lines) == len(RESULTS)  # no count, no prose: every line parses
    objects = [json.loads(line) for line in lines]
    assert [o["status"] for o in objects] == ["PASS", "WARN", "FAIL"]
    assert objects[1] == {"name": "certificate of mx2 valid 14 days more", "status": "WARN", "seen": "expires in 9 days",
                          "fix": "run acme-client on mx2", "seconds": 1.0}
    assert [Result.from_json(o) for o in objects] == RESULTS


def test_one_result_printed_as_it_comes_in_either_form():
    out = io.StringIO()
    print_result(RESULTS[2], file=out)
    print_result(RESULTS[2], json=True, file=out)
    first, fix, last = out.getvalue().splitlines()
    assert first.startswith("FAIL  no open relay on mx3  ") and fix.startswith("      fix: ")
    assert json.loads(last)["seen"] == "mx3 took someone@foreign.test"


def test_a_warning_does_not_fail_a_run_a_failure_does():
    assert exit_status(RESULTS[:2]) == 0
    assert exit_status(RESULTS) == 1
    assert [r.ok for r in RESULTS] == [True, True, False]


HOSTILE = Result("banner of mx2: \x1b]0;owned\x07 says \x1b[2J", Status.FAIL, "mx2 said \x1b[31mred\x1b[0m\r\nand more",
                 "reply \x9b1m too", 0.5)


def test_text_shows_a_terminal_escape_never_obeys_it():
    out = text([HOSTILE, RESULTS[0]])
    assert not any(char in out for char in "\x1b\x07\x9b\r"), out
    first, fix, second, _ = out.splitlines()
    assert first.startswith("FAIL  banner of mx2: \\x1b]0;owned\\x07 says \\x1b[2J  ") and "mx2 said \\x1b[31mred" in first
    assert fix == "      fix: reply \\x9b1m too"
    # Names are aligned as printed: the escaped name sets the width, not the raw one.
    assert first.index(" 0.5 s") == second.index(" 0.2 s")


def test_json_keeps_each_object_on_one_line_whatever_its_text_holds():
    breaking = Result("unicode line breaks", Status.WARN, "a\u2028b\u2029c\x85d\ne", "f\u2028g")
    out = text([breaking, HOSTILE], json=True)
    assert out.count("\n") == 2 and len(out.splitlines()) == 2, out  # str.splitlines breaks at U+2028 too
    assert out.isascii()
    assert [Result.from_json(json.loads(line)) for line in out.splitlines()] == [breaking, HOSTILE]


def test_seconds_that_json_cannot_hold_are_refused_where_the_result_is_made():
    for seconds in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            Result("dns", Status.PASS, "ok", seconds=seconds)
    with pytest.raises(ValueError):
        Result.from_json({"name": "dns", "status": "PASS", "seen": "ok", "seconds": "NaN"})
