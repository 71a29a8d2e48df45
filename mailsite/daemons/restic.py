"""restic(1): the primary's backups of its mail volume to S3-compatible storage, when
backup.bucket is set. Not a daemon, but a unit like one: the job (run by cron, and by `mailsite
backup` over ssh), its crontab line, and the two secret files it opens the repository with.

Rendered, secret or state (DESIGN): the job and its schedule are rendered; the repository
password and the storage's keys are secret (root's 0600 files, from the secrets backend); the
staging copy of the mailboxes and restic's cache are state the job makes again."""

from __future__ import annotations

from ..model import MAIL_UID, MAILBOXES, STATE_MOUNT, BackupSecrets, Host, Site
from ..problems import Problem, SiteConfigError
from ..templates import RenderedFile, render_template
from .acme import ACME_STATE
from .base import ConfigTest, Daemon, HostContext
from .mail_volume import SPAMD_ON_VOLUME

JOB = "usr/local/sbin/mailsite-backup"
PASSWORD = "etc/mailsite/backup-password"
CREDENTIALS = "etc/mailsite/backup-credentials"
# Below the volume: the mailboxes' copy restic backs up (kept between runs), and where a restore
# puts a snapshot's files before they are merged into the live mailboxes.
BACKUP_STATE = f"{STATE_MOUNT}/backup"
STAGING = f"{BACKUP_STATE}/mail"
RESTORED = f"{BACKUP_STATE}/restore"
# restic's cache of the repository's index: rebuilt from the bucket when lost, so on the root disk.
CACHE_DIR = "/var/db/mailsite-restic"


def on_a_backed_up_primary(site: Site, host: Host) -> bool:
    return host.is_primary and site.backup.enabled


def _other_state() -> list[str]:
    """What else the volume keeps, relative to it: what a whole-site restore brings back to a
    volume that lacks it."""
    return [path.removeprefix(f"{STATE_MOUNT}/").split("/")[0] for path in (SPAMD_ON_VOLUME, ACME_STATE)]


def keep_options(site: Site) -> list[tuple[str, int]]:
    """restic forget's policy; a 0 is left out (restic would read it as no limit of that kind)."""
    backup = site.backup
    return [(option, count) for option, count in (("--keep-daily", backup.keep_daily), ("--keep-weekly", backup.keep_weekly),
                                                  ("--keep-monthly", backup.keep_monthly)) if count]


def schedule(every_hours: int) -> tuple[str, str, str]:
    """cron's minute, hour and day of month for a run every `every_hours` hours, at a minute (and
    hour) this host's cron picks at random (~), so that sites sharing storage do not all come at once."""
    if every_hours < 24:
        return "~", f"*/{every_hours}" if every_hours > 1 else "*", "*"
    days = every_hours // 24
    return "~", "~", f"*/{days}" if days > 1 else "*"


def _secrets(context: HostContext) -> BackupSecrets:
    if context.secrets.backup is None:
        raise SiteConfigError([Problem("mailsite:backup.bucket", context.site.backup.bucket,
                                       "backups need their repository password and storage keys from a secrets backend; "
                                       "set secrets.backend to file or aws-secretsmanager, or backup.bucket to \"\"")])
    return context.secrets.backup


def render_job(site: Site, host: Host, secrets: BackupSecrets) -> str:
    backup = site.backup
    return render_template(
        "restic/mailsite-backup.j2",
        mx_name=host.mx_name,
        volume=STATE_MOUNT,
        mailboxes=MAILBOXES,
        staging=STAGING,
        restored=RESTORED,
        repository=backup.repository,
        region=backup.region,
        password_file=f"/{PASSWORD}",
        credentials_file=f"/{CREDENTIALS}",
        cache_dir=CACHE_DIR,
        mail_uid=MAIL_UID,
        every_hours=backup.every_hours,
        keep=", ".join(f"{count} {option.removeprefix('--keep-')}" for option, count in keep_options(site)),
        keep_options=keep_options(site),
        other_state=" ".join(_other_state()),
        # Versions, never values: a new password or key makes another image (its identity counts
        # this file), and says which one the image carries.
        password_version=secrets.repository_password_version,
        credentials_version=secrets.credentials_version,
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    site, host = context.site, context.host
    secrets = _secrets(context)
    credentials = render_template("restic/credentials.j2", job=JOB, version=secrets.credentials_version,
                                  access_key_id=secrets.access_key_id.get_secret_value(),
                                  secret_access_key=secrets.secret_access_key.get_secret_value())
    return {
        JOB: RenderedFile(render_job(site, host, secrets), 0o755),
        PASSWORD: RenderedFile(secrets.repository_password.get_secret_value() + "\n", 0o600, secret=True),
        CREDENTIALS: RenderedFile(credentials, 0o600, secret=True),
    }


def crontab(context: HostContext) -> str:
    every = context.site.backup.every_hours
    minute, hour, day = schedule(every)
    return render_template("restic/crontab.j2", every_hours=every, minute=minute, hour=hour, day=day, job=f"/{JOB}")


restic = Daemon(
    "restic",
    runs_on=on_a_backed_up_primary,
    # Starts no daemon: installed beside the others, pinned in images.packages.restic.
    packages=("restic",),
    files=files,
    crontab=crontab,
    # Root runs it on the mail volume: its shell grammar, and the credentials file it sources.
    configtests=(ConfigTest("sh -n", JOB), ConfigTest("sh -n", CREDENTIALS)),
)
