"""Options several commands take, each declared once (argparse parents) with one help text."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Parents:
    """Parent parsers a command lists in `parents=[...]` to take a shared option."""

    config: argparse.ArgumentParser  # --config: every command that reads a stack


def parents() -> Parents:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, required=True, metavar="STACK_FILE",
                        help="the stack file, Pulumi.<stack>.yaml (its keys are read from the secrets backend it names)")
    return Parents(config=config)
