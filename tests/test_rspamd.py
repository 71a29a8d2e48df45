"""rspamd on the primary (issue 16.1): smtpd asks it through filter-rspamd on every listener that
takes mail from outside, it refuses from spam.rejectScore and marks from spam.junkScore, believes
the Received: headers of the site's backups alone, and its files pass the real rspamadm
configtest (trixie's rspamd 3) here and in the bake; the backups run none of it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mailsite import daemonroot
from mailsite.configtest import check_rspamd, parser_versions, rspamadm_problems
from mailsite.daemonroot import DaemonRoot, DaemonRootError
from mailsite.daemons.rspamd import FILTER, SCANNER
from mailsite.render import render_host
from mailsite.templates import RenderedFile
from mailsite.trees import write_trees
from tests.sites import addresses, example_settings, fake_secrets, refusal_lines, site_of
from tests.test_dovecot import _finish_primary, _packages

ACTIONS = "etc/rspamd/local.d/actions.conf"
RELAY = "etc/rspamd/local.d/external_relay.conf"
needs_root = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="needs root for network namespaces (CI runs it as root)")


def _trees(settings: dict | None = None) -> dict[str, dict[str, RenderedFile]]:
    site = site_of(settings or example_settings())
    secrets = fake_secrets(site)
    return {host.name: render_host(site, host, addresses(site), secrets[host.name]) for host in site.hosts}


def _ucl(text: str) -> dict[str, str]:
    """key -> value of a flat local.d file's `key = value;` lines, comments dropped."""
    return dict(re.findall(r"^\s*([a-z_]+) = (.*);$", text, re.M))


def test_rspamd_refuses_from_reject_score_and_marks_from_junk_score_and_never_greylists():
    settings = example_settings()
    settings["spam"] = {"rejectScore": 20, "junkScore": 7.5}
    actions = _ucl(_trees(settings)["mx1"][ACTIONS].text)
    assert actions == {"reject": "20", "add_header": "7.5", "greylist": "null", "rewrite_subject": "null"}
    assert _ucl(_trees()["mx1"][ACTIONS].text)["reject"] == "15"  # rspamd's own defaults: 15 and 6


@pytest.mark.parametrize("spam, words", [
    ({"rejectScore": 10, "junkScore": 10}, "mailsite:spam.junkScore = 10: not below rejectScore (10)"),
    ({"junkScore": 0}, "mailsite:spam.junkScore = 0: "),
    ({"rejectScore": True}, "mailsite:spam.rejectScore = True: "),
])
def test_a_junk_score_not_below_the_reject_score_is_one_line(spam, words):
    settings = example_settings()
    settings["spam"] = spam
    lines = refusal_lines(settings)
    assert len(lines) == 1 and lines[0].startswith(words), lines


def test_only_the_backups_addresses_are_relays_whose_received_headers_rspamd_believes():
    site = site_of(example_settings())
    relay = _trees()["mx1"][RELAY].text
    listed = re.search(r"ip_map = \[(.*)\];", relay)[1]
    expected = [str(address) for host in site.backups for address in (host.ipv4, host.ipv6) if address]
    assert "enabled = true;" in relay and 'strategy = "ip_map";' in relay
    assert listed == ", ".join(f'"{address}"' for address in expected)
    assert str(site.primary.ipv4) not in relay


def test_a_site_without_backups_believes_no_received_header():
    settings = example_settings()
    settings["hosts"] = [host for host in settings["hosts"] if host.get("role") == "primary"]
    relay = _trees(settings)["mx1"][RELAY].text
    assert "enabled = false;" in relay and "ip_map" not in relay


def test_the_primary_filters_mail_from_outside_through_rspamd_and_the_backups_run_none():
    trees = _trees()
    primary = trees["mx1"]["etc/mail/smtpd.conf"].text
    assert f'filter "rspamd" proc-exec "{FILTER} -url http://{SCANNER}"' in primary
    listeners = [line for line in primary.splitlines() if line.startswith("listen on ")]
    # Port 25, submission and smtps: what comes from outside; the local socket and lo0: the host's
    # own mail (cron's, smtpd's bounces), for rspamd to DKIM-sign.
    assert listeners[-2:] == ['listen on socket filter "rspamd"', 'listen on lo0 filter "rspamd"'], listeners
    assert [line.endswith(' filter "rspamd"') for line in listeners] == [True] * 5, listeners
    for backup in ("mx2", "mx3"):
        assert "rspamd" not in trees[backup]["etc/mail/smtpd.conf"].text
        assert not [path for path in trees[backup] if "rspamd" in path or "redis" in path], backup


def test_rspamd_and_redis_listen_on_loopback_only():
    tree = _trees()["mx1"]
    assert re.findall(r'bind_socket = "([^"]+)"', tree["etc/rspamd/local.d/worker-normal.inc"].text) == ["127.0.0.1:11333"]
    assert re.findall(r'bind_socket = "([^"]+)"', tree["etc/rspamd/local.d/worker-controller.inc"].text) == ["127.0.0.1:11334"]
    assert "enabled = false;" in tree["etc/rspamd/local.d/worker-proxy.inc"].text
    redis = tree["etc/redis/redis.conf"].text
    assert re.findall(r"^bind (.*)$", redis, re.M) == ["127.0.0.1"] and "protected-mode yes" in redis
    assert 'servers = "127.0.0.1:6379";' in tree["etc/rspamd/local.d/redis.conf"].text
    assert re.findall(r"^local_addrs = (.*);$", tree["etc/rspamd/override.d/options.inc"].text, re.M) == ["[127.0.0.0/8, ::1]"]


def test_the_primary_installs_rspamd_redis_the_filter_and_pigeonhole_pinned_and_starts_redis_first():
    settings = example_settings()
    settings.setdefault("images", {})["packages"] = {"rspamd": "rspamd-3.13.1p0", "redis": "redis-6.2.20p1"}
    trees = _trees(settings)
    assert _packages(trees["mx1"])["package"] == ["redis-6.2.20p1", "rspamd-3.13.1p0", "opensmtpd-filter-rspamd-0.1.8",
                                                  "dovecot-2.3.21.1p1v0", "dovecot-pigeonhole-0.5.21.1v1"]
    assert re.search(r'^pkg_scripts="redis rspamd dovecot"$', trees["mx1"]["etc/rc.conf.local"].text, re.M)


@pytest.mark.parametrize("field, value, words", [
    ("rspamd", "rspamd-2.7p1", "rspamd 2.7, while the site's local.d files are written for rspamd 3"),
    ("rspamd", "rspamd", "not a rspamd package's name"),
    ("opensmtpdFilterRspamd", "filter-rspamd-0.1.8", "not a opensmtpd-filter-rspamd package's name"),
    ("dovecotPigeonhole", "dovecot-pigeonhole-2.4.1", "dovecot-pigeonhole 2.4.1, while Dovecot 2.3 loads Pigeonhole 0.5"),
    ("redis", "redis-6.2.20 rspamd", "not a redis package's name"),
])
def test_a_package_pin_of_another_name_or_major_is_one_line(field, value, words):
    settings = example_settings()
    settings.setdefault("images", {})["packages"] = {field: value}
    lines = refusal_lines(settings)
    assert len(lines) == 1 and lines[0].startswith(f"mailsite:images.packages.{field} = {value}: "), lines
    assert words in lines[0]


# rspamadm configtest --strict's output on a schema error (its schema shortened) and its tally.
_SCHEMA_ERROR = 'config schema error: field "rules": map value expected { "strategy" = "authenticated" }'


def test_rspamadm_says_a_parse_error_with_its_file_and_line_and_a_schema_error_alone():
    output = ("failed to load config: ucl parser error: error while parsing /etc/rspamd/local.d/actions.conf: line: 4, "
              "column: 9 - 'string value must not be empty', character: ';'\nsyntax BAD\n")
    [problem] = rspamadm_problems("mx1", output)
    assert str(problem) == "mx1: etc/rspamd/local.d/actions.conf:4: 'string value must not be empty', character: ';'"
    assert [str(p) for p in rspamadm_problems("mx1", f"{_SCHEMA_ERROR}\n1 errors found\nsyntax BAD\n")] == [
        f"mx1: etc/rspamd/local.d: {_SCHEMA_ERROR}"]
    assert rspamadm_problems("mx1", "syntax OK\n") == []


def _primary_tree_on_disk(tmp_path: Path, changes: dict[str, str] | None = None) -> Path:
    tree = dict(_trees()["mx1"])
    for path, text in (changes or {}).items():
        tree[path] = RenderedFile(text)
    write_trees(tmp_path, {"mx1": tree})
    return tmp_path / "mx1"


@needs_root
def test_the_rendered_rspamd_files_pass_the_real_rspamadm_configtest(tmp_path):
    tree = _primary_tree_on_disk(tmp_path)
    assert check_rspamd("mx1", tree, ACTIONS) == []
    assert [line for line in parser_versions(["rspamadm configtest"]) if line.startswith("rspamadm configtest: rspamd 3.")]


@needs_root
def test_a_broken_local_d_file_is_refused_on_its_line(tmp_path):
    tree = _primary_tree_on_disk(tmp_path, {ACTIONS: "reject = 15;\nadd_header = ;\n"})
    [problem] = check_rspamd("mx1", tree, ACTIONS)
    assert (problem.file, problem.line) == (ACTIONS, 2) and "must not be empty" in problem.message


@needs_root
def test_a_module_setting_rspamd_does_not_know_is_refused(tmp_path):
    # A strategy external_relay lacks: rspamd only logs it, and carries on without the rule,
    # unless strict: then the check fails, as a backup's relayed mail would be scored on the backup.
    relay = _trees()["mx1"][RELAY].text.replace('strategy = "ip_map"', 'strategy = "ipmap"')
    problems = check_rspamd("mx1", _primary_tree_on_disk(tmp_path, {RELAY: relay}), ACTIONS)
    assert len(problems) == 1 and problems[0].message.startswith('config schema error: field "rules"'), problems


def test_the_bake_checks_rspamd_with_rspamadm_after_the_other_parsers(tmp_path):
    root, result = _finish_primary(tmp_path, _trees()["mx1"])
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (root / "calls.log").read_text().splitlines()
    assert calls[-3:] == ["rspamadm configtest --strict", "httpd -n", "acme-client -n mx1.example.org"]
    assert result.stdout.strip().endswith("doveconf -n, rspamadm configtest, httpd -n, acme-client -n")


def test_the_bake_fails_on_rspamadms_complaint_but_not_on_fuzzy_servers_it_cannot_resolve(tmp_path):
    unresolved = ("address resolution for fuzzy1.rspamd.com failed: Name or service not known\n"
                  "cannot read servers definition\n3 errors found\nsyntax BAD\n")
    (tmp_path / "dns").mkdir()
    root, result = _finish_primary(tmp_path / "dns", _trees()["mx1"], rspamadm_says=unresolved)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "schema").mkdir()
    root, result = _finish_primary(tmp_path / "schema", _trees()["mx1"], rspamadm_says=unresolved + _SCHEMA_ERROR + "\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"mailsite: rspamadm configtest refused the site's rspamd files: {_SCHEMA_ERROR};")


def test_a_daemons_root_whose_rspamd_is_another_major_than_openbsds_is_refused():
    versions = {"opensmtpd": "7.6.0p1-1", "openbgpd": "8.8-1", "rspamd": "4.0.0-1", "opensmtpd-filter-rspamd": "0.1.8-1"}
    with pytest.raises(DaemonRootError) as refused:
        daemonroot._check_majors(DaemonRoot(Path("/nonexistent"), versions))
    assert "has rspamd 4.0.0-1, but the checks rely on major 3 (what OpenBSD 7.8 ships)" in str(refused.value)


def test_the_verdicts_a_message_brings_are_removed_whoever_sent_it():
    """milter_headers skips a "local" sender's message unless told not to: a verdict it brought
    would then reach the mailbox (rspamd's remove-headers routine, checked by hand with the
    root's smtpd, filter-rspamd and rspamd; the lab's relayed-mail scenario checks it end to end)."""
    conf = _trees()["mx1"]["etc/rspamd/local.d/milter_headers.conf"].text
    assert _ucl(conf)["skip_local"] == "false" and _ucl(conf)["remove_upstream_spam_flag"] == "true"
    assert set(re.findall(r'^\s+"(X-[A-Za-z-]+)" = 0;$', conf, re.M)) == {"X-Spam-Flag", "X-Spam-Score", "X-Spam-Status",
                                                                          "X-Spam-Level"}
