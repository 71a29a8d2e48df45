"""diff: per host, what the working tree changes against a git ref (keys redacted), for reviewers."""

from __future__ import annotations

import argparse

from ..diff import site_diff
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("diff", parents=[parents.config], help="per host, what the working tree changes against REF (keys redacted)")
    command.add_argument("--base", required=True, metavar="REF", help="the git ref to compare with, e.g. origin/main")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(site_diff(args.config, args.base), end="")
    return 0
