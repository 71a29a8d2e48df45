"""mailsite: render, check and manage a mail site outside `pulumi up`."""

from __future__ import annotations

import argparse
import sys

from .commands import COMMANDS
from .commands.options import parents
from .errors import MailsiteError
from .problems import SiteConfigError, printable

_INTERRUPTED = "interrupted; nothing half-written was kept"


def parser(prog: str = "mailsite") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = parents()
    for command in COMMANDS:
        command.register(commands, shared)
    return top


def main(argv: list[str] | None = None, prog: str = "mailsite") -> int:
    """The one place an error becomes what the user sees: one line per problem, and the exit
    status (1 an operation failed, 2 the user must fix something, 130 interrupted)."""
    args = parser(prog).parse_args(argv)
    try:
        return args.run(args)
    except MailsiteError as error:
        # A site's settings can hold several problems, each its own line; printable() so that a
        # value's line break or escape sequence is shown, never obeyed by the terminal.
        for problem in error.problems if isinstance(error, SiteConfigError) else [error]:
            print(f"error: {printable(str(problem))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(getattr(args, "interrupted", _INTERRUPTED), file=sys.stderr)
        return 130
    except OSError as error:
        # A path given to the tool that cannot be read or written: the path and why, not a traceback.
        where = error.filename or "a file"
        print(f"error: {printable(str(where))}: {error.strerror or type(error).__name__}; check the path and its permissions", file=sys.stderr)
        return 2
