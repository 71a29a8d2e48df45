"""lab up|status|send|down|demo|doctor: the site on the real daemons, in network namespaces, from the
command line."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ..errors import UserError
from ..lab.doctor import run_doctor
from ..lab.lab import Lab, teardown
from ..lab.mail import send
from ..lab.scenarios import DEMONSTRATION
from ..lab.summary import NOT_IN_THE_LAB, node_lines, up_lines, versions_line
from ..problems import printable
from ..results import Result, Status, exit_status, print_result, print_results, summary_line
from .doctor import options as doctor_options
from .options import Parents

_TAKEN_DOWN = "interrupted; the lab was taken down"


def register(commands: argparse._SubParsersAction, parents: Parents) -> None:
    lab = commands.add_parser("lab", help="the site on the real daemons, in network namespaces (root)")
    verbs = lab.add_subparsers(dest="lab_command", required=True)
    verbs.add_parser("up", parents=[parents.config], help="bring the stack's site up in the lab and leave it running"
                     ).set_defaults(run=run, interrupted=_TAKEN_DOWN)
    verbs.add_parser("status", help="the lab's nodes, daemons and queues").set_defaults(run=run, interrupted="interrupted")
    send_ = verbs.add_parser("send", help="send one message from the internet node through an MX")
    send_.add_argument("--via", required=True, help="the MX to connect to, by host name (mx2)")
    send_.add_argument("--to", required=True, help="the recipient, like alice@example.org")
    send_.add_argument("--subject", default="mailsite lab test")
    send_.set_defaults(run=run, interrupted="interrupted")
    verbs.add_parser("down", help="stop the lab and remove all of it, also after a crash or a kill").set_defaults(
        run=run, interrupted="interrupted; run lab down again to remove the rest")
    demo = verbs.add_parser("demo", parents=[parents.config], help="up, run the demonstration, print its summary, down (make lab)")
    demo.add_argument("--json", action="store_true",
                      help="print each scenario's result as one JSON object a line; the rest goes to stderr")
    demo.set_defaults(run=run, interrupted=_TAKEN_DOWN)
    doctor = verbs.add_parser("doctor", help="doctor against the running lab, from its internet node (its DNS, its CA)")
    doctor_options(doctor)
    doctor.set_defaults(run=run, interrupted="interrupted")


def run(args: argparse.Namespace) -> int:
    return _VERBS[args.lab_command](args)


def _interruptible() -> None:
    """SIGTERM (a killed make, CI's timeout) takes the lab down as Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def _clean_line(found: list[str], seconds: float) -> str:
    if found:
        return f"lab down in {seconds:.1f} s, NOT clean: {'; '.join(found)}"
    return f"lab down in {seconds:.1f} s: no namespace, process, mount or state left"


def _up(args: argparse.Namespace) -> int:
    _interruptible()
    lab = Lab.up(args.config, stay=True)
    print("\n".join(up_lines(lab)), flush=True)
    first = lab.plan.site.backups[0].name if lab.plan.site.backups else lab.plan.site.primary.name
    user = f"{lab.plan.site.recipients.users[0]}@{lab.plan.site.domains[0]}"
    print(f"try: python -m mailsite lab send --via {first} --to {user}; then: python -m mailsite lab down")
    return 0


def _status(args: argparse.Namespace) -> int:
    lab = Lab.attach()
    _refuse_if_abandoned(lab)
    up = f"up in {lab.state.up_seconds} s" if lab.state.up_seconds is not None else "still coming up"
    print(f"lab of stack {printable(lab.state.stack)}, {up}, {versions_line()}:")
    print("\n".join(node_lines(lab, with_queues=True)))
    return 0 if all(lab.daemons().values()) else 1


def _refuse_if_abandoned(lab: Lab) -> None:
    killed = lab.state.killed_owner()
    if killed is not None:
        # Its daemons may still answer, but nobody runs it: the next `up` cleans it away.
        raise UserError(f"the lab of stack {printable(lab.state.stack)} was left by a killed run (pid {killed.pid});"
                        " run lab down")


def _send(args: argparse.Namespace) -> int:
    lab = Lab.attach()
    if args.via not in lab.plan.addresses():
        raise UserError(f"--via {args.via}: not an MX of the lab; use one of {', '.join(lab.plan.addresses())}")
    sent = send(lab, args.via, args.to, args.subject)
    replies = [line for line in sent.transcript.splitlines() if line.startswith(("<-", "<**"))]
    print(replies[-2] if len(replies) >= 2 else sent.transcript.strip()[-300:])
    print(f"{args.via}: {'accepted' if sent.accepted else f'not accepted (swaks exit {sent.status})'}")
    return 0 if sent.accepted else 1


def _down(args: argparse.Namespace) -> int:
    started = time.monotonic()
    found = teardown()
    print(_clean_line(found, time.monotonic() - started))
    return 1 if found else 0


def _demo(args: argparse.Namespace) -> int:
    _interruptible()
    lab = Lab.up(args.config)
    # --json: stdout holds the results alone, for a machine; what a person reads goes to stderr.
    said = sys.stderr if args.json else sys.stdout
    results = []
    try:
        print("\n".join(up_lines(lab)), file=said, flush=True)
        for scenario in DEMONSTRATION:
            results.append(scenario(lab))
            print_result(results[-1], json=args.json)
    finally:
        started = time.monotonic()
        found = lab.down()
        down = _clean_line(found, time.monotonic() - started)
    # Every reason to exit 1 is a FAIL a reader of the results sees, in JSON too.
    failures = []
    if not results:
        failures.append(Result("demonstration: every scenario ran", Status.FAIL, "no scenario ran",
                               "declare the scenarios in mailsite/lab/scenarios.py with @scenario"))
    if found:
        failures.append(Result("lab down: nothing of the lab left on this machine", Status.FAIL, "; ".join(found),
                               "run python -m mailsite lab down; what it still names, remove by hand"))
    for failure in failures:
        results.append(failure)
        print_result(failure, json=args.json)
    if args.json:
        print(summary_line(results), file=said)
    else:
        print("\nsummary:")
        print_results(results)
    print(down, file=said)
    print("\n".join(NOT_IN_THE_LAB), file=said)
    return exit_status(results)


def _doctor(args: argparse.Namespace) -> int:
    lab = Lab.attach()
    _refuse_if_abandoned(lab)
    options = ["--timeout", args.timeout, *(["--host", args.host] if args.host is not None else []),
               *(["--json"] if args.json else [])]
    return run_doctor(lab, *options)


_VERBS = {"up": _up, "status": _status, "send": _send, "down": _down, "demo": _demo, "doctor": _doctor}
