"""rotate-queue-key and rotate-spamd-key: new keys rolled out one host at a time, each host drained
and replaced (backups first, the primary last), so mail keeps flowing throughout."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from ..config import load_site_file, stack_name
from ..model import Site
from ..problems import Problem, SiteConfigError, few, from_validation_error
from ..hosts import HostControl, ssh_control
from ..replacement import automation_replace
from ..rotation import Step, rollout_spamd_key, rotate_site
from ..secrets import host_store
from .options import Parents

_DRAIN_HELP = "how long a host may take to drain (default: mailsite:queue.drainMinutes)"


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    queue_key = commands.add_parser("rotate-queue-key", parents=[parents.config],
                                    help="drain, re-key and replace hosts one at a time (backups first)")
    queue_key.add_argument("--host", help="only this host (default: every host, backups first, the primary last)")
    queue_key.add_argument("--drain-minutes", type=int, help=_DRAIN_HELP)
    queue_key.set_defaults(run=run, spamd_key=False)

    spamd_key = commands.add_parser("rotate-spamd-key", parents=[parents.config],
                                    help="a new site-wide spamd sync key, rolled out one host at a time")
    spamd_key.add_argument("--drain-minutes", type=int, help=_DRAIN_HELP)
    spamd_key.set_defaults(run=run, spamd_key=True, host=None)


def _drain_minutes(site: Site, given: int | None) -> int:
    """--drain-minutes, held to the bounds of the setting it overrides (queue.drainMinutes)."""
    if given is None:
        return site.queue.drain_minutes
    try:
        return type(site.queue).model_validate({**site.queue.model_dump(by_alias=True), "drainMinutes": given}).drain_minutes
    except ValidationError as error:
        raise SiteConfigError([Problem("--drain-minutes", str(given), problem.message) for problem in from_validation_error(error)]) from None


def run(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    if args.host and args.host not in {h.name for h in site.hosts}:
        raise SiteConfigError([Problem("--host", args.host, f"no such host; use one of {few([h.name for h in site.hosts])}")])
    stack = stack_name(args.config)
    project = args.config.resolve().parent
    controls: dict[str, HostControl] = {host.name: ssh_control(host) for host in site.hosts}
    drain_seconds = _drain_minutes(site, args.drain_minutes) * 60
    replace = automation_replace(stack, str(project))
    if args.spamd_key:
        done = rollout_spamd_key(site, stack, host_store(site, project), controls, replace, drain_seconds, report=_report)
    else:
        done = rotate_site(site, stack, host_store(site, project), controls, replace, drain_seconds, only=args.host, report=_report)
    return 0 if done else 1


def _report(step: Step) -> None:
    print(step.message, flush=True)
