"""python -m mailsite: render, check and manage a mail site outside `pulumi up`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .check import check_host, host_trees
from .config import load_site_file, stack_name
from .model import HostAddresses, Site
from .problems import Problem, SiteConfigError
from .render import HostTree, render_host
from .secrets import init_secrets, site_secrets
from .trees import write_trees


def fixed_addresses(site: Site) -> dict[str, HostAddresses]:
    """Addresses written in the stack file; "allocate" ones exist only once the provider made them."""
    problems = []
    for i, host in enumerate(site.hosts):
        for family in ("ipv4", "ipv6"):
            if getattr(host, family) == "allocate":
                problems.append(Problem(f"mailsite:hosts[{i}].{family}", "allocate",
                                        "rendering here needs a fixed address; set one, or render through pulumi up"))
    if problems:
        raise SiteConfigError(problems)
    return {host.name: HostAddresses(host.ipv4, host.ipv6) for host in site.hosts}


def render_site(config: Path) -> dict[str, HostTree]:
    site = load_site_file(config)
    stack = stack_name(config)
    addresses = fixed_addresses(site)
    secrets = site_secrets(site, stack, config.resolve().parent)
    return {host.name: render_host(site, host, addresses, secrets[host.name]) for host in site.hosts}


def _render(args: argparse.Namespace) -> int:
    for path in write_trees(args.out, render_site(args.config)):
        print(f"rendered {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    trees = host_trees(args.dir)
    if not trees:
        print(f"error: {args.dir} holds no rendered host (no */etc/mail/smtpd.conf); run render first", file=sys.stderr)
        return 2
    failed = False
    for host, tree in trees.items():
        problems = check_host(host, tree)
        for problem in problems:
            print(problem, file=sys.stderr)
        failed = failed or bool(problems)
        print(f"{host}: {'FAILED' if problems else 'ok'} (smtpd -n, bgpd -n, sh -n)")
    return 1 if failed else 0


def _secrets_init(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    created = init_secrets(site, stack_name(args.config), args.config.resolve().parent)
    for secret_id in created:
        print(f"created {secret_id}")
    if not created:
        print("every key already exists; nothing created")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mailsite", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="write each host's OpenBSD files to OUT/<host>")
    render.add_argument("--config", type=Path, required=True, help="the stack file, Pulumi.<stack>.yaml")
    render.add_argument("--out", type=Path, required=True)
    render.set_defaults(run=_render)

    check = commands.add_parser("check", help="check rendered trees with smtpd -n and bgpd -n (root)")
    check.add_argument("dir", type=Path)
    check.set_defaults(run=_check)

    secrets = commands.add_parser("secrets", help="the secrets backend")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    init = secrets_commands.add_parser("init", help="create every missing key (never replaces one)")
    init.add_argument("--config", type=Path, required=True)
    init.set_defaults(run=_secrets_init)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except SiteConfigError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
