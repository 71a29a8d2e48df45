"""rotate-dkim-key: a domain's DKIM key rotated with overlapping selectors (mailsite.dkim_rotation),
one step per run: publish the new selector, sign with it after the record's TTL, withdraw the old
one dkim.retireAfterDays after every host that signs the domain signs with the new one."""

from __future__ import annotations

import argparse
import ipaddress
from datetime import datetime, timezone

from ..config import load_site_file, stack_name
from ..dkim_rotation import DkimStep, dns_lookup, rotate_dkim
from ..facts import key_versions
from ..hosts import HostControl, ssh_control
from ..model import Host
from ..problems import Problem, SiteConfigError, few
from ..secrets import host_store
from .options import Parents


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser("rotate-dkim-key", parents=[parents.config],
                                  help="rotate the domains' DKIM keys one step further (run it again to go on)")
    command.add_argument("--domain", help="only this domain (default: every domain of the site)")
    command.add_argument("--now", action="store_true",
                         help="do not wait out the record's TTL or dkim.retireAfterDays (a key that leaked): "
                              "mail checked against a stale answer fails DKIM")
    command.add_argument("--nameserver", metavar="ADDRESS",
                         help="ask this name server whether the new record is published (default: this machine's resolver)")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    site = load_site_file(args.config)
    if args.domain is not None and args.domain.rstrip(".").lower() not in site.domains:
        raise SiteConfigError([Problem("--domain", args.domain, f"not a domain of the site; use one of {few(site.domains)}")])
    if args.nameserver is not None:
        try:
            ipaddress.ip_address(args.nameserver)
        except ValueError:
            raise SiteConfigError([Problem("--nameserver", args.nameserver, "not an IP address; give the name server's address")]) from None
    stack = stack_name(args.config)
    controls: dict[str, HostControl] = {}

    def signing_on(host: Host, domain: str) -> str | None:
        # Each signing host says which key its image signs with: nothing is withdrawn on faith.
        if host.name not in controls:
            controls[host.name] = ssh_control(host)
        return key_versions(controls[host.name]).get(f"dkim-{domain}")

    done = rotate_dkim(
        site, stack, host_store(site, args.config.resolve().parent),
        now=lambda: datetime.now(timezone.utc),
        lookup=dns_lookup(args.nameserver),
        signing_on=signing_on,
        only=args.domain and args.domain.rstrip(".").lower(), hurry=args.now, report=_report,
    )
    return 0 if done else 1


def _report(step: DkimStep) -> None:
    print(step.message, flush=True)
