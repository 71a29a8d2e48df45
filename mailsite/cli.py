"""python -m mailsite: render, check and manage a mail site outside `pulumi up`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from .check import check_host, host_trees
from .config import load_site_file, stack_name
from .diff import redacted_snapshot, site_diff
from .local import render_stack
from .images.bake import BakeRequest, bake
from .images.packer import BakeError
from .lab.cli import add_lab_command
from .model import Site
from .problems import Problem, SiteConfigError, few, from_validation_error, printable
from .render import UnsafeValue
from .rotation import ControlError, automation_replace, rollout_spamd_key, rotate_site, ssh_control
from .secrets import host_store, init_secrets
from .trees import write_trees


def _bake(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    names = args.host or [host.name for host in site.hosts]
    unknown = [name for name in names if name not in {host.name for host in site.hosts}]
    if unknown:
        raise SiteConfigError([Problem("--host", name, f"no such host; use one of {few([h.name for h in site.hosts])}") for name in unknown])
    if site.images.iso_sha256 is None:
        # Without it packer cannot verify the install media it downloads: a setting to fix, not a failed bake.
        raise SiteConfigError([Problem("mailsite:images.isoSha256", "(absent)",
                                       "required to bake; copy the install media's line from the release's SHA256 file")])
    _, trees, secrets = render_stack(args.config)
    try:
        for name in names:
            request = BakeRequest(site.host(name), trees[name], secrets[name], site.images, site.image_format)
            baked = bake(request)
            print(f"{name}: {baked.path} (identity {baked.identity})")
    except BakeError as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return 1
    return 0


def _drain_minutes(site: Site, given: int | None) -> int:
    """--drain-minutes, held to the bounds of the setting it overrides (queue.drainMinutes)."""
    if given is None:
        return site.queue.drain_minutes
    try:
        return type(site.queue).model_validate({**site.queue.model_dump(by_alias=True), "drainMinutes": given}).drain_minutes
    except ValidationError as error:
        raise SiteConfigError([Problem("--drain-minutes", str(given), problem.message) for problem in from_validation_error(error)]) from None


def _rotate(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    if args.host and args.host not in {h.name for h in site.hosts}:
        raise SiteConfigError([Problem("--host", args.host, f"no such host; use one of {few([h.name for h in site.hosts])}")])
    stack = stack_name(args.config)
    project = args.config.resolve().parent
    controls = {host.name: ssh_control(host) for host in site.hosts}
    drain_seconds = _drain_minutes(site, args.drain_minutes) * 60
    report = lambda step: print(step.message)  # noqa: E731
    try:
        if args.spamd_key:
            done = rollout_spamd_key(site, stack, host_store(site, project), controls, automation_replace(stack, str(project)),
                                     drain_seconds, report=report)
        else:
            done = rotate_site(site, stack, host_store(site, project), controls, automation_replace(stack, str(project)),
                               drain_seconds, only=args.host, report=report)
    except ControlError as error:
        print(f"error: {printable(str(error))}", file=sys.stderr)
        return 1
    return 0 if done else 1


def _snapshot(args: argparse.Namespace) -> int:
    redacted_snapshot(args.config, args.out, args.secrets_base)
    return 0


def _diff(args: argparse.Namespace) -> int:
    print(site_diff(args.config, args.base), end="")
    return 0


def _render(args: argparse.Namespace) -> int:
    for path in write_trees(args.out, render_stack(args.config)[1]):
        print(f"rendered {printable(str(path))}")
    return 0


def _check(args: argparse.Namespace) -> int:
    trees = host_trees(args.dir)
    if not trees:
        print(f"error: {printable(str(args.dir))} holds no rendered host (no */etc/mail/smtpd.conf); run render first", file=sys.stderr)
        return 2
    failed = False
    # Any directory can be checked, hand-edited ones too: what the daemons quote from it is escaped.
    for host, tree in trees.items():
        problems = check_host(host, tree)
        for problem in problems:
            print(printable(str(problem)), file=sys.stderr)
        failed = failed or bool(problems)
        print(f"{printable(host)}: {'FAILED' if problems else 'ok'} (smtpd -n, bgpd -n, sh -n)")
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

    bake_command = commands.add_parser("bake", help="bake hosts' OpenBSD images with packer (cached by content)")
    bake_command.add_argument("--config", type=Path, required=True)
    bake_command.add_argument("--host", action="append", help="a host to bake (repeat; default: every host)")
    bake_command.set_defaults(run=_bake)

    rotate = commands.add_parser("rotate-queue-key", help="drain, re-key and replace hosts one at a time (backups first)")
    rotate.add_argument("--config", type=Path, required=True)
    rotate.add_argument("--host", help="only this host (default: every host, backups first, the primary last)")
    rotate.add_argument("--drain-minutes", type=int, help="how long a host may take to drain (default: mailsite:queue.drainMinutes)")
    rotate.set_defaults(run=_rotate, spamd_key=False)

    spamd_key = commands.add_parser("rotate-spamd-key", help="a new site-wide spamd sync key, rolled out one host at a time")
    spamd_key.add_argument("--config", type=Path, required=True)
    spamd_key.add_argument("--drain-minutes", type=int, help="how long a host may take to drain (default: mailsite:queue.drainMinutes)")
    spamd_key.set_defaults(run=_rotate, spamd_key=True, host=None)

    diff = commands.add_parser("diff", help="per host, what the working tree changes against REF (keys redacted)")
    diff.add_argument("--config", type=Path, required=True)
    diff.add_argument("--base", required=True, help="the git ref to compare with, e.g. origin/main")
    diff.set_defaults(run=_diff)

    # Used by `diff` on the base's own code; rendered files with keys redacted, and identities.
    snapshot = commands.add_parser("snapshot", help=argparse.SUPPRESS)
    snapshot.add_argument("--config", type=Path, required=True)
    snapshot.add_argument("--out", type=Path, required=True)
    snapshot.add_argument("--secrets-base", type=Path)
    snapshot.set_defaults(run=_snapshot)

    check = commands.add_parser("check", help="check rendered trees with smtpd -n and bgpd -n (root)")
    check.add_argument("dir", type=Path)
    check.set_defaults(run=_check)

    secrets = commands.add_parser("secrets", help="the secrets backend")
    secrets_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    init = secrets_commands.add_parser("init", help="create every missing key (never replaces one)")
    init.add_argument("--config", type=Path, required=True)
    init.set_defaults(run=_secrets_init)
    add_lab_command(commands)
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
    except UnsafeValue as error:
        # A value the model's types let through, stopped by a renderer before any file was written.
        print(f"error: {printable(str(error))}, which no setting may hold; nothing was written: correct the stack "
              "file's value that holds it", file=sys.stderr)
        return 2
    except OSError as error:
        # A path given to the tool that cannot be read or written: the path and why, not a traceback.
        where = error.filename or "a file"
        print(f"error: {printable(str(where))}: {error.strerror or type(error).__name__}; check the path and its permissions", file=sys.stderr)
        return 2
