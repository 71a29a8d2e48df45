"""render: each host's OpenBSD files, as its image will hold them, written to OUT/<host>."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..local import render_stack
from ..problems import printable
from ..trees import write_trees
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("render", parents=[parents.config], help="write each host's OpenBSD files to OUT/<host>")
    command.add_argument("--out", type=Path, required=True,
                         help="where to write; a site rendered there before is replaced whole, anything else is refused")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for path in write_trees(args.out, render_stack(args.config)[1]):
        print(f"rendered {printable(str(path))}")
    return 0
