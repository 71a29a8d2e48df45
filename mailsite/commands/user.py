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
from ..secrets.store import MAX_SECRET_BYTES, secret_error
from .options import Parents

# Stands for the password in an error line, which never shows it.
_NOT_SHOWN = "(not shown)"
# Of a script's stdin: any line longer is refused as past bcrypt's 72 bytes, and is never read whole.
_MOST_READ = 4096
# As long as every hash_password makes: what one more entry costs in the secret.
_A_HASH = "$2b$12$" + "." * 53


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
    # Bytes, decoded as UTF-8 whatever the locale: the hash is of the password's UTF-8, as a mail
    # client sends it, and a locale that reads bytes otherwise would hash another password.
    line = sys.stdin.buffer.readline(_MOST_READ)
    for end in (b"\r\n", b"\n"):  # a line from a Windows editor ends in \r\n
        if line.endswith(end):
            line = line[:-len(end)]
            break
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        if len(line) >= _MOST_READ:
            return line.decode("utf-8", errors="replace")  # cut inside a character: too long all the same
        raise SiteConfigError([Problem(f"the password of {user}", _NOT_SHOWN, "is not UTF-8 text, as a mail client "
                                       "would send it; type it in a UTF-8 terminal or write it as UTF-8; nothing was changed")]) from None


def _stored(hashes: dict[str, str]) -> str:
    # Compact: Secrets Manager holds 64 KiB a secret, and every byte is room for another user.
    return json.dumps(hashes, sort_keys=True, separators=(",", ":"))


def _refuse_if_no_room(secret_id: str, hashes: dict[str, str], user: str, site: Site) -> None:
    """Said before the password is asked for: what the secret would hold with this user's hash in it."""
    size = len(_stored({**hashes, user: _A_HASH}).encode())
    if size <= MAX_SECRET_BYTES:
        return
    room = MAX_SECRET_BYTES * (len(hashes) + 1) // size
    left = sum(1 for name in hashes if name not in site.recipients.users)
    raise secret_error(secret_id, f"{len(hashes) + 1} users' hashes would take {size} bytes, past the {MAX_SECRET_BYTES} "
                                  f"bytes a secret may hold (Secrets Manager's limit, kept by the file backend): room for "
                                  f"about {room} users with a password; nothing was changed; "
                                  + (f"delete the entries of the {left} users no longer in mailsite:recipients.users "
                                     "from the secret in the backend, or give " if left else "give ")
                                  + "fewer users a password (mailsite does not split the hashes over several secrets)")


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
    secret_id = password_hashes_id(stack)
    _refuse_if_no_room(secret_id, password_hashes(store, stack, every_entry=False)[0], user, site)
    password = _password(user)
    if (problem := password_problem(user, password)) is not None:
        raise SiteConfigError([Problem(f"the password of {user}", _NOT_SHOWN, f"{problem}; nothing was changed")])
    hashes, current = password_hashes(store, stack, every_entry=False)
    had_one = user in hashes
    hashes[user] = hash_password(password)
    value = _stored(hashes)
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
