"""Backups without the lab: the settings, the secrets, the primary's job as rendered (its shell
grammar, its schedule, its secret files), and how the admin's side reads what the job says.
The rehearsal on real daemons and a real S3 endpoint is tests/test_backup_lab.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from pydantic import SecretStr

from mailsite.backup import (
    BackupBusy, BackupRefused, Snapshot, backup_now, parse_snapshots, restore, snapshots, status_lines,
)
from mailsite.daemons.restic import CREDENTIALS, JOB, PASSWORD, schedule
from mailsite.hosts import CommandControl, ControlError
from mailsite.model import BackupSecrets
from mailsite.problems import SiteConfigError
from mailsite.render import render_host
from mailsite.secrets import backup_credentials_id, backup_password_id, host_store, init_secrets, site_secrets
from mailsite.secrets.backup import store_credentials
from tests.sites import ROOT, addresses, example_settings, fake_secrets, refusal_lines, site_of

BACKUP = {"endpointUrl": "https://ams1.vultrobjects.com", "bucket": "example-mail-backups", "prefix": "mailsite/example"}
PASSWORD_TEXT = "not-a-real-password-but-long-enough"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def _site(**backup):
    settings = example_settings()
    settings["backup"] = {**BACKUP, **backup}
    return site_of(settings)


def _tree(site, host=None):
    secrets = fake_secrets(site)
    primary = site.primary.name
    secrets[primary] = replace(secrets[primary], backup=BackupSecrets(
        SecretStr(PASSWORD_TEXT), "pw-v1", SecretStr("AKIAIOSFODNN7EXAMPLE"), SecretStr(SECRET_KEY), "cred-v1"))
    host = host or site.primary
    return render_host(site, host, addresses(site), secrets[host.name])


def test_backups_are_off_unless_a_bucket_is_set(example_site):
    assert not example_site.backup.enabled
    tree = render_host(example_site, example_site.primary, addresses(example_site), fake_secrets(example_site)[example_site.primary.name])
    assert JOB not in tree and PASSWORD not in tree and "mailsite-backup" not in tree["etc/mailsite/crontab"].text
    assert "restic" not in tree["etc/mailsite/packages"].text


@pytest.mark.parametrize("backup, words", [
    ({"bucket": "Mail_Backups"}, "not a bucket name"),
    ({"bucket": "ab"}, "not a bucket name"),
    ({"everyHours": 5}, "every 1, 2, 3, 4, 6, 8, 12 or 24 hours"),
    ({"everyHours": 36}, "every 1, 2, 3, 4, 6, 8, 12 or 24 hours"),
    ({"keepDaily": 0, "keepWeekly": 0, "keepMonthly": 0}, "every backup would be deleted"),
    ({"prefix": "../up"}, "not a prefix"),
    ({"endpointUrl": "https://x.example.org/'; rm -rf /"}, "not a URL"),
])
def test_bad_backup_settings_are_one_line_each(backup, words):
    settings = example_settings()
    settings["backup"] = {**BACKUP, **backup}
    lines = refusal_lines(settings)
    assert len(lines) == 1 and "mailsite:backup." in lines[0] and words in lines[0], lines


def test_the_primary_alone_carries_the_job_and_its_secrets_root_only():
    site = _site()
    tree = _tree(site)
    assert tree[JOB].mode == 0o755 and not tree[JOB].secret
    for path in (PASSWORD, CREDENTIALS):
        assert tree[path].secret and tree[path].mode == 0o600 and tree[path].owner == "root"
    assert tree[PASSWORD].text == PASSWORD_TEXT + "\n"
    # The job names the secrets' versions, never their values: a new password or key is a new image.
    assert "pw-v1" in tree[JOB].text and "cred-v1" in tree[JOB].text
    assert PASSWORD_TEXT not in tree[JOB].text and SECRET_KEY not in tree[JOB].text
    assert "s3:https://ams1.vultrobjects.com/example-mail-backups/mailsite/example" in tree[JOB].text
    assert "package restic-0.18.1" in tree["etc/mailsite/packages"].text
    backup = _tree(site, site.backups[0])
    assert JOB not in backup and PASSWORD not in backup and CREDENTIALS not in backup


def test_job_and_credentials_pass_sh_n_mksh_n_and_shellcheck(tmp_path):
    tree = _tree(_site(region="eu-central-1", keepWeekly=0))
    for path in (JOB, CREDENTIALS):
        script = tmp_path / os.path.basename(path)
        script.write_text(tree[path].text)
        for check in (["sh", "-n"], ["mksh", "-n"], ["shellcheck", "-s", "sh"]):
            result = subprocess.run([*check, str(script)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (path, check[0], result.stdout + result.stderr)
    job = tree[JOB].text
    assert "--keep-daily 7 --keep-monthly 12" in job and "--keep-weekly" not in job, "a 0 is left out, not passed"
    assert "AWS_DEFAULT_REGION=eu-central-1" in job


def test_credentials_file_sourced_by_sh_sets_exactly_the_stored_keys(tmp_path):
    script = tmp_path / "credentials"
    script.write_text(_tree(_site())[CREDENTIALS].text)
    shown = subprocess.run(["sh", "-c", f'. "{script}"; printf "%s\\n%s\\n" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"'],
                           capture_output=True, text=True, timeout=10, check=True)
    assert shown.stdout.splitlines() == ["AKIAIOSFODNN7EXAMPLE", SECRET_KEY]


@pytest.mark.parametrize("every, fields", [(1, ("~", "*", "*")), (6, ("~", "*/6", "*")), (24, ("~", "~", "*")),
                                           (48, ("~", "~", "*/2"))])
def test_schedule_runs_the_job_every_so_many_hours(every, fields):
    assert schedule(every) == fields
    crontab = _tree(_site(everyHours=every))["etc/mailsite/crontab"].text
    assert "\t".join([*fields, "*", "*", f"-n -s /{JOB} run"]) in crontab


@pytest.fixture
def file_backend(tmp_path):
    settings = example_settings()
    settings["backup"] = BACKUP
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    return site_of(settings), f"t{os.urandom(4).hex()}"


def test_init_makes_the_repository_password_once_and_the_keys_are_the_admins(file_backend):
    site, stack = file_backend
    created = init_secrets(site, stack, ROOT)
    assert backup_password_id(stack) in created and backup_credentials_id(stack) not in created
    assert init_secrets(site, stack, ROOT) == []
    with pytest.raises(SiteConfigError) as refused:
        site_secrets(site, stack, ROOT)
    assert str(refused.value.problems[0]).endswith("store the bucket's access key with: python -m mailsite secrets "
                                                   "backup-credentials --config <stack file>")
    store = host_store(site, ROOT)
    store_credentials(store, stack, "AKIAIOSFODNN7EXAMPLE", SECRET_KEY)
    carried = site_secrets(site, stack, ROOT)
    backup = carried[site.primary.name].backup
    assert backup is not None and backup.secret_access_key.get_secret_value() == SECRET_KEY
    assert len(backup.repository_password.get_secret_value()) >= 40
    assert all(carried[host.name].backup is None for host in site.backups)
    assert SECRET_KEY not in repr(carried)


def test_off_makes_no_backup_secret(tmp_path):
    settings = example_settings()
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    stack = f"t{os.urandom(4).hex()}"
    assert not any("/backup/" in secret_id for secret_id in init_secrets(site_of(settings), stack, ROOT))


@pytest.mark.parametrize("key_id, secret", [("AKIA EXAMPLE", SECRET_KEY), ("AKIAIOSFODNN7EXAMPLE", "it's'quoted"),
                                            ("AKIAIOSFODNN7EXAMPLE", "line\nbreak")])
def test_unusable_storage_keys_are_refused_without_showing_them(file_backend, key_id, secret):
    site, stack = file_backend
    with pytest.raises(SiteConfigError) as refused:
        store_credentials(host_store(site, ROOT), stack, key_id, secret)
    line = str(refused.value.problems[0])
    assert "nothing was stored" in line and secret not in line


def test_secrets_backup_credentials_command_stores_two_lines_of_stdin(tmp_path):
    settings = example_settings()
    settings["backup"] = BACKUP
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    config = tmp_path / "Pulumi.backuptest.yaml"
    config.write_text(yaml.safe_dump({"config": {f"mailsite:{key}": value for key, value in settings.items()}}))
    result = subprocess.run([sys.executable, "-m", "mailsite", "secrets", "backup-credentials", "--config", str(config)],
                            input=f"AKIAIOSFODNN7EXAMPLE\n{SECRET_KEY}\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert SECRET_KEY not in result.stdout + result.stderr
    stored = host_store(site_of(settings), tmp_path).read(backup_credentials_id("backuptest"))
    assert stored is not None and SECRET_KEY in stored.value.get_secret_value()


def _answering(stdout: str = "", stderr: str = "", status: int = 0) -> CommandControl:
    """A host whose job answers so: a real process, as ssh would run one."""
    script = f'printf "%s" "$0" ; printf "%s" "$1" >&2; exit {status}'
    return CommandControl(["sh", "-c", script, stdout, stderr, "--"])


SNAPSHOTS = ('[{"time":"2026-11-25T03:12:00.123456789Z","hostname":"mx1.example.org","summary":{"total_bytes_processed":'
             '2500000,"data_added":12000},"id":"d22430e16f8f76d2b75d92bf28da27c2ee84078dc94b7c50994d98f55528102c"},'
             '{"time":"2026-11-26T03:40:00Z","hostname":"mx1.example.org","id":"ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12"}]')


def test_status_lists_each_backup_with_its_time_size_and_the_last_ones_age():
    site = _site()
    found = snapshots(_answering(SNAPSHOTS))
    assert [s.short_id for s in found] == ["d22430e1", "ab12cd34"]
    lines = status_lines(site, found, datetime(2026, 11, 26, 5, 45, tzinfo=timezone.utc))
    assert lines[1] == "  2026-11-25 03:12 UTC  d22430e1  2.5 MB (+12.0 kB new)"
    assert lines[2] == "  2026-11-26 03:40 UTC  ab12cd34  size unknown"
    assert lines[-1] == "last backup 2 h 5 min ago (backup.everyHours 24)"
    late = status_lines(site, found, datetime(2026, 11, 28, 4, 0, tzinfo=timezone.utc))
    assert "overdue" in late[-1]
    assert "no backup yet" in status_lines(site, parse_snapshots("[]"), datetime.now(timezone.utc))[-1]


@pytest.mark.parametrize("what, kind", [("password", BackupRefused), ("bucket", BackupRefused),
                                        ("credentials", BackupRefused), ("volume", BackupRefused), ("space", BackupRefused), ("user", BackupRefused),
                                        ("busy", BackupBusy)])
@pytest.mark.parametrize("before", ["", "logger: socket /dev/log: No such file or directory\n"])
def test_the_jobs_refusals_become_one_line_errors(what, kind, before):
    said = f"{before}mailsite-backup: {what}: the line the admin reads\n"
    with pytest.raises(kind) as refused:
        snapshots(_answering(stderr=said, status=3))
    assert str(refused.value) == "the line the admin reads"
    assert kind.exit_code == (1 if what == "busy" else 2)


def test_other_failures_stay_the_hosts_errors():
    with pytest.raises(ControlError):
        backup_now(_answering(stderr="mailsite-backup: the backup failed: no space left", status=1))
    with pytest.raises(ControlError, match="gave no list of snapshots"):
        snapshots(_answering("Fatal: something else"))
    with pytest.raises(ControlError, match="without saying what it restored"):
        restore(_answering("nothing"))
    assert backup_now(_answering("snapshot 0123abcd\n")) == "0123abcd"


@pytest.mark.parametrize("arguments, words", [
    (["status"], 'mailsite:backup.bucket = "": backups are off'),
    (["restore", "--snapshot", "zz; rm"], "--snapshot zz; rm: not a snapshot"),
    (["restore", "--user", "mallory"], "--user mallory: not a mailbox user"),
])
def test_backup_command_refuses_bad_arguments_in_one_line(tmp_path, arguments, words):
    settings = example_settings()
    if arguments != ["status"]:
        settings["backup"] = BACKUP
    config = tmp_path / "Pulumi.backuptest.yaml"
    config.write_text(yaml.safe_dump({"config": {f"mailsite:{key}": value for key, value in settings.items()}}))
    result = subprocess.run([sys.executable, "-m", "mailsite", "backup", *arguments[:1], "--config", str(config), *arguments[1:]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def test_snapshot_times_with_nanoseconds_and_offsets_read_alike():
    found = parse_snapshots('[{"time":"2026-11-26T04:40:00.999999999+01:00","id":"ab"}]')
    assert found == [Snapshot("ab", datetime(2026, 11, 26, 3, 40, 0, 999999, tzinfo=timezone.utc), "", None, None)]
    assert found[0].time + timedelta(0) == found[0].time


def _doctor_view(site, control, now):
    import dns.resolver

    from mailsite.doctor.view import SiteView

    return SiteView(site, "example", dns.resolver.Resolver(configure=False), lambda host: control,
                    lambda: None, None, now, 10)  # type: ignore[arg-type, return-value]


def test_doctor_warns_once_the_last_backup_is_older_than_the_schedule_allows():
    from mailsite.doctor.backup import checks
    from mailsite.results import Status

    site = _site(everyHours=12)
    recent = datetime(2026, 11, 26, 20, 0, tzinfo=timezone.utc)
    (check,) = checks(_doctor_view(site, _answering(SNAPSHOTS), recent))
    assert check.name == "mx1.example.org: the last backup is at most 24 h old" and check.area == "backup" and check.host == "mx1"
    status, seen, _ = check.run()
    assert status is Status.PASS and seen.startswith("the last backup (ab12cd34) is 16.3 h old"), seen
    status, _, fix = checks(_doctor_view(site, _answering(SNAPSHOTS), recent + timedelta(hours=8)))[0].run()
    assert status is Status.WARN and "mailsite backup now" in fix
    assert checks(_doctor_view(site, _answering("[]"), recent))[0].run()[:2] == (Status.WARN, "no backup yet")
    refused = _answering(stderr="mailsite-backup: password: the repository password does not open it\n", status=3)
    status, seen, _ = checks(_doctor_view(site, refused, recent))[0].run()
    assert status is Status.FAIL and "the repository password does not open it" in seen
    assert checks(_doctor_view(_site(bucket=""), _answering("[]"), recent)) == [], "no check while backups are off"


def test_a_review_render_shows_the_backup_secrets_redacted_even_without_the_backend(tmp_path):
    from mailsite.local import render_stack

    settings = example_settings()
    settings["backup"] = BACKUP
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    config = tmp_path / "Pulumi.review.yaml"
    config.write_text(yaml.safe_dump({"config": {f"mailsite:{key}": value for key, value in settings.items()}}))
    for stored in (False, True):  # the backend unreachable or empty; then holding both secrets
        if stored:
            site = site_of(settings)
            init_secrets(site, "review", tmp_path)
            store_credentials(host_store(site, tmp_path), "review", "AKIAIOSFODNN7EXAMPLE", SECRET_KEY)
        _, trees, _ = render_stack(config, redacted=True)
        tree = trees["mx1"]
        assert tree[PASSWORD].text == "<redacted>\n" and "'<redacted>'" in tree[CREDENTIALS].text
        assert SECRET_KEY not in tree[CREDENTIALS].text
        assert ("version unknown" in tree[CREDENTIALS].text) is not stored


def test_the_jobs_repository_is_the_settings_own_whatever_the_endpoint_url_holds(tmp_path):
    # A URL may hold & ? = ~ : (a query string, a path): unquoted in the job, & would send the
    # assignment to the background and run the rest as a command, as root; :~ would become a home.
    site = _site(endpointUrl="https://s3.example.net:8443/a:~root/b?x=1&touch")
    job = _tree(site)[JOB].text
    preamble = job[:job.index("\n. /etc/mailsite/backup-credentials")]
    shown = subprocess.run(["sh", "-c", preamble + '\nprintf "%s\\n" "$RESTIC_REPOSITORY"'], capture_output=True, text=True,
                           timeout=10, cwd=tmp_path)
    assert (shown.returncode, shown.stdout, shown.stderr) == (0, site.backup.repository + "\n", "")
    assert list(tmp_path.iterdir()) == []


def _room(tmp_path, mailboxes_kb: int, copied_kb: int | None, total_kb: int, free_kb: int) -> subprocess.CompletedProcess[str]:
    """The job's check of the volume's room before it copies the mailboxes, run by sh with du and
    df answering as a volume of those sizes would (no volume here to fill)."""
    job = _tree(_site())[JOB].text
    start = job.index("\nroom() {") + 1
    function = job[start:job.index("\n}\n", start) + 3]
    stubs = f"""
du() {{ case $2 in */backup/mail) {'echo "%d $2"' % copied_kb if copied_kb is not None else 'return 1'} ;; *) echo "{mailboxes_kb} $2" ;; esac; }}
df() {{ printf 'Filesystem 1024-blocks Used Available Capacity Mounted on\\n/dev/sd1a {total_kb} {total_kb - free_kb} {free_kb} 50%% /var/mailsite\\n'; }}
refuse() {{ echo "mailsite-backup: $1: $2" >&2; exit 3; }}
volume=/var/mailsite mailboxes=/var/mailsite/mail staging=/var/mailsite/backup/mail
"""
    return subprocess.run(["sh", "-c", stubs + function + "room && echo room"], capture_output=True, text=True, timeout=10, cwd=tmp_path)


def test_a_backup_makes_no_copy_of_the_mailboxes_the_volume_has_no_room_for(tmp_path):
    gb = 1024 * 1024
    # 40 GB of mail on a 100 GB volume with 55 GB free: the first copy would leave 15 GB.
    assert _room(tmp_path, 40 * gb, None, 100 * gb, 55 * gb).stdout == "room\n"
    # 60% full (the mail alone): the copy would fill it, and deliveries would stop.
    full = _room(tmp_path, 60 * gb, None, 100 * gb, 40 * gb)
    assert full.returncode == 3 and full.stdout == "", full
    assert full.stderr == ("mailsite-backup: space: /var/mailsite has 40960 MB free of 102400 MB; the mailboxes' copy needs "
                           "61440 MB more, and a tenth must stay free for mail: grow mailVolume.size (docs/backups.md)\n")
    # The copy kept from the last run: only what changed since needs room.
    assert _room(tmp_path, 60 * gb, 59 * gb, 130 * gb, 20 * gb).stdout == "room\n"
