"""user passwd: set a mailbox user's password, kept only as a bcrypt hash in the secrets backend;
the primary's next image carries it."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from ..config import load_site_file, read_stack_settings, stack_name
from ..model import Site
from ..passwords import hash_password, password_problem
from ..problems import Problem, SiteConfigError, few
from ..secrets import host_store, password_hashes, password_hashes_id
from .options import Parents

# Stands for the password in an error line, which never shows it.
_NOT_SHOWN = "(not shown)"


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("user", help="mailbox users")
    verbs = command.add_subparsers(dest="user_command", required=True)
    passwd = verbs.add_parser("passwd", parents=[parents.config],
                              help="set a user's password (asked twice on a terminal, else one line from stdin)")
    passwd.add_argument("user", metavar="USER", help="a user of mailsite:recipients.users")
    passwd.set_defaults(run=run)


def _site(config) -> Site:
    secrets = read_stack_settings(config).get("secrets")
    if isinstance(secrets, dict) and secrets.get("backend") == "inline":
        # Said before the tool's general refusal of inline keys, which would send the user to secrets init.
        raise SiteConfigError([Problem("mailsite:secrets.backend", "inline", "keeps no passwords (the stack file is no place "
                                       "for them); use file or aws-secretsmanager, then set the password")])
    return load_site_file(config)


def _password(user: str) -> str:
    """Asked twice, unseen, on a terminal; for a script, the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"New password for {user}: ")
        if getpass.getpass(f"Again, for {user}: ") != password:
            raise SiteConfigError([Problem(f"the password of {user}", _NOT_SHOWN, "the two entries differ; nothing was changed, run it again")])
        return password
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def run(args: argparse.Namespace) -> int:
    site = _site(args.config)
    user = args.user
    if user not in site.recipients.users:
        raise SiteConfigError([Problem("USER", user, "not a user of mailsite:recipients.users "
                                       f"({few(site.recipients.users)}); add it there first, then set its password")])
    stack = stack_name(args.config)
    store = host_store(site, args.config.resolve().parent)
    # Once before asking, so that a backend that cannot be read, or holds a damaged secret, is
    # said before anyone types a password; again just before writing, to build on the latest.
    # Another user's malformed entry is kept as it is: rendering names it, and this mends it.
    password_hashes(store, stack, every_entry=False)
    password = _password(user)
    if (problem := password_problem(user, password)) is not None:
        raise SiteConfigError([Problem(f"the password of {user}", _NOT_SHOWN, f"{problem}; nothing was changed")])
    secret_id = password_hashes_id(stack)
    hashes, current = password_hashes(store, stack, every_entry=False)
    had_one = user in hashes
    hashes[user] = hash_password(password)
    value = json.dumps(hashes, sort_keys=True)
    if current is None:
        stored = store.create(secret_id, value, description="mailbox users' bcrypt password hashes (mailsite)")
    else:
        stored = store.put_current(secret_id, value)
    primary = site.primary.name
    print(f"{user}'s password is set ({secret_id}, version {stored.version}).")
    print(f"The next pulumi up rebakes {primary}'s image with it and replaces {primary}: its mail stays on the "
          "mail volume, and the backups hold incoming mail meanwhile.")
    print(f"Until then {user} " + ("logs in with the old password." if had_one else "receives mail but cannot log in."))
    return 0
