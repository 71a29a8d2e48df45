"""The primary's backups in the lab: where its job runs, and what the lab lends it.

The job calls doveadm (its consistent copy of the mailboxes, a restore's merge) and restic. In the
lab Dovecot 2.3 runs in the primary's second tree, over the "dovecot" root (Debian 12's), so the
job runs there too, as on the host both are one system: the daemons root's restic (Debian 13's
0.18, a Go program needing nothing of its root but libc) is lent to that tree where OpenBSD's
package puts it. The lab's S3 endpoint takes any key, so the lab stores a stand-in pair where
`secrets backup-credentials` would store the provider's.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from ..daemonroot import daemon_root
from ..daemons.dovecot import dovecot
from ..hosts import CommandControl, lab_control
from ..secrets import backup_credentials_id
from ..secrets.backup import store_credentials
from ..secrets.store import SecretStore

if TYPE_CHECKING:
    from .lab import Lab

# The tree the job runs in: Dovecot's, whose doveadm it calls.
assert dovecot.lab is not None
BACKUP_TREE = dovecot.lab.root
RESTIC_ON_HOST = "usr/local/bin/restic"  # where OpenBSD's package installs it
RESTIC_IN_ROOT = "usr/bin/restic"  # Debian's
# The job's runs take longer than a lab command's 30 s: a thousand messages' first backup.
JOB_TIMEOUT = 600


def store_lab_credentials(store: SecretStore, stack: str) -> None:
    """A stand-in key pair for the lab's S3 endpoint, unless one is stored already."""
    if store.read(backup_credentials_id(stack)) is None:
        store_credentials(store, stack, "mailsite-lab", "mailsite-lab-secret")


def lend_restic(lab: Lab, host: str) -> None:
    """The daemons root's restic, in the primary's backup tree where the host has its own."""
    target = lab.root(host, BACKUP_TREE) / RESTIC_ON_HOST
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(daemon_root().path / RESTIC_IN_ROOT, target)


def backup_control(lab: Lab, timeout: float = JOB_TIMEOUT) -> CommandControl:
    """The primary as `mailsite backup` reaches it: in the tree where its job runs."""
    return lab_control(lab.holder(lab.plan.site.primary.name, BACKUP_TREE).pid, timeout=timeout)
