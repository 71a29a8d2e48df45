"""configtest: rendered trees checked by the daemons' own parsers (smtpd -n, bgpd -n, doveconf -n, sh -n).

Named for what it runs (as apachectl configtest): the site's state is the coming `doctor`'s.
One line per host, then one per parser that ran, naming the program and version that ran it:
a pass says what it says only of that grammar."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from ..configtest import check_host, host_trees, parser_versions, parsers_run
from ..errors import UserError
from ..problems import printable
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("configtest", help="check rendered trees with the daemons' own parsers (root)")
    command.add_argument("dir", type=Path, help="a directory render wrote (OUT)")
    command.set_defaults(run=run)


def _interruptible() -> None:
    """SIGTERM (`timeout`, a killed make) stops configtest as Ctrl-C does: the check under way
    ends its parser and removes its namespace and scratch directory on the way out."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    _interruptible()
    if os.geteuid() != 0:
        # Without root every host would "fail" on its namespace, blaming a config that is fine.
        raise UserError("configtest makes network and mount namespaces for the daemons' parsers: run it as root")
    trees = host_trees(args.dir)
    if not trees:
        raise UserError(f"{args.dir} holds no rendered host (no */etc/myname); run render first")
    failed = False
    ran_anywhere: set[str] = set()
    # Any directory can be checked, hand-edited ones too: what the daemons quote from it is escaped.
    for host, tree in trees.items():
        problems = check_host(host, tree)
        for problem in problems:
            print(printable(str(problem)), file=sys.stderr)
        failed = failed or bool(problems)
        # The parsers that really ran on this tree, never a fixed list.
        ran = parsers_run(tree)
        ran_anywhere.update(ran)
        print(f"{printable(host)}: {'FAILED' if problems else 'ok'} ({', '.join(ran) or 'nothing to check'})")
    for line in parser_versions(ran_anywhere):
        print(line)
    return 1 if failed else 0
