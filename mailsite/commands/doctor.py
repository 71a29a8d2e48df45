"""doctor: the live site compared with its stack, from outside (DNS, SMTP and TLS, blocklists)
and inside (each host over ssh), one line per check as it is known; exit 0 when nothing FAILs."""

from __future__ import annotations

import argparse
import ipaddress
import math
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import dns.resolver

from ..config import load_site_file, stack_name
from ..doctor.core import Check, all_checks, run_checks
from ..doctor.view import SiteView
from ..hosts import HostControl, end_running_commands, lab_control, ssh_control
from ..model import Host, Site
from ..problems import Problem, SiteConfigError, few
from ..results import Result, Status, exit_status, json_line, print_result, summary_line
from ..secrets import host_store
from ..secrets.store import SecretStore
from .options import Parents

DEFAULT_TIMEOUT = 10.0  # seconds: spamd greets a client it does not know yet one character a second
MAX_TIMEOUT = 300.0
# A check is a few network operations in a row (connect, EHLO, STARTTLS, the handshake): it is
# given this many timeouts before it is reported as not answering.
OPERATIONS_PER_CHECK = 3


# A run that checked nothing must not read as a healthy site to cron or a monitor.
NOTHING_CHECKED = Check("doctor: the site's checks", "doctor", None, lambda: (
    Status.FAIL, "no check to run: this mailsite has no check modules", "install mailsite whole (mailsite/doctor)"))


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    command = commands.add_parser(
        "doctor", parents=[parents.config],
        help="check the live site against the stack: DNS, SMTP and TLS from outside, blocklists, each host over ssh",
        description="Check the live site against its stack file, every check at once: DNS records, each MX's "
                    "ports and certificates as a sender sees them, the DNS blocklists, and each host over ssh "
                    "(queue, bgp sessions, spamd, free space, key versions). One line per check (PASS, WARN or "
                    "FAIL, what was seen, the fix); exit 0 when nothing FAILs (warnings included), 1 otherwise, "
                    "2 for a bad command line or stack file.")
    options(command)
    command.add_argument("--nameserver", metavar="ADDRESS",
                         help="ask this name server (default: this machine's resolver); one that answers "
                              "for the public DNS shows what the world sees")
    # `lab doctor`'s, to run this very command from the lab's internet node against the lab.
    command.add_argument("--lab-state", type=Path, help=argparse.SUPPRESS)
    command.set_defaults(run=run, interrupted="interrupted; no check changes anything, run doctor again")


def options(command: argparse.ArgumentParser) -> None:
    """The options `doctor` and `lab doctor` share."""
    command.add_argument("--host", metavar="NAME",
                         help="only the checks of this host (mx1: its names, ports, listings and insides), "
                              "none of the site's own (MX set, SPF, DKIM, DMARC, MTA-STS), which a run "
                              "without --host makes")
    command.add_argument("--json", action="store_true",
                         help="print each check as one JSON object a line (name, status, seen, fix, seconds, "
                              "area, host: null for the site's) for a monitoring system, and no summary")
    command.add_argument("--timeout", metavar="SECONDS", default=str(DEFAULT_TIMEOUT),
                         help=f"seconds for one network operation (a connect, a DNS query, a command on a host; "
                              f"default {DEFAULT_TIMEOUT:g}); a check unfinished after {OPERATIONS_PER_CHECK} "
                              f"times that is a FAIL, and the others go on")


def timeout_of(text: str) -> float:
    """--timeout in seconds, or the one line saying what to give."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
        raise SiteConfigError([Problem("--timeout", text, f"not a number of seconds above 0 and at most {MAX_TIMEOUT:g}; "
                                                          f"use one like {DEFAULT_TIMEOUT:g}")])
    return seconds


def resolver_of(nameserver: str | None, timeout: float) -> dns.resolver.Resolver:
    if nameserver is None:
        try:
            resolver = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise SiteConfigError([Problem("--nameserver", "(none given)", "this machine has no resolver in "
                                                                            "/etc/resolv.conf; give a name server's address")]) from None
    else:
        try:
            address = ipaddress.ip_address(nameserver)
        except ValueError:
            raise SiteConfigError([Problem("--nameserver", nameserver, "not an IP address; give the name server's "
                                                                       "address, like 9.9.9.9")]) from None
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [str(address)]
    resolver.timeout = resolver.lifetime = timeout
    return resolver


def host_named(site: Site, name: str | None) -> str | None:
    if name is not None and name not in {host.name for host in site.hosts}:
        raise SiteConfigError([Problem("--host", name, f"not a host of the site; use one of {few([h.name for h in site.hosts])}")])
    return name


def _stopped(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    # A monitor's own timeout or `kill` ends doctor as Ctrl-C does: one line, never a silent death.
    # Put back afterwards: a process calling main() (a test) keeps its own.
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _stopped) if main else None
    try:
        return _run(args)
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)


def _run(args: argparse.Namespace) -> int:
    timeout = timeout_of(args.timeout)
    resolver = resolver_of(args.nameserver, timeout)
    view = _lab_view(args.lab_state, resolver, timeout) if args.lab_state else _site_view(args.config, resolver, timeout)
    checks = all_checks(view, host_named(view.site, args.host)) or [NOTHING_CHECKED]
    try:
        results = run_checks(checks, OPERATIONS_PER_CHECK * timeout, report=_printer(checks, args.json))
    finally:
        end_running_commands()  # a check left behind at its deadline leaves no ssh behind the run
    if not args.json:
        print(summary_line(results), flush=True)
    return exit_status(results)


def _printer(checks: list[Check], json: bool) -> Callable[[Result], None]:
    """Each result as it is known (run_checks reports them in the order of `checks`); in JSON
    with its check's area and host (null: the site's), by which a monitor files it."""
    width = max(len(check.name) for check in checks)
    reported = iter(checks)

    def report(result: Result) -> None:
        check = next(reported)
        if json:
            print(json_line(result, {"area": check.area, "host": check.host}), flush=True)
        else:
            print_result(result, width=width)
    return report


def _site_view(config: Path, resolver: dns.resolver.Resolver, timeout: float) -> SiteView:
    site = load_site_file(config)
    stack = stack_name(config)

    def control(host: Host) -> HostControl:
        reach = ssh_control(host)
        reach.timeout = timeout
        return reach
    return SiteView(site, stack, resolver, control, _store(site, config.resolve().parent), cafile=None,
                    now=datetime.now(timezone.utc), timeout=timeout, in_lab=False)


def _lab_view(state_dir: Path, resolver: dns.resolver.Resolver, timeout: float) -> SiteView:
    """The running lab's site (its addresses, its secrets backend), each host entered through its
    holder, certificates verified against the lab's CA."""
    from ..lab.lab import Lab

    lab = Lab.attach(state_dir)
    site = lab.plan.site

    def control(host: Host) -> HostControl:
        # Looked up by the check that asks: a host whose holder is gone fails its own checks, not the run.
        return lab_control(lab.holder(host.name).pid, timeout=timeout)
    return SiteView(site, lab.state.stack, resolver, control, _store(site, lab.dir), cafile=str(lab.ca_certificate),
                    now=datetime.now(timezone.utc), timeout=timeout, in_lab=True)


def _store(site: Site, base: Path) -> Callable[[], SecretStore]:
    return lambda: host_store(site, base)
