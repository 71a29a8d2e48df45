"""backup status|now|restore: the primary's backups, run on the primary itself (over ssh, or in
the running lab with --lab), so that this machine needs no storage key."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from ..backup import backup_now, checked_request, restore, snapshots, status_lines
from ..config import load_site_file
from ..errors import UserError
from ..hosts import CommandControl, ssh_control
from ..model import Site
from .options import Parents

# ssh's answer for a listing; a backup or a restore takes as long as the mail it moves.
_LISTING_SECONDS = 180
_JOB_SECONDS = 6 * 3600


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("backup", help="the primary's mail backups (restic, S3-compatible storage)")
    verbs = command.add_subparsers(dest="backup_command", required=True)
    lab = argparse.ArgumentParser(add_help=False)
    lab.add_argument("--lab", action="store_true", help="the running lab's primary (lab up) instead of the site's over ssh")
    verbs.add_parser("status", parents=[parents.config, lab],
                     help="every backup with its time and size, and the last one's age").set_defaults(run=run_status)
    verbs.add_parser("now", parents=[parents.config, lab],
                     help="a backup now, then the old ones forgotten as backup.keep* say").set_defaults(run=run_now)
    restoring = verbs.add_parser("restore", parents=[parents.config, lab],
                                 help="merge a snapshot's mailboxes into the live ones (mail since is kept)")
    restoring.add_argument("--snapshot", default="latest", help="the snapshot's id from backup status (default: latest)")
    restoring.add_argument("--user", help="only this user's mailbox (default: every user's, and what the volume lacks)")
    restoring.set_defaults(run=run_restore)


def _site(args: argparse.Namespace, snapshot: str = "latest", user: str | None = None) -> Site:
    site = load_site_file(args.config)
    checked_request(site, snapshot, user)
    return site


def _control(args: argparse.Namespace, site: Site, timeout: float) -> CommandControl:
    if not args.lab:
        control = ssh_control(site.primary)
        control.timeout = timeout
        return control
    from ..lab.backup import backup_control
    from ..lab.lab import Lab

    lab = Lab.attach()
    if Path(lab.state.config) != args.config.resolve():
        raise UserError(f"--config {args.config}: the running lab is of {lab.state.config}; give that stack file")
    return backup_control(lab, timeout)


def run_status(args: argparse.Namespace) -> int:
    site = _site(args)
    found = snapshots(_control(args, site, _LISTING_SECONDS))
    print("\n".join(status_lines(site, found, datetime.now(timezone.utc))))
    return 0


def run_now(args: argparse.Namespace) -> int:
    site = _site(args)
    snapshot = backup_now(_control(args, site, _JOB_SECONDS))
    print(f"{site.primary.mx_name}: backed up, snapshot {snapshot[:8]}; old backups forgotten as backup.keepDaily, "
          "keepWeekly and keepMonthly say")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    site = _site(args, args.snapshot, args.user)
    said = restore(_control(args, site, _JOB_SECONDS), args.snapshot, args.user)
    print(f"{site.primary.mx_name}: {said}; mail that arrived since is kept")
    return 0
