"""snapshot (hidden): the rendered files with keys redacted, and each host's image identity.

`diff` runs it on the base ref's own code, so it must keep taking these arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..diff import redacted_snapshot
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    # No help: a parser without one is left out of the command list.
    command = commands.add_parser("snapshot", parents=[parents.config])
    command.add_argument("--out", type=Path, required=True)
    command.add_argument("--secrets-base", type=Path)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    redacted_snapshot(args.config, args.out, args.secrets_base)
    return 0
