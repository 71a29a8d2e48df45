"""Doctor's backup check: the primary's last backup is no older than its schedule allows (two of
backup.everyHours: one run missed, or failing since), read from the repository by the primary's
own job over its control, as `mailsite backup status` reads it. Nothing when backups are off."""

from __future__ import annotations

from ..backup import BackupBusy, BackupRefused, overdue, snapshots
from ..hosts import ControlError
from ..results import Status
from .core import Check
from .view import SiteView


def checks(view: SiteView) -> list[Check]:
    site = view.site
    if not site.backup.enabled:
        return []
    primary = site.primary
    allowed = 2 * site.backup.every_hours

    def last_backup() -> tuple[Status, str, str]:
        try:
            found = snapshots(view.control(primary))
        except BackupRefused as refused:
            return Status.FAIL, f"the repository cannot be read: {refused}", "until it is mended no backup is made"
        except (BackupBusy, ControlError) as error:
            return Status.FAIL, f"the backups could not be listed: {error}", f"see {primary.mx_name}'s /var/log/daemon (mailsite-backup)"
        if not found:
            return Status.WARN, "no backup yet", f"mailsite backup now --config <stack file>; then check {primary.mx_name}'s cron"
        last = found[-1]
        hours = (view.now - last.time).total_seconds() / 3600
        seen = f"the last backup ({last.short_id}) is {hours:.1f} h old; backup.everyHours is {site.backup.every_hours}"
        if overdue(site, last, view.now):
            return Status.WARN, seen, (f"{primary.mx_name}'s job has missed its runs or fails: see its /var/log/daemon "
                                       "(mailsite-backup), then mailsite backup now --config <stack file>")
        return Status.PASS, seen, ""

    return [Check(f"{primary.mx_name}: the last backup is at most {allowed} h old", "backup", primary.name, last_backup)]
