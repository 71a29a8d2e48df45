"""The primary's backups as the admin's machine sees them: its job (mailsite/daemons/restic.py)
run on the primary through a HostControl (ssh on a real site, nsenter in the lab), so that only
the primary ever holds the storage's keys and the repository password. What it says back is read
here: snapshots, and the job's one-line refusals."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .daemons.restic import JOB
from .errors import MailsiteError, UserError
from .hosts import ControlError, HostControl
from .model import Site

# The job's refusals ("mailsite-backup: <what>: <line>", exit 3): what the admin must mend (a
# password, a bucket, the keys, a new volume not yet restored, a volume with no room for the copy, a
# user), or a run already at work.
# ssh's error puts the first line of it after "... failed: ".
_REFUSAL = re.compile(r"(?:^|\s)mailsite-backup: (password|bucket|credentials|volume|space|user|busy): (.+)$", re.M)
# A snapshot as restic names one: latest, or its id or a prefix of it (8 hex digits are shown).
SNAPSHOT = re.compile(r"latest|[0-9a-f]{8,64}")


class BackupRefused(UserError):
    """The repository cannot be opened as the settings and secrets say: one line, exit 2."""


class BackupBusy(MailsiteError):
    """Another backup or restore is at work on the primary."""


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: datetime
    host: str
    size: int | None  # bytes of the files it holds (restic 0.17+ keeps it; None before)
    added: int | None  # bytes it added to the repository

    @property
    def short_id(self) -> str:
        return self.id[:8]


def _job(control: HostControl, *arguments: str) -> str:
    try:
        return control.run(f"/{JOB}", *arguments)
    except ControlError as error:
        refused = _REFUSAL.search(str(error))
        if refused is None:
            raise
        what, line = refused.groups()
        raise (BackupBusy if what == "busy" else BackupRefused)(line) from None


def _time(text: str) -> datetime:
    # restic writes nanoseconds (2026-11-26T11:53:14.014951963Z); Python reads microseconds.
    found = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if not found:
        raise ControlError(f"restic gave a snapshot time mailsite cannot read: {text!r}")
    fraction = (found[2] or ".0")[:7]
    zone = "+00:00" if found[3] == "Z" else found[3]
    return datetime.fromisoformat(f"{found[1]}{fraction}{zone}").astimezone(timezone.utc)


def parse_snapshots(output: str) -> list[Snapshot]:
    """restic snapshots --json, oldest first."""
    try:
        listed = json.loads(output)
        found = [Snapshot(item["id"], _time(item["time"]), item.get("hostname", ""),
                          (item.get("summary") or {}).get("total_bytes_processed"),
                          (item.get("summary") or {}).get("data_added"))
                 for item in listed]
    except (ValueError, KeyError, TypeError):
        raise ControlError(f"the primary's {JOB} gave no list of snapshots restic writes: {output.strip()[:200]!r}") from None
    return sorted(found, key=lambda snapshot: snapshot.time)


def snapshots(control: HostControl) -> list[Snapshot]:
    return parse_snapshots(_job(control, "snapshots"))


def backup_now(control: HostControl) -> str:
    """A backup, then the old ones forgotten by the retention settings; the new snapshot's id."""
    output = _job(control, "now")
    found = re.search(r"^snapshot ([0-9a-f]*)$", output, re.M)
    if found is None or not found[1]:
        raise ControlError(f"the primary's {JOB} ended without naming its snapshot: {output.strip()[-200:]!r}")
    return found[1]


def restore(control: HostControl, snapshot: str = "latest", user: str | None = None) -> str:
    """The snapshot's mailboxes (one user's) merged into the live ones; what the job says of it."""
    output = _job(control, "restore", snapshot, *([user] if user else []))
    found = re.search(r"^restored \d+ mailboxes from snapshot .*$", output, re.M)
    if found is None:
        raise ControlError(f"the primary's {JOB} ended without saying what it restored: {output.strip()[-200:]!r}")
    return found[0]


def checked_request(site: Site, snapshot: str, user: str | None) -> None:
    """The command's arguments, or one line naming the bad one."""
    if not site.backup.enabled:
        raise UserError('mailsite:backup.bucket = "": backups are off for this site; set backup.bucket '
                        "(docs/backups.md), then pulumi up")
    if not SNAPSHOT.fullmatch(snapshot):
        raise UserError(f"--snapshot {snapshot}: not a snapshot; give latest or an id from backup status (8 hex digits or more)")
    if user is not None and user not in site.recipients.users:
        raise UserError(f"--user {user}: not a mailbox user of mailsite:recipients.users; give one of "
                        f"{', '.join(site.recipients.users[:5])}")


def _size(count: int | None) -> str:
    if count is None:
        return "size unknown"
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    raise AssertionError


def _age(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // (24 * 60)} days {minutes % (24 * 60) // 60} h"


def overdue(site: Site, last: Snapshot | None, now: datetime) -> bool:
    """Whether the last backup is older than the schedule allows: two of its intervals (one run
    missed, or failing)."""
    return last is None or now - last.time > timedelta(hours=2 * site.backup.every_hours)


def status_lines(site: Site, found: list[Snapshot], now: datetime) -> list[str]:
    """What `backup status` prints: each snapshot, then the last one's age against the schedule."""
    lines = [f"{site.primary.mx_name}: {len(found)} backup{'s' if len(found) != 1 else ''} in {site.backup.repository}"]
    for snapshot in found:
        lines.append(f"  {snapshot.time:%Y-%m-%d %H:%M} UTC  {snapshot.short_id}  {_size(snapshot.size)}"
                     + (f" (+{_size(snapshot.added)} new)" if snapshot.added is not None else ""))
    last = found[-1] if found else None
    every = site.backup.every_hours
    if last is None:
        lines.append(f"no backup yet (backup.everyHours {every}): run backup now")
    else:
        late = "; overdue: check the primary's /var/log/daemon for mailsite-backup" if overdue(site, last, now) else ""
        lines.append(f"last backup {_age(now - last.time)} ago (backup.everyHours {every}){late}")
    return lines
