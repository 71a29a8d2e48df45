"""secrets init: create every key the stack needs in its secrets backend (never replaces one)."""

from __future__ import annotations

import argparse

from ..config import load_site_file, stack_name
from ..secrets import init_secrets
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("secrets", help="the secrets backend")
    verbs = command.add_subparsers(dest="secrets_command", required=True)
    verbs.add_parser("init", parents=[parents.config], help="create every missing key (never replaces one)").set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    created = init_secrets(site, stack_name(args.config), args.config.resolve().parent)
    for secret_id in created:
        print(f"created {secret_id}")
    if not created:
        print("every key already exists; nothing created")
    return 0
