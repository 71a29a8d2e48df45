"""secrets init: create every key the stack needs in its secrets backend (never replaces one);
secrets backup-credentials: store the backup bucket's access key there (mailsite.secrets.backup)."""

from __future__ import annotations

import argparse
import getpass
import sys

from ..config import load_site_file, stack_name
from ..errors import UserError
from ..secrets import host_store, init_secrets
from ..secrets.backup import backup_credentials_id, store_credentials
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("secrets", help="the secrets backend")
    verbs = command.add_subparsers(dest="secrets_command", required=True)
    verbs.add_parser("init", parents=[parents.config], help="create every missing key (never replaces one)").set_defaults(run=run)
    verbs.add_parser("backup-credentials", parents=[parents.config],
                     help="store the backup bucket's access key (asked on a terminal, else two lines of stdin: id, secret)"
                     ).set_defaults(run=run_backup_credentials)


def run(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    created = init_secrets(site, stack_name(args.config), args.config.resolve().parent)
    for secret_id in created:
        print(f"created {secret_id}")
    if not created:
        print("every key already exists; nothing created")
    return 0


def _credentials() -> tuple[str, str]:
    """The key's id and secret: asked on a terminal (the secret unseen), else two lines of stdin."""
    if sys.stdin.isatty():
        return input("Access key id: ").strip(), getpass.getpass("Secret access key: ").strip()
    lines = sys.stdin.read(4096).splitlines()
    if len(lines) < 2:
        raise UserError("secrets backup-credentials: give the access key id and the secret access key on two lines of stdin")
    return lines[0].strip(), lines[1].strip()


def run_backup_credentials(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    if site.secrets.backend == "inline":
        raise UserError("mailsite:secrets.backend = inline: keeps no backup keys; use file or aws-secretsmanager")
    stack = stack_name(args.config)
    stored = store_credentials(host_store(site, args.config.resolve().parent), stack, *_credentials())
    print(f"stored the backup bucket's access key ({backup_credentials_id(stack)}, version {stored.version}); "
          "the primary's next image carries it: pulumi up")
    return 0
