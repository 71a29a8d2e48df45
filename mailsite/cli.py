"""mailsite: render a mail site's files, test them with the daemons' own parsers (configtest),
bake its images and manage its keys, outside `pulumi up`."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .errors import MailsiteError  # no imports of its own: caught however early a command fails

_INTERRUPTED = "interrupted; nothing half-written was kept"
# sysexits.h's EX_SOFTWARE: the tool itself is wrong, neither the operation nor the settings.
EX_SOFTWARE = 70
EX_BROKEN_PIPE = 128 + 13  # a shell's status for a process ended by SIGPIPE
_BUG = "error: a bug in mailsite, not your settings; report it with the traceback above"


def parser(prog: str = "mailsite") -> argparse.ArgumentParser:
    from .commands import COMMANDS
    from .commands.options import parents

    top = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = parents()
    for command in COMMANDS:
        command.register(commands, shared)
    return top


def main(argv: list[str] | None = None, prog: str = "mailsite") -> int:
    """The one place an error becomes what the user sees: one line per problem, and the exit
    status (1 an operation failed, 2 the user must fix something, 70 a bug, 130 interrupted)."""
    args = None
    try:
        # Parsed in here (the commands are imported by parser()): a Ctrl-C while they load is an
        # interruption too.
        args = parser(prog).parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        print(getattr(args, "interrupted", _INTERRUPTED), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # What reads the output stopped (`doctor --json | head -1`): it had what it wanted, so end
        # quietly, as a shell tool killed by SIGPIPE does; the interpreter's last flush at exit
        # goes nowhere instead of printing an error of its own.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout with no file descriptor (a test's capture)
            pass
        return EX_BROKEN_PIPE
    except MailsiteError as error:
        from .problems import SiteConfigError, printable

        # A site's settings can hold several problems, each its own line; printable() so that a
        # value's line break or escape sequence is shown, never obeyed by the terminal.
        for problem in error.problems if isinstance(error, SiteConfigError) else [error]:
            print(f"error: {printable(str(problem))}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        from .problems import printable

        # A path given to the tool that cannot be read or written: the path and why, not a traceback.
        where = error.filename or "a file"
        print(f"error: {printable(str(where))}: {error.strerror or type(error).__name__}; check the path and its permissions", file=sys.stderr)
        return 2
    except Exception:
        # Not an error the tool reports (those are MailsiteError): a bug, whose traceback is how it gets fixed.
        traceback.print_exc()
        print(_BUG, file=sys.stderr)
        return EX_SOFTWARE
