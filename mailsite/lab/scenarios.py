"""The demonstration: what the lab proves about the site, one scenario a function.

Each scenario is declared once, by @scenario: its name (the summary's line) and what it proves
(the docs' list, docs/lab-scenarios.md, is generated from it: `python -m mailsite.lab.scenarios`).
It drives the running lab as the world would (mail from the internet node, a host going down, a
route server changing its lists) and returns whether it held and what it saw; the registry turns
that into a Result, which the tests assert on and `make lab` prints. They run in the order they
are declared. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import ssl
import textwrap
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..daemons.dovecot import quota_rule
from ..dns import dns_records, presentation, reverse_records
from ..keys import new_key
from ..model import JUNK_MAILBOX, SPAM_HEADER
from ..results import Result, Status, timed
from ..secrets import host_store, queue_key_id
from . import acme, bgp, imap, mail
from . import mta_sts as lab_mta_sts
from .lab import Lab
from .procs import LabError, wait_until
from .site import outside

DELIVERY_TIMEOUT = 30  # seconds for a relayed message to reach a mailbox
# After the primary returns, a backup's next attempt may wait out smtpd's penalty on the route
# that failed (about 10 s) even after `smtpctl schedule all`.
REDELIVERY_TIMEOUT = 60


class NotTried(Exception):
    """The site lacks what a scenario needs (two backups): said as a WARN, never as a PASS."""


@dataclass(frozen=True)
class Scenario:
    name: str  # one line in the summary: what holds, in the admin's words
    proves: str  # what it proves and how, for the docs
    check: Callable[[Lab], tuple[bool, str]]  # held, and what was seen

    @property
    def id(self) -> str:
        """The function's name: the test's id and the docs' anchor."""
        return self.check.__name__

    def __call__(self, lab: Lab) -> Result:
        def outcome() -> tuple[Status, str, str]:
            try:
                held, seen = self.check(lab)
            except NotTried as reason:
                return Status.WARN, f"not tried: {reason}", "run it on a site that has what it needs"
            except LabError as error:
                held, seen = False, str(error)
            except Exception as error:  # a bug or a surprise in one scenario: the others still run and print
                held, seen = False, f"{type(error).__name__}: {error}"
            if held:
                return Status.PASS, seen, ""
            return Status.FAIL, seen, (f"reproduce with `python -m mailsite lab up --config {lab.state.config}`;"
                                       f" each daemon's log is in {lab.dir}/nodes/<node>/")
        return timed(self.name, outcome)


DEMONSTRATION: list[Scenario] = []  # in the order declared, the order they run


def scenario(name: str, proves: str) -> Callable[[Callable[[Lab], tuple[bool, str]]], Scenario]:
    """Declare a scenario of the demonstration, after those declared above it."""
    def register(check: Callable[[Lab], tuple[bool, str]]) -> Scenario:
        declared = Scenario(name, " ".join(proves.split()), check)
        DEMONSTRATION.append(declared)
        return declared
    return register


def _marker(label: str) -> str:
    return f"mailsite-lab-{label}-{uuid.uuid4().hex[:12]}"


def _delivered_once(lab: Lab, marker: str, timeout: float = DELIVERY_TIMEOUT) -> list:
    wait_until(lambda: mail.delivered(lab, marker), timeout, 0.1)
    return mail.delivered(lab, marker)


def _sent_and_delivered_once(lab: Lab, via: str, to: str, marker: str) -> tuple[Path | None, str]:
    """A stranger's message to `to` through the MX `via`: the one copy delivered, or what went wrong."""
    sent = mail.send(lab, via, to, marker)
    if not sent.accepted:
        return None, f"{via} refused {to} (swaks {sent.status})"
    found = _delivered_once(lab, marker)
    if len(found) != 1:
        return None, f"via {via}: {len(found)} copies delivered, want 1"
    return found[0], ""


def _smtpd_running(lab: Lab, host: str) -> bool:
    return lab.daemons().get(f"{host}/smtpd", False)


def _host_names(lab: Lab) -> tuple[str, list[str]]:
    site = lab.plan.site
    return site.primary.name, [host.name for host in site.backups]


def _dig(lab: Lab, *query: str) -> set[str]:
    argv = ["dig", "+short", "+time=2", "+tries=1", f"@{lab.plan.dns.ipv4}", *query]
    return set(lab.run_in(lab.plan.internet.name, argv, timeout=10).stdout.split("\n")) - {""}


@scenario("dns: the site's records, as dns_records() computes them", proves="""
    The lab's DNS answers, to the internet, exactly the records `dns_records()` and
    `reverse_records()` compute (MX, A, AAAA, SPF, DMARC, MTA-STS, TLS-RPT, SRV, CAA, PTR): the
    values the cloud DNS is given. tests/test_dns.py has real validators read them.""")
def dns_serves_site_records(lab: Lab) -> tuple[bool, str]:
    site, addresses = lab.plan.site, lab.plan.addresses()
    want: dict[tuple[str, str], set[str]] = {}
    for record in dns_records(site, addresses):
        want.setdefault((record.type, record.name), set()).add(presentation(record))
    for pointer in reverse_records(site, addresses):
        want.setdefault(("-x", pointer.address), set()).add(f"{pointer.name}.")
    wrong = [f"{kind} {name}: {sorted(got)}" for (kind, name), values in want.items()
             if (got := _dig(lab, kind, name)) != values]
    return not wrong, "; ".join(wrong) or f"{len(want)} names and types answered as computed"


# The feed: bgp-spamd's route servers, each MX's bgpd, and the job that turns its RIB into
# spamd's lists.

@scenario("bgp: each MX holds the route servers' routes (multihop)", proves="""
    Each MX's bgpd holds an Established eBGP multihop session with every route server, under the
    rendered prefix limit, and exactly the routes they announce, from each.""")
def bgp_sessions(lab: Lab) -> tuple[bool, str]:
    want = bgp.announced(lab)
    feed = lab.plan.site.bgp_spamd
    multihop, limit = feed.multihop, (feed.max_prefixes, feed.max_prefix_restart_minutes)
    problems = []
    for mx in lab.plan.of_kind("mx"):
        states, peers, held = bgp.sessions(lab, mx.name), bgp.neighbors(lab, mx.name), bgp.rib(lab, mx.name)
        for server in lab.plan.of_kind("route-server"):
            address = str(server.ipv4)
            config = peers.get(address, {}).get("config", {})
            if states.get(address) != "Established":
                problems.append(f"{mx.name}-{server.name} is {states.get(address)}")
            elif not config.get("multihop") or config.get("multihop_distance") != multihop:
                problems.append(f"{mx.name}-{server.name} is not multihop {multihop}")
            elif (config.get("max_prefix"), config.get("max_prefix_restart")) != limit:
                problems.append(f"{mx.name}-{server.name} has max-prefix {config.get('max_prefix')} restart {config.get('max_prefix_restart')}")
            elif held.get(address) != want:
                problems.append(f"{mx.name} holds {sorted(held.get(address, []))} from {server.name}")
    servers = len(lab.plan.of_kind("route-server"))
    return not problems, "; ".join(problems) or f"every MX: {servers} sessions Established, multihop {multihop}, max-prefix {limit[0]}, {len(want)} routes each"


def _expected_lists(lab: Lab) -> tuple[list[str], list[str]]:
    bare = lambda prefixes: sorted(p.removesuffix("/32") for p in bgp.host_routes(prefixes))
    return bare(lab.state.blacklist), bare(lab.state.bypass)


def _job_problems(lab: Lab, expected: tuple[list[str], list[str]] | None = None) -> list[str]:
    black, bypass = expected or _expected_lists(lab)
    problems = []
    for mx in lab.plan.of_kind("mx"):
        run = bgp.run_update_job(lab, mx.name)
        if run.status != 0:
            problems.append(f"{mx.name}: the job failed ({run.output.strip()[-200:]})")
        elif (sorted(run.black), sorted(run.bypass)) != (black, bypass) or len(set(run.black)) != len(run.black):
            problems.append(f"{mx.name}: black {run.black}, bypass {run.bypass}")
    return problems


@scenario("update job: spamd's lists are exactly what is announced", proves="""
    The rendered `bgp-spamd-update` job, run on each MX against its live bgpd, writes exactly
    the announced blacklist and bypass addresses, each once (two route servers send each).""")
def update_job_extracts_lists(lab: Lab) -> tuple[bool, str]:
    problems = _job_problems(lab)
    black, bypass = _expected_lists(lab)
    return not problems, "; ".join(problems) or f"every MX: black {' '.join(black)}, bypass {' '.join(bypass)}"


@scenario("a withdrawn route leaves the list at the next job run", proves="""
    A route the route servers withdraw leaves every MX's RIB, and the next job run drops it from
    the list; announced again, it comes back (the lab is left as it was found).""")
def withdrawn_route_disappears(lab: Lab) -> tuple[bool, str]:
    blacklist, bypass = list(lab.state.blacklist), list(lab.state.bypass)
    withdrawn = blacklist[-1]
    mxes = [mx.name for mx in lab.plan.of_kind("mx")]
    lab.announce(blacklist[:-1], bypass)
    try:
        if not wait_until(lambda: all(bgp.routes_received(lab, mx) for mx in mxes), 20, 0.2):
            return False, f"{withdrawn} still in an MX's RIB 20 s after the withdrawal"
        problems = _job_problems(lab)
    finally:
        lab.announce(blacklist, bypass)
    if not wait_until(lambda: all(bgp.routes_received(lab, mx) for mx in mxes), 20, 0.2):
        problems.append(f"{withdrawn} did not come back once announced again")
    return not problems, "; ".join(problems) or f"{withdrawn} withdrawn: gone from every MX's RIB and list at the next run"


# What a wrong or hostile route server might tag with the blacklist community: every IPv4
# sender, and a whole /24 around listed addresses.
WIDE_PREFIXES = ("0.0.0.0/0", "198.51.100.0/24")


@scenario("bgp: only host routes are taken from the feed", proves="""
    Route servers that tag 0.0.0.0/0 and a /24 with the blacklist community reach every MX (they
    are in its Adj-RIB-In), and every MX filters them out: they are not in its RIB (so not in a
    pf table) nor in spamd's list, while the /32s sent beside them are.""")
def feed_takes_only_host_routes(lab: Lab) -> tuple[bool, str]:
    blacklist, bypass = list(lab.state.blacklist), list(lab.state.bypass)
    mxes = [mx.name for mx in lab.plan.of_kind("mx")]
    servers = [str(node.ipv4) for node in lab.plan.of_kind("route-server")]
    wide = set(WIDE_PREFIXES)
    arrived = lambda mx: all(wide <= bgp.received(lab, mx).get(server, set()) for server in servers)
    lab.announce(blacklist + list(WIDE_PREFIXES), bypass)
    problems = []
    try:
        # Seen arriving (Adj-RIB-In) first: a filter is only proven on routes that came in.
        if not wait_until(lambda: all(arrived(mx) for mx in mxes), 20, 0.2):
            return False, f"{sorted(wide)} never reached every MX from every route server"
        for mx in mxes:
            held = set().union(*bgp.rib(lab, mx).values())
            if held & wide:
                problems.append(f"{mx} took {sorted(held & wide)} into its RIB")
            if held != bgp.announced(lab):
                problems.append(f"{mx} holds {sorted(held)}")
        problems += _job_problems(lab)
    finally:
        lab.announce(blacklist, bypass)
    if not wait_until(lambda: all(bgp.routes_received(lab, mx) for mx in mxes), 20, 0.2):
        problems.append("the routes did not return to what was announced before")
    return not problems, "; ".join(problems) or f"{', '.join(sorted(wide))} received and refused by every MX; the /32s beside them kept"


# Host routes a wrong or hostile route server might tag: spamd-setup stops reading a list at
# 0.0.0.0 and wraps 255.255.255.255 around to 0, losing every other address of the list; no mail
# comes from loopback or multicast addresses. bgpd takes them (they are /32s): the job must not.
# A route server sends a prefix once, with one set of communities: these go in the blacklist,
UNLISTABLE = ("0.0.0.0/32", "127.0.0.2/32", "224.0.0.1/32")
UNLISTABLE_BYPASS = "255.255.255.255/32"  # and this in the bypass list.


@scenario("update job: addresses no sender has never reach spamd-setup", proves="""
    Route servers tag 0.0.0.0/32, a loopback and a multicast address as listed and
    255.255.255.255/32 as bypassed; every MX's bgpd takes them, and the update job, reading the
    real bgpctl, writes the lists without them and says so (spamd-setup would stop reading a list
    at 0.0.0.0 and lose every address after it).""")
def job_refuses_addresses_no_sender_has(lab: Lab) -> tuple[bool, str]:
    blacklist, bypass = list(lab.state.blacklist), list(lab.state.bypass)
    before = _expected_lists(lab)
    mxes = [mx.name for mx in lab.plan.of_kind("mx")]
    lab.announce(blacklist + list(UNLISTABLE), bypass + [UNLISTABLE_BYPASS])
    problems = []
    try:
        if not wait_until(lambda: all(bgp.routes_received(lab, mx) for mx in mxes), 20, 0.2):
            return False, f"{[*UNLISTABLE, UNLISTABLE_BYPASS]} never reached every MX's RIB"
        problems += _job_problems(lab, before)
        for mx in mxes:
            said = bgp.run_update_job(lab, mx).output
            if f"refused {len(UNLISTABLE) + 1} prefixes" not in said:
                problems.append(f"{mx}: the job did not say what it refused ({said.strip()[-200:]})")
    finally:
        lab.announce(blacklist, bypass)
    if not wait_until(lambda: all(bgp.routes_received(lab, mx) for mx in mxes), 20, 0.2):
        problems.append("the routes did not return to what was announced before")
    return not problems, "; ".join(problems) or f"{', '.join([*UNLISTABLE, UNLISTABLE_BYPASS])} held by every MX's bgpd, kept out of spamd's lists"


@scenario("update job: no session, the previous lists stay", proves="""
    With both route servers' bgpd stopped, no session is Established and each MX's RIB is empty;
    the update job then fails and leaves spamd's lists as they were (empty lists would let every
    listed sender through). Once the route servers are back, the job refreshes them again.""")
def update_job_keeps_lists_without_sessions(lab: Lab) -> tuple[bool, str]:
    mxes = [mx.name for mx in lab.plan.of_kind("mx")]
    servers = [node.name for node in lab.plan.of_kind("route-server")]
    problems = _job_problems(lab)
    if problems:
        return False, "before the route servers stopped: " + "; ".join(problems)
    before = _expected_lists(lab)
    for server in servers:
        lab.stop_daemon(server, "bgpd")
    try:
        cut_off = lambda mx: "Established" not in bgp.sessions(lab, mx).values() and not bgp.rib(lab, mx)
        if not wait_until(lambda: all(cut_off(mx) for mx in mxes), 20, 0.2):
            return False, "an MX still has a session or routes 20 s after the route servers stopped"
        for mx in mxes:
            run = bgp.run_update_job(lab, mx)
            if run.status == 0:
                problems.append(f"{mx}: the job succeeded with no session")
            if (sorted(run.black), sorted(run.bypass)) != before:
                problems.append(f"{mx}: lists became black {run.black}, bypass {run.bypass}")
    finally:
        for server in servers:
            if not lab.daemons().get(f"{server}/bgpd"):
                lab.start_daemon(server, "bgpd")
    if not wait_until(lambda: all(bgp.routes_received(lab, mx) for mx in mxes), 30, 0.2):
        problems.append("the sessions did not come back")
    else:
        problems += _job_problems(lab)
    return not problems, "; ".join(problems) or "route servers down: the job failed on every MX and kept its lists; back up: refreshed"


# Mail flow, from a stranger on the internet.

@scenario("mail through each backup is delivered on the primary", proves="""
    Mail to a site user through each backup is relayed to the primary and delivered there, once,
    into that user's mailbox on the mail volume: its `Received:` headers show that backup, then
    the primary's smtpd, and no other host, then the primary's Dovecot taking it over LMTP.""")
def backups_relay_to_primary(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    problems = []
    for index, backup in enumerate(backups):
        user = site.recipients.users[index % len(site.recipients.users)]
        delivered, problem = _sent_and_delivered_once(lab, backup, f"{user}@{site.domains[-1]}", _marker(f"via-{backup}"))
        if delivered is None:
            problems.append(problem)
            continue
        hops = mail.received_chain(delivered.read_bytes())
        by = [f"by {site.host(name).mx_name} " for name in (primary, backup)]
        stored = mail.stored_by(delivered.read_bytes())
        if len(hops) != 2 or by[0] not in hops[0] or by[1] not in hops[1]:
            problems.append(f"via {backup}: hops were {hops}")
        elif by[0] not in stored:
            problems.append(f"via {backup}: not stored by {primary}'s Dovecot over LMTP")
        elif mail.mailbox_of(lab, delivered) != user:
            problems.append(f"via {backup}: delivered to {delivered}, not {user}'s mailbox")
    return not problems, "; ".join(problems) or f"via {', '.join(backups)}: each delivered once on {primary}, stored by its Dovecot"


# GTUBE, as rspamd 3 reads it (its "GTUBE-like test patterns", rspamd_check_gtube): this one it
# rejects; with gtube_patterns = "all" (the lab's, never a host's) the same string starting YJS
# gets "add header", marked as junkScore would.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_MARKED = "Y" + GTUBE[1:]
RSPAMD_LOG = "/var/log/rspamd/rspamd.log"  # the package's log on the primary (OpenBSD's too)


def _bounced_to(lab: Lab, marker: str, saying: str, timeout: float = DELIVERY_TIMEOUT) -> list[Path]:
    """The bounces of `marker` in the outside domain's Maildir that say `saying`."""
    def found() -> list[Path]:
        return [path for path in lab.outside_maildir().glob("*/*") if path.parent.name in ("new", "cur")
                and marker.encode() in (data := path.read_bytes()) and saying.encode() in data]
    wait_until(found, timeout, 0.1)
    return found()


@scenario("spam: rspamd's GTUBE is refused by the primary, and bounces to its sender through a backup", proves="""
    A message carrying GTUBE (the standard test string rspamd rejects) sent from the internet
    straight to the primary is refused at the end of DATA with rspamd's reply (550 Gtube
    pattern), from smtpd's filter-rspamd, and stored nowhere. Sent through a backup, which runs
    no rspamd, it is taken (250), relayed, refused by the primary in the same way, and the backup
    returns it to its sender (a bounce naming the 550 arrives at the sender's MTA in the outside
    domain), as any refused relay is: nothing is lost silently, nothing reaches the mailbox.""")
def gtube_is_rejected(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    to = f"{site.recipients.users[0]}@{site.domains[0]}"
    marker = _marker("gtube")
    direct = mail.send(lab, primary, to, marker, GTUBE)
    if direct.accepted or not direct.refusal.startswith("550") or "Gtube pattern" not in direct.refusal:
        return False, f"{primary} answered GTUBE with {direct.refusal or 'acceptance'} (swaks {direct.status}), want 550 Gtube pattern"
    seen = [f"{primary}: {direct.refusal}"]
    if not backups:
        return not mail.delivered(lab, marker), seen[0]
    backup = backups[0]
    sender = f"sender@{outside(lab.plan).domain}"
    relayed_marker = _marker("gtube-relayed")
    relayed = mail.send(lab, backup, to, relayed_marker, GTUBE, sender=sender)
    if not relayed.accepted:
        return False, f"{backup} refused GTUBE ({relayed.refusal}): a backup runs no rspamd and takes it"
    bounces = _bounced_to(lab, relayed_marker, "Gtube pattern")
    if len(bounces) != 1:
        return False, (f"{len(bounces)} bounces naming Gtube pattern reached {sender} from {backup}, want 1; "
                       f"{backup}'s queue: {mail.queue(lab, backup)}")
    if delivered := mail.delivered(lab, marker) + mail.delivered(lab, relayed_marker):
        return False, f"GTUBE delivered into a mailbox: {delivered[0]}"
    seen.append(f"via {backup}: taken, refused by {primary} on relay, bounced to {sender}")
    return True, "; ".join(seen)


def rspamd_client_ip(lab: Lab, message_id: str, timeout: float = 10) -> str:
    """The address rspamd on the primary scored the message `message_id` as coming from, by its
    log line (ip: ...), "" if none."""
    log = lab.path_on(lab.plan.site.primary.name, RSPAMD_LOG)
    line = re.compile(rf"id: <{re.escape(message_id)}>, qid: <[^>]*>, ip: ([^,\s]+),")

    def found() -> str:
        match = line.search(log.read_text(errors="replace")) if log.exists() else None
        return match[1] if match else ""
    wait_until(found, timeout, 0.1)
    return found()


@scenario("spam: mail a backup relays is scored on the sender it came from, not on the backup", proves="""
    A message from the internet node through a backup reaches the primary's rspamd from the
    backup's address; rspamd's external_relay (ip_map of the backups' addresses, from the model)
    reads the Received: header the backup wrote and scores the message on the internet node's
    address, as rspamd's own log line for it says (ip:), not the backup's. A message sent
    straight to the primary is scored on the same address. The spam verdict each arrives with
    (an X-Spam-Status of the sender's) is gone from the copy stored in the mailbox.""")
def relayed_mail_is_scored_on_its_sender(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    if not backups:
        raise NotTried("needs a backup; this site has none")
    sender_ip = str(lab.plan.internet.ipv4)
    to = f"{site.recipients.users[0]}@{site.domains[0]}"
    seen = []
    for via in (backups[0], primary):
        marker = _marker(f"scored-via-{via}")
        message_id = f"{marker}@{mail.SENDER_HELO}"
        upstream = f"{marker}-upstream-verdict"
        sent = mail.send(lab, via, to, marker, headers=[f"Message-Id: <{message_id}>", f"X-Spam-Status: Yes, {upstream}"])
        if not sent.accepted:
            return False, f"{via} refused a plain message ({sent.refusal})"
        if not (delivered := _delivered_once(lab, marker)):
            return False, f"via {via}: not delivered on {primary} within {DELIVERY_TIMEOUT} s"
        if upstream.encode() in delivered[0].read_bytes():
            return False, f"via {via}: the X-Spam-Status the message came with reached the mailbox"
        scored = rspamd_client_ip(lab, message_id)
        if scored != sender_ip:
            relay = str(lab.plan.node(via).ipv4)
            return False, (f"via {via}: rspamd scored it as from {scored or 'nothing (no log line)'}"
                           f"{' (the backup itself)' if scored == relay else ''}, want the sender's {sender_ip}")
        seen.append(f"via {via}: {scored}")
    return True, (f"rspamd on {primary} scored the internet node's mail on its address {sender_ip} ({'; '.join(seen)}); "
                  "its own X-Spam-Status removed")


def _connections_from(lab: Lab, host: str, source: str) -> list[str]:
    """Lines of `host`'s smtpd log where `source` (a lab node) connected to it."""
    node = lab.plan.node(source)
    addresses = (f"address={node.ipv4} ", f"address=[{node.ipv6}] ")
    log = mail.smtpd_log(lab, host).splitlines()
    return [line for line in log if " smtp connected " in line and any(address in line for address in addresses)]


WORST_BACKUP_MESSAGES = 3


@scenario("every MX up: the worst backup relays to the primary only", proves="""
    With every MX up, the worst backup relays straight to the primary (best preference), never
    to a backup in between: MX preference is what smtpd's `relay backup mx` follows. Checked in
    the middle backups' logs, the worst backup's log and the delivered headers.""")
def worst_backup_relays_to_primary(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    if len(backups) < 2:
        raise NotTried(f"needs two backups; this site has {len(backups)}")
    worst, middle = backups[-1], backups[:-1]
    markers = [_marker(f"via-{worst}") for _ in range(WORST_BACKUP_MESSAGES)]
    for marker in markers:
        if not mail.send(lab, worst, f"{site.recipients.users[0]}@{site.domains[0]}", marker).accepted:
            return False, f"{worst} refused a site user's mail"
    problems = []
    for marker in markers:
        found = _delivered_once(lab, marker)
        if len(found) != 1:
            problems.append(f"{len(found)} copies of one message")
            continue
        first_hop = mail.received_chain(found[0].read_bytes())[0]
        if f"from {site.host(worst).mx_name} " not in first_hop:
            problems.append(f"reached {primary} from elsewhere: {first_hop}")
    for name in middle:
        if seen := _connections_from(lab, name, worst):
            problems.append(f"{worst} connected to {name}: {seen[0]}")
    relayed = [line for line in mail.smtpd_log(lab, worst).splitlines() if " mta delivery " in line and 'result="Ok"' in line]
    wrong = [line for line in relayed if f"({site.primary.mx_name})" not in line]
    if wrong:
        problems.append(f"{worst} relayed elsewhere: {wrong[0]}")
    return not problems, "; ".join(problems) or f"{WORST_BACKUP_MESSAGES} messages: {worst} -> {primary}, {', '.join(middle)} never contacted"


@scenario("no open relay: every MX refuses a foreign domain", proves="""
    No MX relays for strangers: mail to a foreign domain is refused with a 5xx at RCPT, so the
    sender is told at once and nothing bounces later.""")
def no_open_relay(lab: Lab) -> tuple[bool, str]:
    open_ = [mx.name for mx in lab.plan.of_kind("mx")
             if not mail.send(lab, mx.name, "someone@foreign.test", _marker("relay")).refused_permanently]
    return not open_, f"relayed or did not refuse with 5xx: {', '.join(open_)}" if open_ else "every MX refuses someone@foreign.test with 5xx"


@scenario("backups refuse unknown recipients and domains", proves="""
    Backups accept only the site's own recipients: an unknown user in a site domain, and a site
    user's name at a domain that is not the site's, are refused at RCPT (no backscatter).""")
def backups_refuse_unknown(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    _, backups = _host_names(lab)
    recipients = [f"nobody-here@{site.domains[0]}", f"{site.recipients.users[0]}@unknown-domain.test"]
    accepted = [f"{backup} took {to}" for backup in backups for to in recipients
                if not mail.send(lab, backup, to, _marker("unknown")).refused_permanently]
    return not accepted, "; ".join(accepted) or f"{', '.join(backups)} refuse {' and '.join(recipients)} with 5xx"


def _recipient_probes(lab: Lab) -> list[str]:
    """Addresses a sender might use: every user and alias, as written, in capitals and with a
    +tag; tags of other shapes; unknown users, domains and a bare postmaster."""
    site = lab.plan.site
    first, last = site.domains[0], site.domains[-1]
    user = site.recipients.users[0]
    probes = []
    for part in site.recipients.local_parts():
        probes += [f"{part}@{first}", f"{part}+lists@{last}", f"{part.upper()}@{first.upper()}"]
    # An unknown name in every domain: a catch-all domain takes it, another refuses it.
    probes += [f"nobody-here@{domain}" for domain in site.domains]
    return probes + [
        f"{user}+@{first}", f"{user}+a+b@{last}", f"nobody-here+{user}@{first}",
        f"{user}@unknown-domain.test", f"{user}@sub.{first}", "postmaster",
    ]


def _rcpt_answer(sent: mail.Sent) -> str:
    if sent.accepted:
        return "taken"
    return "refused (5xx)" if sent.refused_permanently else f"not answered (swaks {sent.status})"


@scenario("every MX takes exactly the recipients the primary takes (+tags included)", proves="""
    The same recipients at RCPT on every MX: each user and alias as written, in capitals and
    with a +tag, an unknown name in each domain (a catch-all domain takes it), unknown users
    (tagged or not), an unknown domain, a subdomain and a bare postmaster. The primary takes
    exactly what the site's recipients say exists (`Site.accepts`), and every backup answers each address as the primary does: a backup that
    refused what the primary takes would lose mail while the primary is away; one that took
    more would bounce it later.""")
def every_mx_takes_what_the_primary_takes(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    probes = _recipient_probes(lab)
    problems = []
    for address in probes:
        answers = {mx: _rcpt_answer(mail.recipient_taken(lab, mx, address)) for mx in [primary, *backups]}
        expected = "taken" if site.accepts(address) else "refused (5xx)"
        if answers[primary] != expected:
            problems.append(f"{primary} {answers[primary]} {address}, the site's recipients say {expected}")
        problems += [f"{mx} {answer} {address}, {primary} {answers[primary]}"
                     for mx, answer in answers.items() if answer != answers[primary]]
    taken = sum(site.accepts(address) for address in probes)
    return not problems, "; ".join(problems) or f"{len(probes)} addresses, {taken} taken, the same on {primary} and {', '.join(backups)}"


# TLS, as the world meets it: STARTTLS on port 25, TLS required between the MXes, the MSA on the
# primary (587 and 465) for the site's users, certificates from the lab's own CA, made per up.

@scenario("tls: mail from the internet comes in over STARTTLS on every MX", proves="""
    A stranger's MTA on the internet node sends to a site user through each MX with STARTTLS
    required (swaks --tls: no TLS, no mail). Each MX takes it, and the `Received:` header that MX
    wrote says the session was TLS (`with ESMTPS`, protocol and cipher).""")
def internet_mail_over_starttls(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    problems, ciphers = [], set()
    for index, host in enumerate(site.hosts):
        user = site.recipients.users[index % len(site.recipients.users)]
        marker = _marker(f"starttls-{host.name}")
        sent = mail.send(lab, host.name, f"{user}@{site.domains[0]}", marker)
        if not sent.accepted or not sent.tls:
            problems.append(f"{host.name} did not take mail over STARTTLS (swaks {sent.status}: {sent.refusal or 'no TLS'})")
            continue
        ciphers.add(sent.tls)
        found = _delivered_once(lab, marker)
        if len(found) != 1:
            problems.append(f"via {host.name}: {len(found)} copies delivered, want 1")
        elif not mail.over_tls(hop := mail.received_by(found[0].read_bytes(), host.mx_name)):
            problems.append(f"{host.name}'s Received: does not say TLS: {hop or 'none'}")
    return not problems, "; ".join(problems) or f"every MX took it over {', '.join(sorted(ciphers))}; each Received: says ESMTPS"


def _in_clear(session: list[str]) -> bool:
    """Whether a relay session (mail.relay_sessions) went without STARTTLS required of it."""
    return not any(" mta connecting address=smtp+tls://" in line for line in session)


def _certificate_checks(sessions: list[list[str]]) -> str:
    """What the relaying smtpd said of the primary's certificate: `valid` when it verified it,
    `unverified` when it was told not to (`tls no-verify`)."""
    results = sorted({line.split('cert-check result="', 1)[1].split('"', 1)[0]
                      for session in sessions for line in session if ' mta cert-check result="' in line})
    return ", ".join(results) or "none logged"


@scenario("tls: each backup relays to the primary over STARTTLS, never in clear", proves="""
    Mail through each backup reaches the primary over TLS: the `Received:` header the primary
    wrote names the backup and says TLS (`with ESMTPS`, protocol and cipher), and the backup's
    smtpd logged the session that relayed it as one that requires STARTTLS (`smtp+tls://`, from
    `relay backup mx ... tls`) and verified the primary's certificate for its MX name (the lab's CA
    stands in for the site's ACME CA).""")
def backups_relay_over_tls(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    problems, relayed = [], []
    for backup in backups:
        before = len(mail.smtpd_log(lab, backup).splitlines())
        delivered, problem = _sent_and_delivered_once(lab, backup, f"{site.recipients.users[0]}@{site.domains[0]}",
                                                      _marker(f"relay-tls-{backup}"))
        if delivered is None:
            problems.append(problem)
            continue
        hop = mail.received_by(delivered.read_bytes(), site.primary.mx_name)
        if f"from {site.host(backup).mx_name} " not in hop or not mail.over_tls(hop):
            problems.append(f"{primary}'s Received: is not from {backup} over TLS: {hop or 'none'}")
        sessions = mail.relay_sessions(lab, backup, before)
        if not sessions or any(_in_clear(session) for session in sessions):
            problems.append(f"{backup} relayed without requiring STARTTLS: {sessions or 'no relay logged'}")
        relayed += sessions
    return not problems, "; ".join(problems) or (f"{', '.join(backups)} -> {primary}: smtp+tls://, Received: says TLS;"
                                                 f" certificate {_certificate_checks(relayed)}")


def _refused(sent: mail.Sent, status: int, reply: str, saying: str) -> str:
    """"" when swaks ended with `status` on a reply starting `reply` and `saying` what is missing,
    else what happened."""
    if sent.status == status and sent.refusal.startswith(reply) and saying in sent.refusal:
        return ""
    return f"swaks {sent.status}, {sent.refusal or 'no refusal'}"


@scenario("submission: no mail without TLS, without AUTH, or with a wrong password", proves="""
    The MSA on the primary (587, `tls-require` and `auth`) refuses a site user's mail client that
    skips STARTTLS (530 at MAIL FROM; AUTH is not even offered in clear, so no password crosses
    the wire unencrypted), that has TLS but
    does not authenticate (530 at MAIL FROM), and that authenticates with a wrong password (535);
    465 refuses the wrong password too. Nothing of theirs is delivered.""")
def submission_refuses_the_unauthenticated(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user, to = site.recipients.users[0], f"{site.recipients.users[-1]}@{site.domains[0]}"
    marker = _marker("refused-submission")
    wrong = "not-the-password"
    # Refused at MAIL FROM (swaks 23) saying what is missing, or at AUTH (swaks 28).
    attempts = {
        "587 in clear": (mail.submit(lab, user, to, marker, password=None, protection="none"), 23, "530", "STARTTLS"),
        "587 with TLS, no AUTH": (mail.submit(lab, user, to, marker, password=None), 23, "530", "AUTH"),
        "587 with TLS, wrong password": (mail.submit(lab, user, to, marker, password=wrong), 28, "535", ""),
        "465, wrong password": (mail.submit(lab, user, to, marker, password=wrong, protection="smtps"), 28, "535", ""),
    }
    problems = [f"{what}: {why}" for what, (sent, status, reply, saying) in attempts.items()
                if (why := _refused(sent, status, reply, saying))]
    if "AUTH" in attempts["587 in clear"][0].offered_in_clear:
        problems.append("587 offers AUTH in clear")
    time.sleep(1)  # a message taken after all would be in the maildir by now
    if mail.delivered(lab, marker):
        problems.append("a refused client's message was delivered")
    said = sorted({attempt[0].refusal.split(" ", 1)[0] for attempt in attempts.values()})
    return not problems, "; ".join(problems) or f"{'; '.join(attempts)}: each refused ({', '.join(said)}), nothing delivered"


@scenario("submission: a user with TLS and the password sends, to the site and out", proves="""
    A site user's mail client on the internet node, over STARTTLS on 587 with the user's password
    (AUTH PLAIN, checked against the bcrypt hash in the primary's credentials table), sends to
    another site user:
    delivered once, its `Received:` says ESMTPSA (TLS and authenticated); and the primary takes a
    recipient outside the site from it (relaying for an authenticated user), which it refuses
    to a stranger on port 25.""")
def user_submits_with_tls_and_password(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user, to = site.recipients.users[0], f"{site.recipients.users[-1]}@{site.domains[0]}"
    marker = _marker("submission")
    sent = mail.submit(lab, user, to, marker, password=lab.password(user))
    if not sent.accepted or not sent.tls:
        return False, f"{user}'s mail was not taken over TLS (swaks {sent.status}: {sent.refusal or 'no TLS'})"
    found = _delivered_once(lab, marker)
    if len(found) != 1:
        return False, f"{len(found)} copies delivered, want 1"
    hop = mail.received_by(found[0].read_bytes(), site.primary.mx_name)
    if " with ESMTPSA " not in hop or not mail.over_tls(hop):
        return False, f"the Received: does not say TLS and AUTH: {hop or 'none'}"
    outside = "someone@foreign.test"
    relayed = mail.submit(lab, user, outside, marker, password=lab.password(user), quit_after="RCPT")
    if not relayed.accepted:
        return False, f"{user} may not send to {outside} (swaks {relayed.status}: {relayed.refusal})"
    return True, f"{user} -> {to} over {sent.tls}, delivered once (ESMTPSA); {outside} taken at RCPT"


@scenario("submission: a user sends as the site's addresses that reach the user's mailbox, no other", proves="""
    A site user authenticated on 587 may give as sender an address of the site that reaches the
    user's mailbox (the user's own in another domain, an alias onto the user), and is refused
    at MAIL FROM (530 Sender rejected, the `senders <sendas>` table) as another site user or as an address
    outside the site, so a leaked password cannot send as the site's other users or forge
    anyone else's mail through the site.""")
def user_sends_only_as_own_addresses(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user, other = site.recipients.users[0], site.recipients.users[-1]
    to = f"{other}@{site.domains[0]}"
    own = [f"{user}@{site.domains[-1]}"] + [f"{alias}@{site.domains[0]}" for alias, target
                                            in site.recipients.aliases.items() if target == user]
    foreign = [f"{other}@{site.domains[0]}", f"ceo@{outside(lab.plan).domain}"]
    marker = _marker("senders")
    problems = []
    for sender in own + foreign:
        sent = mail.submit(lab, user, to, marker, password=lab.password(user), quit_after="RCPT", sender=sender)
        if sender in own and not sent.accepted:
            problems.append(f"{user} may not send as {sender} (swaks {sent.status}: {sent.refusal})")
        elif sender in foreign and (why := _refused(sent, 23, "530", "Sender rejected")):
            problems.append(f"{user} sending as {sender}: {why}")
    return not problems, "; ".join(problems) or f"{user} sends as {', '.join(own)}; refused as {', '.join(foreign)}"


@scenario("smtps: 465 speaks TLS at once, with the site's certificate, verified by the lab CA", proves="""
    A mail client on the internet node that opens TLS at once on 465 (no STARTTLS) and verifies the
    certificate for the primary's MX name against the lab CA alone (swaks --tls-verify
    --tls-ca-path) gets the certificate at the site's pki path on the primary (`tls.certificate`),
    which also verifies here, by another verifier, against this up's lab CA; the user then
    authenticates and the message is delivered.""")
def smtps_with_the_site_certificate(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary = site.primary
    name, path = primary.mx_name, site.tls.certificate_for(primary)
    probe = mail.verifying(lab, primary.name, name, smtps=True, lab_ca_only=True)
    if not probe.accepted or not probe.certificate_check.startswith("passed CA verification, passed host verification"):
        return False, f"465 did not verify for {name} (swaks {probe.status}): {probe.certificate_check or probe.refusal or 'no TLS'}"
    on_disk = lab.run_in(primary.name, ["cat", path], timeout=10).stdout
    if not on_disk or probe.peer_certificate != on_disk:
        return False, f"465 presented a certificate other than {path}"
    if why := mail.issued_by(lab.ca_certificate, probe.peer_certificate, name):
        return False, f"{path} is not {name}'s under this lab's CA: {why}"
    user, marker = site.recipients.users[0], _marker("smtps")
    sent = mail.submit(lab, user, f"{user}@{site.domains[0]}", marker, password=lab.password(user), protection="smtps")
    if not sent.accepted:
        return False, f"{user} could not send on 465 (swaks {sent.status}: {sent.refusal})"
    found = _delivered_once(lab, marker)
    if len(found) != 1:
        return False, f"{len(found)} copies delivered, want 1"
    return True, f"{probe.tls} from the first byte, {path} verified for {name}; {user}'s mail delivered"


@scenario("tls: a client that verifies names accepts each MX name, and refuses another", proves="""
    For every MX name the DNS gives the site's domains, a client that verifies certificates (as
    MTA-STS senders and mail clients do) looks up its address, says STARTTLS there and checks the
    certificate against its trusted CAs and for that name: each passes, and each certificate
    verifies here against this up's lab CA. The same client asking the primary for a backup's
    name is refused before any mail command: the check is real, and no MX's certificate
    stands in for another's.""")
def verifying_client_accepts_each_mx_name(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    names = sorted({answer.split()[-1].rstrip(".") for domain in site.domains for answer in _dig(lab, "MX", domain)})
    by_address = {str(node.ipv4): node.name for node in lab.plan.of_kind("mx")}
    problems = []
    for name in names:
        addresses = _dig(lab, "A", name)
        if len(addresses) != 1 or next(iter(addresses)) not in by_address:
            problems.append(f"{name} resolves to {sorted(addresses)}, not one MX")
            continue
        via = by_address[next(iter(addresses))]
        sent = mail.verifying(lab, via, name)
        if not sent.accepted or not sent.certificate_check.startswith("passed CA verification, passed host verification"):
            problems.append(f"{name}: swaks {sent.status}, {sent.certificate_check or 'no certificate seen'}")
        elif why := mail.issued_by(lab.ca_certificate, sent.peer_certificate, name):
            problems.append(f"{name}: not under this lab's CA: {why}")
    if not names:
        problems.append("the DNS gave no MX name")
    _, backups = _host_names(lab)
    wrong = site.host(backups[0]).mx_name if backups else f"wrong.{site.domains[0]}"
    refused = mail.verifying(lab, site.primary.name, wrong)
    if refused.status != 29 or "failed host verification" not in refused.certificate_check:
        problems.append(f"{site.primary.name}'s certificate was not refused for {wrong} (swaks {refused.status}: {refused.certificate_check})")
    return not problems, "; ".join(problems) or f"{', '.join(names)} each verified by name; {site.primary.name} refused as {wrong}"


# Mailboxes: Dovecot on the primary, reached as a user's mail client reaches it.

def _in_mailbox(lab: Lab, user: str, subjects: list[str], timeout: float = DELIVERY_TIMEOUT,
                folder: str = "INBOX") -> dict[str, int]:
    """How many messages with each of `subjects` the user's INBOX (or `folder`) holds, read over
    IMAPS with the user's password, waiting (bounded) until each is there once."""
    counts: dict[str, int] = {}
    with imap.mailbox(lab, user, lab.password(user), folder) as box:
        def arrived() -> bool:
            box.noop()
            counts.update({subject: len(box.uids(subject)) for subject in subjects})
            return all(count >= 1 for count in counts.values())
        wait_until(arrived, timeout, 0.1)
        time.sleep(0.5)  # a second copy would come now
        box.noop()
        counts.update({subject: len(box.uids(subject)) for subject in subjects})
    return counts


def _only_in(lab: Lab, marker: str, user: str) -> str:
    """"" when the one stored copy of `marker` is in `user`'s mailbox on the volume, else where it is."""
    found = mail.delivered(lab, marker)
    owners = sorted(mail.mailbox_of(lab, path) for path in found)
    return "" if owners == [user] else f"{marker} stored in {owners or 'no mailbox'}, want {user}'s only"


@scenario("imap: mail through each backup and directly ends in the user's INBOX, read over IMAPS", proves="""
    A stranger's message to a site user sent to the primary directly and through each backup is
    stored once, by the primary's Dovecot, in that user's mailbox on the mail volume, and the
    user reads it in the INBOX over IMAPS (993, TLS from the first byte) with the user's
    password, as a mail client does: the certificate verified against the lab CA alone for the
    primary's MX name, and it is the certificate at the site's pki path. Plain IMAP (143) is
    closed, and the certificate is refused for another MX's name.""")
def mail_reaches_the_inbox_over_imaps(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    users = site.recipients.users
    sent: dict[str, list[str]] = {}
    problems = []
    for index, via in enumerate([primary, *backups]):
        user, domain = users[index % len(users)], site.domains[index % len(site.domains)]
        marker = _marker(f"inbox-{via}")
        result = mail.send(lab, via, f"{user}@{domain}", marker)
        if not result.accepted:
            problems.append(f"{via} refused {user}@{domain} (swaks {result.status})")
            continue
        sent.setdefault(user, []).append(marker)
    for user, markers in sent.items():
        counts = _in_mailbox(lab, user, markers)
        problems += [f"{user}'s INBOX holds {count} copies of {marker}, want 1" for marker, count in counts.items() if count != 1]
        problems += [why for marker in markers if (why := _only_in(lab, marker, user))]
    presented, why = imap.certificate_seen(lab)
    on_disk = lab.path_on(primary, site.tls.certificate_for(site.primary), tree="dovecot").read_text()
    if why or presented.strip() != on_disk.strip():
        problems.append(f"993 presented {'another certificate than ' + site.tls.certificate_for(site.primary) if not why else why}")
    elif why := mail.issued_by(lab.ca_certificate, presented, site.primary.mx_name):
        problems.append(f"993's certificate is not {site.primary.mx_name}'s under this lab's CA: {why}")
    wrong = site.host(backups[0]).mx_name if backups else f"wrong.{site.domains[0]}"
    if not imap.refused_name(lab, wrong):
        problems.append(f"993's certificate verified for {wrong}")
    if imap.port_open(lab, imap.IMAP):
        problems.append("plain IMAP (143) is open")
    vias = ", ".join([primary, *backups])
    return not problems, "; ".join(problems) or (f"via {vias}: each in its user's INBOX once, read over IMAPS "
                                                 f"({site.primary.mx_name} verified by the lab CA); 143 closed")


@scenario("imap: aliases, a catch-all and +tags land in the right mailbox", proves="""
    A message to each alias of a user (postmaster, abuse...), to each user with a +tag, and to
    an unknown name of a catch-all domain, from a stranger through the primary, is stored once,
    in the mailbox of the user it names (the one Dovecot files it under, after smtpd's virtual
    table sent it there as that user's address), and that user reads it in the INBOX over
    IMAPS.""")
def aliases_and_tags_reach_the_right_mailbox(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    recipients = site.recipients
    domain = site.domains[-1]
    wanted = {f"{part}@{domain}": target for part, target in recipients.aliases.items() if "@" not in target}
    wanted |= {f"{user}+tag-{index}@{site.domains[index % len(site.domains)]}": user for index, user in enumerate(recipients.users)}
    wanted |= {f"nobody-here-{index}@{catch_all}": user for index, (catch_all, user) in enumerate(recipients.catch_all.items())}
    markers: dict[str, tuple[str, str]] = {}
    problems = []
    for address, user in wanted.items():
        marker = _marker("alias")
        if not mail.send(lab, site.primary.name, address, marker).accepted:
            problems.append(f"{site.primary.name} refused {address}")
            continue
        markers[marker] = (address, user)
    for user in sorted({user for _, user in markers.values()}):
        mine = [marker for marker, (_, owner) in markers.items() if owner == user]
        counts = _in_mailbox(lab, user, mine)
        problems += [f"{markers[marker][0]}: {count} copies in {user}'s INBOX, want 1" for marker, count in counts.items() if count != 1]
        problems += [f"{markers[marker][0]}: {why}" for marker in mine if (why := _only_in(lab, marker, user))]
    said = ", ".join(f"{address} -> {user}" for address, user in wanted.items())
    return not problems, "; ".join(problems) or f"{said}: each once, in that INBOX"


@scenario("junk: mail rspamd marks lands in the user's Junk folder, read over IMAPS", proves="""
    A stranger's message that rspamd marks without refusing it (GTUBE's add-header variant, which
    the lab's rspamd alone knows, standing for a score from spam.junkScore), sent to a user through
    the primary, is taken and stored once, and the user's mail client finds it over IMAPS in the
    Junk folder, not in the INBOX: smtpd's rspamd filter marked it (X-Spam: yes) and Dovecot's
    Sieve script filed it.""")
def marked_message_lands_in_junk(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, user = site.primary.name, site.recipients.users[0]
    to = f"{user}@{site.domains[-1]}"
    marker = _marker("junk")
    sent = mail.send(lab, primary, to, marker, GTUBE_MARKED)
    if not sent.accepted:
        return False, f"{primary} refused {marker} ({sent.refusal or f'swaks {sent.status}'}), want it taken marked"
    count = _in_mailbox(lab, user, [marker], folder=JUNK_MAILBOX)[marker]
    if count != 1:
        return False, f"{user}'s {JUNK_MAILBOX} holds {count} copies of {marker}, want 1"
    if why := _only_in(lab, marker, user):
        return False, why
    with imap.mailbox(lab, user, lab.password(user)) as box:
        if box.uids(marker):
            return False, f"{marker} is in {user}'s INBOX too"
    name, mark = SPAM_HEADER
    return True, f"GTUBE's add-header variant to {to}: marked {name}: {mark}, in {user}'s {JUNK_MAILBOX} over IMAPS, not the INBOX"


@scenario("imap and submission: a wrong password is refused, the user's own taken", proves="""
    Over IMAPS, a user's login with a wrong password is refused (AUTHENTICATIONFAILED), and the
    user's own password is taken, logging in as the bare name and as name@domain for each site
    domain (one mailbox). On submission (587, STARTTLS) another user's password is refused (535)
    and the user's own taken: smtpd's credentials table and Dovecot's passwd-file hold the same
    hashes.""")
def wrong_password_is_refused(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user, other = site.recipients.users[0], site.recipients.users[-1]
    problems = []
    # Dovecot answers a failed login after a pause (auth_failure_delay, 2 s), and then makes
    # every login from that client's address (an IPv6 /48) wait longer: the failure goes over
    # IPv6 while the logins over IPv4 run beside it, so that they, and the other scenarios' (all
    # from the internet node), wait for nothing.
    with ThreadPoolExecutor(1) as pool:
        wrong = pool.submit(imap.login_answer, lab, user, "not-the-password", ipv6=True)
        logins = [user] + [f"{user}@{domain}" for domain in site.domains]
        taken = {login: imap.login_answer(lab, login, lab.password(user)) for login in logins}
        refused = wrong.result()
    if not refused.startswith("refused") or "AUTHENTICATIONFAILED" not in refused:
        problems.append(f"IMAP took {user} with a wrong password: {refused}")
    problems += [f"IMAP refused {login} with the password: {answer}" for login, answer in taken.items() if answer != "accepted"]
    to = f"{other}@{site.domains[0]}"
    others = mail.submit(lab, user, to, _marker("wrong"), password=lab.password(other), quit_after="RCPT")
    own = mail.submit(lab, user, to, _marker("right"), password=lab.password(user), quit_after="RCPT")
    if others.status != 28 or not others.refusal.startswith("535"):
        problems.append(f"submission took {user} with {other}'s password (swaks {others.status}: {others.refusal})")
    if not own.accepted:
        problems.append(f"submission refused {user}'s password (swaks {own.status}: {own.refusal})")
    return not problems, "; ".join(problems) or (f"IMAP: a wrong password refused, {', '.join(logins)} taken; 587: {other}'s"
                                                 f" password refused ({others.refusal.split(' ', 1)[0]}), {user}'s taken")


@scenario("submission: a user's mail to an outside address leaves through the primary and arrives", proves="""
    A site user's mail client submits on 587 (STARTTLS, AUTH with the user's password) to an
    address of an outside domain; the primary relays it, by the outside domain's MX in the DNS,
    to that domain's MTA (an smtpd on the internet node), which stores it once: its `Received:`
    headers show the primary took it authenticated over TLS (ESMTPSA).""")
def user_mail_reaches_the_outside_world(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user = site.recipients.users[0]
    to = f"someone@{outside(lab.plan).domain}"
    marker = _marker("outside")
    sent = mail.submit(lab, user, to, marker, password=lab.password(user))
    if not sent.accepted:
        return False, f"{user} could not submit to {to} (swaks {sent.status}: {sent.refusal})"
    arrived = lambda: [path for path in lab.outside_maildir().glob("*/*") if path.parent.name in ("new", "cur")
                       and marker.encode() in path.read_bytes()]
    if not wait_until(arrived, DELIVERY_TIMEOUT, 0.1):
        return False, f"not at {to} {DELIVERY_TIMEOUT} s later; {site.primary.name}'s queue: {mail.queue(lab, site.primary.name)}"
    time.sleep(0.5)  # a second copy would come now
    found = arrived()
    if len(found) != 1:
        return False, f"{len(found)} copies at {to}, want 1"
    hop = mail.received_by(found[0].read_bytes(), site.primary.mx_name)
    if " with ESMTPSA " not in hop:
        return False, f"the primary's Received: does not say TLS and AUTH: {hop or 'none'}"
    return True, f"{user} -> {to} through {site.primary.name} (ESMTPSA), stored once by {outside(lab.plan).mx_name}"


def _lab_txt(lab: Lab, name: str) -> list[str]:
    """The TXT texts the lab's DNS serves at `name`, asked from the internet node (each record's
    strings joined, as a verifier reads them)."""
    argv = ["dig", "+short", "+time=2", "+tries=1", f"@{lab.plan.dns.ipv4}", "TXT", name]
    lines = lab.run_in(lab.plan.internet.name, argv, timeout=10).stdout.splitlines()
    return ["".join(re.findall(r'"((?:[^"\\]|\\.)*)"', line)) for line in lines if line.strip()]


def _dkim_verdict(lab: Lab, message: bytes) -> tuple[bool, str]:
    """dkimpy's verdict on a stored message, keys looked up in the lab's DNS as a receiver would,
    and the d= and s= of its first signature ("" without one)."""
    import dkim  # type: ignore[import-untyped]

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        texts = _lab_txt(lab, name.decode().rstrip("."))
        return texts[0].encode() if texts else b""

    # In the header only: a bounce quotes the message it returns, with that message's signature.
    header = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0] + b"\n"
    signature = re.search(rb"^DKIM-Signature:(.*?)\r?\n(?![ \t])", header, re.M | re.S)
    tags = dict(re.findall(rb"\b([ds])=([^;\s]+)", signature[1])) if signature else {}
    where = f"d={tags.get(b'd', b'').decode()} s={tags.get(b's', b'').decode()}" if signature else ""
    return bool(signature) and bool(dkim.verify(message, dnsfunc=dnsfunc)), where


def _spf_verdict(lab: Lab, message: bytes, sender: str) -> tuple[str, str]:
    """pyspf's verdict (pass, fail, ...) on the hop that brought `message` to the outside MTA: the
    client address and HELO name that MTA wrote in its Received: header, `sender` as MAIL FROM,
    every lookup asked of the lab's DNS from the internet node; and that hop's client address."""
    import spf  # type: ignore[import-untyped]

    hop = mail.received_chain(message)[0] if mail.received_chain(message) else ""
    found = re.match(r"Received: from (\S+) \((?:\S+ )?\[(?:IPv6:)?([0-9A-Fa-f.:]+)\]\)", hop)
    if not found:
        return "none", f"no client address in the outside MTA's Received: {hop or 'none'}"
    helo, address = found[1], found[2]

    def lookup(name: str, qtype: str, tcpfallback: bool = True, timeout: int = 30) -> list:
        # pyspf's own DNSLookup's shape (spf.DNSLookup_dnspython), asked where a receiver asks.
        shaped = {"A": lambda r: r.address, "AAAA": lambda r: r.address, "MX": lambda r: (r.preference, r.exchange),
                  "PTR": lambda r: r.target.to_text(True), "TXT": lambda r: r.strings}
        return [((name, qtype), shaped[qtype](r)) for r in lab_mta_sts.answers(lab, name, qtype)] if qtype in shaped else []

    real, spf.DNSLookup = spf.DNSLookup, lookup
    try:
        verdict = spf.check2(i=address, s=sender, h=helo)[0]
    finally:
        spf.DNSLookup = real
    return verdict, address


def _mail_out(lab: Lab, label: str) -> tuple[bytes | None, str]:
    """A site user's message to the outside world, as the outside MTA stored it."""
    site = lab.plan.site
    user = site.recipients.users[0]
    marker = _marker(label)
    sent = mail.submit(lab, user, f"someone@{outside(lab.plan).domain}", marker, password=lab.password(user))
    if not sent.accepted:
        return None, f"{user} could not submit (swaks {sent.status}: {sent.refusal})"
    return _at_outside(lab, marker, site.primary.name)


def _at_outside(lab: Lab, marker: str, host: str) -> tuple[bytes | None, str]:
    """The first message holding `marker` the outside MTA stored (waited for), or why there is none."""
    arrived = lambda: [path for path in lab.outside_maildir().glob("*/*") if path.parent.name in ("new", "cur")
                       and marker.encode() in path.read_bytes()]
    if not wait_until(arrived, DELIVERY_TIMEOUT, 0.1):
        return None, f"not at the outside MTA {DELIVERY_TIMEOUT} s later; {host}'s queue: {mail.queue(lab, host)}"
    return arrived()[0].read_bytes(), ""


@scenario("dkim: a user's mail leaves signed, and a receiver verifies it against the lab's DNS", proves="""
    A site user submits (587, STARTTLS, AUTH) to an outside address; the message the outside MTA
    stores carries the primary's DKIM-Signature (rspamd's dkim_signing) for the user's domain
    with the domain's current selector, and dkimpy, a real verifier, accepts it with the key the
    lab's DNS serves at <selector>._domainkey.<domain> (asked from the internet node); and pyspf,
    a real SPF checker, passes the address the outside MTA took it from for the user's domain,
    asking the lab's DNS too.""")
def user_mail_leaves_dkim_signed(lab: Lab) -> tuple[bool, str]:
    from ..secrets import site_dkim_keys

    message, problem = _mail_out(lab, "dkim")
    if message is None:
        return False, problem
    domain = lab.plan.site.domains[0]
    selector = site_dkim_keys(lab.plan.site, lab.state.stack, lab.dir)[domain].signing.name
    verified, where = _dkim_verdict(lab, message)
    if where != f"d={domain} s={selector}":
        return False, f"signed {where or 'not at all'}, want d={domain} s={selector}"
    spf_verdict, address = _spf_verdict(lab, message, f"{lab.plan.site.recipients.users[0]}@{domain}")
    return verified and spf_verdict == "pass", f"signed {where}, " + (
        "verified by dkimpy against the lab's DNS" if verified else "but dkimpy refuses it") + f"; SPF {spf_verdict} for {address}"


@scenario("dkim: mail from outside in a site address's name is never signed, through a backup or not", proves="""
    A stranger sends, from the internet, a message whose envelope and From: are a site user's
    address to that user, through each backup and directly to the primary: each copy is delivered
    without a DKIM-Signature of the site (rspamd signs only what a user submitted or the host
    itself sent over loopback, never what a backup relays in).""")
def forged_site_mail_is_not_signed(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user = site.recipients.users[0]
    address = f"{user}@{site.domains[0]}"
    signed = []
    for via in [host.name for host in site.backups] + [site.primary.name]:
        marker = _marker("forged")
        sent = mail.send(lab, via, address, marker, sender=address)
        if not sent.accepted:
            return False, f"{via} refused the stranger's mail to {address} (swaks {sent.status})"
        found = _delivered_once(lab, marker)
        if len(found) != 1:
            return False, f"via {via}: {len(found)} copies delivered, want 1"
        if re.search(rb"^DKIM-Signature:", found[0].read_bytes(), re.M | re.I):
            signed.append(via)
    return not signed, f"signed when sent through {', '.join(signed)}" if signed else (
        f"from outside as {address}: delivered unsigned through every MX")


def _signed_as(lab: Lab, host: str) -> str:
    """The d= and s= a host's own mail is signed with: the site domain its MX name lies in, and
    that domain's current selector ("" when it lies in none: its mail leaves unsigned)."""
    from ..dkim import own_mail_domain
    from ..secrets import site_dkim_keys

    site = lab.plan.site
    domain = own_mail_domain(site, site.host(host))
    if domain is None:
        return ""
    return f"d={domain} s={site_dkim_keys(site, lab.state.stack, lab.dir)[domain].signing.name}"


def _verified_as(lab: Lab, message: bytes, want: str) -> str:
    """"" when `message` is signed as `want` ("d=... s=...") and dkimpy verifies it against the
    lab's DNS, else what it is."""
    verified, where = _dkim_verdict(lab, message)
    if where != want:
        return f"signed {where or 'not at all'}, want {want}"
    return "" if verified else f"signed {where}, but dkimpy refuses it"


@scenario("dkim: each MX's own mail (root's, cron's) leaves signed for the site domain its name lies in", proves="""
    On each MX, root gives sendmail a message without a From: for an outside address, as cron
    does (smtpctl enqueue, through smtpd's local socket: smtpd writes From: root@<MX name>), and
    a client on the MX sends one as root@<MX name> to 127.0.0.1 (lo0). Each copy the outside MTA
    stores carries a DKIM-Signature d=<the site domain the MX name lies in>, with that domain's
    current selector (rspamd's dkim_signing on the primary, filter-dkimsign on a backup), and
    dkimpy verifies it against the lab's DNS: the MX name's mail aligns with the site domain's
    DMARC record (relaxed).""")
def hosts_own_mail_leaves_dkim_signed(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    to = f"someone@{outside(lab.plan).domain}"
    problems, seen = [], []
    for host in site.hosts:
        want = _signed_as(lab, host.name)
        for way in ("sendmail", "lo0"):
            marker = _marker(f"own-mail-{host.name}-{way}")
            if way == "sendmail":
                handed = lab.run_in(host.name, ["sendmail", "-t"], input=f"To: {to}\nSubject: {marker}\n\n{mail.plain_body(marker)}")
            else:
                handed = lab.run_in(host.name, ["swaks", "--server", "127.0.0.1", "--to", to, "--from", f"root@{host.mx_name}",
                                                "--header", f"Subject: {marker}", "--body", mail.plain_body(marker)])
            if handed.returncode != 0:
                problems.append(f"{host.name}: {way} refused root's message: {(handed.stdout + handed.stderr).strip()[-200:]}")
                continue
            message, problem = _at_outside(lab, marker, host.name)
            if message is None or (problem := _verified_as(lab, message, want)):
                problems.append(f"{host.name} ({way}): {problem}")
        seen.append(f"{host.name} {want}")
    return not problems, "; ".join(problems) or f"root's mail by sendmail and over lo0 verified: {', '.join(seen)}"


@scenario("dkim: bounces leave signed, the primary's and a backup's", proves="""
    A site user submits to an address in a name that does not exist (in the site's first domain,
    which the lab's DNS answers NXDOMAIN for): the primary bounces it, smtpd's bounce
    (From: MAILER-DAEMON@<its MX name>, through the local socket) lands in the user's mailbox
    signed for the site domain the primary's name lies in, and dkimpy verifies it. A stranger's
    GTUBE through a backup is refused by the primary on relay; the backup's bounce, stored by the
    outside MTA, is signed by filter-dkimsign for the site domain the backup's name lies in, and
    verifies too.""")
def bounces_leave_dkim_signed(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    user = site.recipients.users[0]
    marker = _marker("bounce-primary")
    sent = mail.submit(lab, user, f"nobody@no-such-name.{site.domains[0]}", marker, password=lab.password(user))
    if not sent.accepted:
        return False, f"{user} could not submit (swaks {sent.status}: {sent.refusal})"
    bounces = [path for path in _delivered_once(lab, marker) if b"MAILER-DAEMON@" in path.read_bytes()]
    if len(bounces) != 1:
        return False, f"{len(bounces)} bounces of {primary} in {user}'s mailbox, want 1; its queue: {mail.queue(lab, primary)}"
    if problem := _verified_as(lab, bounces[0].read_bytes(), _signed_as(lab, primary)):
        return False, f"{primary}'s bounce: {problem}"
    seen = [f"{primary}'s bounce {_signed_as(lab, primary)}"]
    if backups:
        backup = backups[0]
        relayed = _marker("bounce-backup")
        sent = mail.send(lab, backup, f"{user}@{site.domains[0]}", relayed, GTUBE, sender=f"sender@{outside(lab.plan).domain}")
        if not sent.accepted:
            return False, f"{backup} refused GTUBE ({sent.refusal}): a backup runs no rspamd and takes it"
        found = _bounced_to(lab, relayed, "Gtube pattern")
        if len(found) != 1:
            return False, f"{len(found)} bounces of {backup} at the outside MTA, want 1; its queue: {mail.queue(lab, backup)}"
        if problem := _verified_as(lab, found[0].read_bytes(), _signed_as(lab, backup)):
            return False, f"{backup}'s bounce: {problem}"
        seen.append(f"{backup}'s bounce {_signed_as(lab, backup)}")
    return True, "; ".join(seen) + ", each verified by dkimpy"


@scenario("submission: a user's From: header must be the address the user sends as", proves="""
    A site user authenticated on 587 sends with MAIL FROM the user's own address and a From:
    header of another user of the same domain (which smtpd's senders table, reading the envelope
    only, lets through): the primary refuses it at the end of DATA (550, rspamd's
    local.d/rspamd.lua saying why), and nothing is delivered or signed. The same message with
    From: the user's own address in capitals is delivered once, DKIM-signed for the user's
    domain, and dkimpy verifies it.""")
def from_header_must_be_the_senders(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    user, other = site.recipients.users[0], site.recipients.users[-1]
    domain = site.domains[0]
    to = f"{other}@{domain}"
    forged = _marker("from-forged")
    sent = mail.submit(lab, user, to, forged, password=lab.password(user), headers=[f"From: {other}@{domain}"])
    if sent.accepted or not sent.refusal.startswith("550") or "From:" not in sent.refusal:
        return False, f"{user} as From: {other}@{domain} answered {sent.refusal or 'acceptance'} (swaks {sent.status}), want 550 naming From:"
    own = _marker("from-own")
    taken = mail.submit(lab, user, to, own, password=lab.password(user), headers=[f"From: {user.upper()}@{domain.upper()}"])
    if not taken.accepted:
        return False, f"{user} as From: {user.upper()}@{domain.upper()} refused: {taken.refusal} (swaks {taken.status})"
    found = _delivered_once(lab, own)
    if len(found) != 1:
        return False, f"{len(found)} copies of {user}'s own message delivered, want 1"
    from ..secrets import site_dkim_keys
    want = f"d={domain} s={site_dkim_keys(site, lab.state.stack, lab.dir)[domain].signing.name}"
    if problem := _verified_as(lab, found[0].read_bytes(), want):
        return False, f"{user}'s own message: {problem}"
    if mail.delivered(lab, forged):
        return False, f"the message with From: {other}@{domain} was delivered"
    return True, f"From: {other}@{domain} refused ({sent.refusal[:90]}); From: {user.upper()}@{domain.upper()} delivered, {want} verified"


@scenario("dkim: after rotate-dkim-key, mail signed before and after the switch both verify", proves="""
    rotate-dkim-key's steps on the lab's backend, each followed by what `pulumi up` does (the
    lab's DNS published again; each host that signs the domain replaced when its signing key
    changes): a message signed with the old key before the rotation and one signed with the new
    key after the switch both verify while both selectors are published; the old one is not
    retired while a backup still signs its own mail with it (only the primary replaced: the
    command waits, naming the backup), and once every signing host carries the new key a
    backup's own mail is signed with it; once the old one is retired and
    withdrawn, the new one's still verifies and the old one's no longer does. --now stands in for
    the waits (the record's TTL, dkim.retireAfterDays), which tests/test_dkim_rotation.py proves.""")
def dkim_rotation_keeps_mail_verifying(lab: Lab) -> tuple[bool, str]:
    from datetime import datetime, timezone

    from ..dkim import signing_hosts
    from ..dkim_rotation import rotate_domain
    from ..facts import parse_key_versions

    site, domain = lab.plan.site, lab.plan.site.domains[0]
    store = host_store(site, lab.dir)
    primary = site.primary.name
    backups = [host.name for host in signing_hosts(site, domain) if not host.is_primary]

    def step(expect: str) -> str:
        done = rotate_domain(site, lab.state.stack, store, domain, datetime.now(timezone.utc), lambda name: _lab_txt(lab, name),
                             lambda host, d: parse_key_versions(lab.run_in(host.name, ["cat", "/etc/mailsite/key-versions"]).stdout).get(f"dkim-{d}"),
                             hurry=True)
        if done.outcome != expect:
            raise LabError(f"rotate-dkim-key: {done.message}")
        return done.message

    before, problem = _mail_out(lab, "dkim-before")
    if before is None:
        return False, problem
    step("advanced")  # a new key, published
    lab.publish_dns()
    step("advanced")  # seen in DNS: the new key signs
    if not wait_until(lambda: not mail.queue(lab, primary), DELIVERY_TIMEOUT, 0.2):
        return False, f"{primary}'s queue did not empty before its replacement"
    lab.replace_host(primary)
    if backups:
        waiting = step("waiting")  # a backup still signs its own mail with the old key
        if backups[0] not in waiting:
            return False, f"with only {primary} replaced, rotate-dkim-key says: {waiting}"
        for backup in backups:
            def drained(host: str = backup) -> bool:
                return not mail.queue(lab, host)
            if not wait_until(drained, DELIVERY_TIMEOUT, 0.2):
                return False, f"{backup}'s queue did not empty before its replacement"
            lab.replace_host(backup)
        marker = _marker("dkim-after-backup")
        lab.run_in(backups[0], ["sendmail", "-t"], input=f"To: someone@{outside(lab.plan).domain}\nSubject: {marker}\n\n{mail.plain_body(marker)}")
        own, problem = _at_outside(lab, marker, backups[0])
        if own is None or (problem := _verified_as(lab, own, _signed_as(lab, backups[0]))):
            return False, f"{backups[0]}'s own mail after the switch: {problem}"
    after, problem = _mail_out(lab, "dkim-after")
    if after is None:
        return False, problem
    verdicts = {name: _dkim_verdict(lab, message) for name, message in (("before", before), ("after", after))}
    if not all(ok for ok, _ in verdicts.values()) or verdicts["before"][1] == verdicts["after"][1]:
        return False, "during the overlap: " + "; ".join(f"{name} {where or 'unsigned'} {'verifies' if ok else 'fails'}"
                                                         for name, (ok, where) in verdicts.items())
    step("advanced")  # every signing host seen signing with the new key; --now: the old one retired at once
    lab.publish_dns()
    old_ok, new_ok = _dkim_verdict(lab, before)[0], _dkim_verdict(lab, after)[0]
    if old_ok or not new_ok:
        return False, f"after retiring: the old key's mail {'still verifies' if old_ok else 'fails'}, the new key's {'verifies' if new_ok else 'fails'}"
    return True, (f"{verdicts['before'][1]} and {verdicts['after'][1]} both verified during the overlap; "
                  "after retirement only the new key's mail verifies")


def _replace_file(path: Path, data: bytes) -> None:
    """`data` in place of `path`, with its mode (a key stays 0600: smtpd refuses one others read)."""
    descriptor = os.open(path.with_name(path.name + ".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, path.stat().st_mode & 0o777)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    path.with_name(path.name + ".new").replace(path)


def _restart_smtpd(lab: Lab, host: str) -> None:
    """Stop and start the host's smtpd (it reads its certificates when it starts; its queue stays)."""
    if _smtpd_running(lab, host):
        lab.stop_daemon(host, "smtpd")
    lab.start_daemon(host, "smtpd")
    if not wait_until(lambda: lab.smtpd_listening(host), 10):
        raise LabError(f"{host}'s smtpd did not come back")


def _relayed_once_when_back(lab: Lab, backup: str, marker: str) -> str:
    """"" when the backup, its queue retried, delivered `marker` exactly once on the primary and
    over TLS; else what happened. smtpd rests a route that failed (about 15 s) before its next
    attempt."""
    site = lab.plan.site
    if not mail.flush(lab, backup, lambda: mail.delivered(lab, marker) and not mail.queue(lab, backup), REDELIVERY_TIMEOUT):
        return f"not delivered {REDELIVERY_TIMEOUT} s later; {backup}'s queue: {mail.queue(lab, backup)}"
    time.sleep(1)  # a duplicate would come now, from a retry of an envelope already sent
    found = mail.delivered(lab, marker)
    if len(found) != 1:
        return f"{len(found)} copies delivered, want 1"
    if not mail.over_tls(hop := mail.received_by(found[0].read_bytes(), site.primary.mx_name)):
        return f"delivered, but not over TLS: {hop or 'no Received: by the primary'}"
    return ""


# The port-25 listener, as rendered: `listen on IFACE tls pki NAME [filter NAME]` (STARTTLS offered).
_STARTTLS_LISTENER = re.compile(r"^(listen on \S+) tls pki \S+((?: filter \S+)?)$", re.M)


@scenario("tls: a backup holds mail for a primary that offers no STARTTLS", proves="""
    With the primary's smtpd restarted on a copy of its smtpd.conf whose port-25 listener offers
    no STARTTLS (as an attacker stripping it from the EHLO reply would make it look), a backup
    takes mail for the site and keeps it queued: `relay backup mx ... tls` makes STARTTLS
    mandatory, so the site's mail never crosses to the primary in clear. With the primary's own
    smtpd.conf back, the backup delivers it once, over TLS.""")
def backup_holds_mail_without_starttls(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    backup = backups[0]  # its only better MX is the primary: nowhere else to take the mail
    config = lab.path_on(primary, lab.site_daemons(primary)["smtpd"].config or "/etc/mail/smtpd.conf")
    own = config.read_bytes()
    stripped, listeners = _STARTTLS_LISTENER.subn(r"\1\2", own.decode())
    if listeners != 1:
        return False, f"{primary}'s smtpd.conf has {listeners} port-25 listeners with `tls pki`, want 1"
    to = f"{site.recipients.users[0]}@{site.domains[0]}"
    marker = _marker("no-starttls")
    before = len(mail.smtpd_log(lab, backup).splitlines())
    relay_errors = lambda: [line for line in mail.smtpd_log(lab, backup).splitlines()[before:] if " mta error " in line]
    try:
        _replace_file(config, stripped.encode())
        _restart_smtpd(lab, primary)
        # Afresh, the backup connects anew: a session it kept open to the primary's previous smtpd
        # (an earlier scenario's), and the rest it gives a route after that session breaks, would
        # delay its attempt by about 15 s.
        _restart_smtpd(lab, backup)
        offered = mail.recipient_taken(lab, primary, to).offered_in_clear
        if not offered or "STARTTLS" in offered:
            return False, f"{primary} restarted without STARTTLS still offers {offered or 'nothing'}"
        sent = mail.send(lab, backup, to, marker)
        if not sent.accepted:
            return False, f"{backup} refused a site user's mail (swaks {sent.status})"
        if not wait_until(relay_errors, 15, 0.1):
            relaying = [line for line in mail.smtpd_log(lab, backup).splitlines()[before:] if " mta " in line]
            return False, f"{backup} did not refuse to relay in clear: {relaying[-3:] or 'no relay attempt'}"
        if mail.delivered(lab, marker) or not mail.queue(lab, backup):
            return False, f"{backup} did not keep the message: delivered {len(mail.delivered(lab, marker))}, queue {mail.queue(lab, backup)}"
        said = relay_errors()[0].split(" mta error ", 1)[-1]
    finally:
        _replace_file(config, own)
        _restart_smtpd(lab, primary)
    if why := _relayed_once_when_back(lab, backup, marker):
        return False, f"with {primary}'s STARTTLS back: {why}"
    return True, f"{backup} kept it ({said}); delivered once over TLS with {primary}'s STARTTLS back"


@scenario("tls: a backup holds mail for a primary whose certificate is self-signed", proves="""
    With the primary presenting a self-signed certificate for its name alone (CN, no SAN), made
    by the command the images' install.site runs at bake (what a host has until acme-client's
    first certificate), a backup takes mail for the site and keeps it queued: `relay backup mx
    ... tls` verifies the primary's certificate, so a forged primary gets nothing. With the
    primary's certificate from the CA back, the backup delivers it once, over TLS.""")
def backup_holds_mail_for_a_self_signed_primary(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    backup = backups[0]  # its only better MX is the primary: nowhere else to take the mail
    host = site.primary
    certificate, key = site.tls.certificate_for(host), site.tls.key_for(host)
    own = {path: path.read_bytes() for path in (lab.path_on(primary, certificate), lab.path_on(primary, key))}
    marker = _marker("self-signed")
    before = len(mail.smtpd_log(lab, backup).splitlines())
    relay_errors = lambda: [line for line in mail.smtpd_log(lab, backup).splitlines()[before:] if " mta error " in line]
    try:
        made = lab.run_in(primary, ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-days", "825",
                                    "-subj", f"/CN={host.mx_name}", "-keyout", key, "-out", certificate], timeout=30)
        if made.returncode != 0:
            return False, f"openssl could not make {primary} a self-signed certificate: {made.stderr.strip()[-200:]}"
        _restart_smtpd(lab, primary)
        _restart_smtpd(lab, backup)  # afresh, as above
        presented = mail.verifying(lab, primary, host.mx_name)
        if "self-signed" not in presented.certificate_check and "self signed" not in presented.certificate_check:
            return False, f"{primary} does not present a self-signed certificate: {presented.certificate_check or 'none seen'}"
        sent = mail.send(lab, backup, f"{site.recipients.users[0]}@{site.domains[0]}", marker)
        if not sent.accepted:
            return False, f"{backup} refused a site user's mail (swaks {sent.status})"
        if not wait_until(relay_errors, 15, 0.1):
            relaying = [line for line in mail.smtpd_log(lab, backup).splitlines()[before:] if " mta " in line]
            return False, f"{backup} did not refuse the self-signed certificate: {relaying[-3:] or 'no relay attempt'}"
        if mail.delivered(lab, marker) or not mail.queue(lab, backup):
            return False, f"{backup} did not keep the message: delivered {len(mail.delivered(lab, marker))}, queue {mail.queue(lab, backup)}"
        said = relay_errors()[0].split(" mta error ", 1)[-1]
    finally:
        for path, data in own.items():
            _replace_file(path, data)
        _restart_smtpd(lab, primary)
    if why := _relayed_once_when_back(lab, backup, marker):
        return False, f"with {primary}'s certificate back: {why}"
    return True, f"{primary} self-signed ({presented.certificate_check}): {backup} kept it ({said}); delivered once over TLS with the CA's certificate back"


@scenario("acme: each MX gets a certificate for its name from an ACME CA over http-01", proves="""
    pebble (Let's Encrypt's ACME test CA) on the internet node issues each MX a certificate for its
    MX name, asked for by lego on that MX (standing in for acme-client) and validated over
    http-01: pebble looks the name up in the lab's DNS and fetches the token from the MX's port
    80, where a web server answers from the challenge directory (Python's http.server standing in
    for httpd). Installed at the site's pki paths and smtpd restarted, as the renewal cron does,
    each MX presents it on port 25 after STARTTLS to a sender on the internet node that trusts
    pebble's root alone and checks the MX name: it verifies, and it is for that name and no
    other. The lab CA's certificates are put back after.""")
def certificates_issued_by_acme(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    names = [host.name for host in site.hosts]
    own = {path: path.read_bytes() for host in site.hosts
           for path in (lab.path_on(host.name, site.tls.certificate_for(host)), lab.path_on(host.name, site.tls.key_for(host)))}
    problems = []
    try:
        with acme.running_pebble(lab) as ca, acme.challenge_servers(lab, names):
            acme.issue_all(lab, names, ca.directory_url)
            root = ca.root()
        for name in names:
            _restart_smtpd(lab, name)
        for host in site.hosts:
            try:
                presented = acme.starttls_certificate(lab, host.mx_name, root)
            except ssl.SSLError as error:
                problems.append(f"{host.mx_name}: STARTTLS did not verify under pebble's root: {error}")
                continue
            installed = site.tls.certificate_for(host)
            if not acme.is_leaf_of(presented, lab.path_on(host.name, installed).read_text()):
                problems.append(f"{host.mx_name} presented another certificate than {installed}")
            elif (named := acme.names_in(presented)) != [host.mx_name]:
                problems.append(f"{host.mx_name}'s certificate is for {named}")
    finally:
        for path, data in own.items():
            _replace_file(path, data)
        for name in names:
            _restart_smtpd(lab, name)
    mx_names = ", ".join(host.mx_name for host in site.hosts)
    return not problems, "; ".join(problems) or (f"{mx_names}: issued over http-01, each presented on 25 and"
                                                 " verified under pebble's root for its name alone")


@scenario("mta-sts: each domain's policy is served over verified TLS and names exactly its MXes", proves="""
    For each site domain, an MTA-STS sender on the internet node fetches
    https://mta-sts.<domain>/.well-known/mta-sts.txt from the primary (the address from the lab's
    DNS, the certificate verified for that name against the lab CA; Python's HTTPS server standing
    in for httpd), gets 200 and text/plain, parses it with checkdmarc's MTA-STS parser, and its
    `mx:` patterns are exactly the domain's MX names that the lab's DNS answers (dnspython).""")
def mta_sts_policy_names_exactly_the_mxes(lab: Lab) -> tuple[bool, str]:
    problems, seen = [], []
    with lab_mta_sts.policy_served(lab):
        for domain in lab.plan.site.domains:
            mxes = lab_mta_sts.mx_names(lab, domain)
            fetched = lab_mta_sts.fetch_policy(lab, domain)
            problems += [f"{domain}: {problem}" for problem in lab_mta_sts.policy_mx_problems(fetched, mxes)]
            seen.append(f"{domain}: {len(mxes)} MX")
    return not problems, "; ".join(problems) or f"{', '.join(seen)}, each its policy's mx patterns exactly"


@scenario("primary down: a backup queues (encrypted), then delivers once", proves="""
    With the primary's smtpd down a backup accepts the mail and holds it in its encrypted queue:
    `smtpctl show queue` lists it, and its body cannot be read anywhere in the backup's spool,
    as it is or decompressed (`queue compression` alone would fail this). It never hands the
    message to a worse MX, and delivers it exactly once when the primary is back.""")
def queued_while_primary_down(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, backups = _host_names(lab)
    backup = backups[0]
    user = site.recipients.users[0]
    marker = _marker("queued")
    lab.stop_daemon(primary, "smtpd")
    try:
        sent = mail.send(lab, backup, f"{user}@{site.domains[0]}", marker, body=f"the body {marker}")
        if not sent.accepted:
            return False, f"{backup} refused the message while the primary was down (swaks {sent.status})"
        recipient = f"{user}@{site.domains[0]}"
        if not wait_until(lambda: any(recipient in line for line in mail.queue(lab, backup)), 10):
            return False, f"{backup}'s queue does not list the message: {mail.queue(lab, backup)}"
        if not mail.spool_files(lab, backup):
            return False, f"{backup}'s spool holds no file at all"
        revealing = mail.spool_files_revealing(lab, backup, marker)
        if revealing:
            return False, f"the body is readable on disk in {revealing[0]}"
        if mail.delivered(lab, marker):
            return False, "delivered while the primary was down"
        queued = len(mail.queue(lab, backup))
    finally:
        if not _smtpd_running(lab, primary):
            lab.start_daemon(primary, "smtpd")
    if not wait_until(lambda: lab.smtpd_listening(primary), 10):
        return False, f"{primary}'s smtpd did not come back"
    back = time.monotonic()
    if not mail.flush(lab, backup, lambda: mail.delivered(lab, marker) and not mail.queue(lab, backup), REDELIVERY_TIMEOUT):
        return False, f"not delivered {REDELIVERY_TIMEOUT} s after {primary} returned; {backup}'s queue: {mail.queue(lab, backup)}"
    waited = time.monotonic() - back
    time.sleep(1)  # a duplicate would come now, from a retry of an envelope already sent
    found = mail.delivered(lab, marker)
    # A backup relays only up: a worse MX (higher preference) never hears from it.
    worse = [name for name in backups[1:] if _connections_from(lab, name, backup)]
    if len(found) != 1 or worse:
        return False, f"{len(found)} copies delivered, want 1" + (f"; {backup} connected to {worse}" if worse else "")
    return True, f"{backup} queued {queued} envelope, body unreadable on disk; delivered once {waited:.1f} s after {primary} returned"


# The mail store: a full mailbox, and a new primary on the same volume.

QUOTA_TIMEOUT = 15  # seconds for smtpd to hear Dovecot's temporary failure


@scenario("quota: a full mailbox defers mail in smtpd's queue, delivered once there is room", proves="""
    With a user's quota (the stack's, in Dovecot's user database) lowered below what the
    mailbox holds, a stranger's message to that user is taken by the primary and Dovecot's LMTP
    refuses it for a while (a 4xx: `quota_full_tempfail`): smtpd keeps it in its queue, and
    nothing is stored or bounced. With the quota as the stack says again, the queue is retried
    and the message is stored once.""")
def full_mailbox_defers_and_loses_nothing(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary = site.primary.name
    account = next((account for account in site.recipients.accounts if account.quota), None)
    if account is None or account.quota is None:
        raise NotTried("no user has a quota")
    users = lab.path_on(primary, "/etc/dovecot/users", tree="dovecot")
    own = users.read_bytes()
    rule = f"userdb_quota_rule=*:storage={quota_rule(account.quota)}"
    line = next((line for line in own.decode().splitlines() if line.startswith(f"{account.name}:") and rule in line), None)
    if line is None:
        return False, f"/etc/dovecot/users gives {account.name} no {rule}"
    marker = _marker("quota")
    before = len(mail.smtpd_log(lab, primary).splitlines())
    deferred = lambda: [line for line in mail.smtpd_log(lab, primary).splitlines()[before:]
                        if " mda delivery " in line and " result=TempFail " in line]
    try:
        # 1 byte: full at once, whatever the mailbox holds. Dovecot reads the file again when its
        # size or modification time (in whole seconds) changes: 1B is as long as 1G, so the
        # lowered file is dated an hour back, and the one put back is of now.
        _replace_file(users, own.replace(line.encode(), line.replace(rule, "userdb_quota_rule=*:storage=1B").encode()))
        os.utime(users, (time.time() - 3600,) * 2)
        sent = mail.send(lab, primary, f"{account.name}@{site.domains[0]}", marker)
        if not sent.accepted:
            return False, f"{primary} refused the message at SMTP (swaks {sent.status}: {sent.refusal})"
        if not wait_until(deferred, QUOTA_TIMEOUT, 0.1):
            return False, f"no temporary failure from Dovecot in {QUOTA_TIMEOUT} s; stored {len(mail.delivered(lab, marker))}"
        queued = mail.queue(lab, primary)
        if mail.delivered(lab, marker) or not any(f"{account.name}@" in envelope for envelope in queued):
            return False, f"not held: stored {len(mail.delivered(lab, marker))}, {primary}'s queue {queued}"
        said = re.sub(r'^.*LMTP server error: |"\)$', "", deferred()[0])
    finally:
        _replace_file(users, own)
    if not mail.flush(lab, primary, lambda: mail.delivered(lab, marker) and not mail.queue(lab, primary), REDELIVERY_TIMEOUT):
        return False, f"not stored {REDELIVERY_TIMEOUT} s after the quota was raised; {primary}'s queue: {mail.queue(lab, primary)}"
    time.sleep(1)  # a duplicate would come now
    if why := _only_in(lab, marker, account.name):
        return False, why
    return True, f"held in {primary}'s queue ({len(queued)} envelope; {said}), stored once in {account.name}'s mailbox with room again"


def _snapshot(lab: Lab) -> dict[str, tuple[str, dict[int, tuple[frozenset[str], str]]]]:
    """Each user's INBOX over IMAPS: its UIDVALIDITY, and each message by UID with its flags
    (\\Recent aside: it is the session's) and Subject."""
    seen = {}
    for user in lab.plan.site.recipients.users:
        with imap.mailbox(lab, user, lab.password(user)) as box:
            seen[user] = (box.uid_validity(), {uid: (message.flags - {"\\Recent"}, message.subject)
                                               for uid, message in box.messages().items()})
    return seen


@scenario("replacement: a new primary on the same volume keeps every message and its flags", proves="""
    A user marks a message \\Seen and \\Flagged over IMAPS. Then the primary is replaced as
    `pulumi up` replaces it after a key rotation: its queue drained, a new queue key in the
    secrets backend, and a new VM from a new render (its trees, queue and /var/dovecot made
    anew, its daemons started again) on the same mail volume. Every user's INBOX then holds the
    same messages, with the same UIDs, UIDVALIDITY and flags, read over IMAPS with the same
    passwords; the new primary runs the new queue key and takes new mail.""")
def replaced_primary_keeps_mail_and_flags(lab: Lab) -> tuple[bool, str]:
    site = lab.plan.site
    primary, user = site.primary.name, site.recipients.users[0]
    marker = _marker("replaced")
    if not mail.send(lab, primary, f"{user}@{site.domains[0]}", marker).accepted:
        return False, f"{primary} refused {user}'s mail"
    if _in_mailbox(lab, user, [marker])[marker] != 1:
        return False, f"{marker} never reached {user}'s INBOX"
    with imap.mailbox(lab, user, lab.password(user)) as box:
        box.flag(box.uids(marker)[0], "\\Seen", "\\Flagged")
    before = _snapshot(lab)
    flagged = [uid for uid, (flags, subject) in before[user][1].items() if subject == marker and {"\\Seen", "\\Flagged"} <= flags]
    if len(flagged) != 1:
        return False, f"{user}'s message is not \\Seen and \\Flagged before the replacement: {before[user][1]}"
    key_id = queue_key_id(lab.state.stack, primary)
    store = host_store(site, lab.dir)
    old_version = _running_key_version(lab, primary)
    store.put_pending(key_id, new_key())
    try:
        lab.replace_host(primary)
    except LabError:
        store.discard_pending(key_id)
        raise
    store.promote(key_id)
    problems = []
    new_version = _running_key_version(lab, primary)
    if new_version == old_version or new_version != _current_version(store, key_id):
        problems.append(f"{primary} runs queue key version {new_version}, not the new one (was {old_version})")
    after = _snapshot(lab)
    for name, (validity, messages) in before.items():
        if after[name] != (validity, messages):
            problems.append(f"{name}'s INBOX changed: {len(messages)} messages before, {len(after[name][1])} after"
                            f" (UIDVALIDITY {validity} -> {after[name][0]})")
    fresh = _marker("after-replacement")
    if not mail.send(lab, primary, f"{user}@{site.domains[0]}", fresh).accepted or _in_mailbox(lab, user, [fresh])[fresh] != 1:
        problems.append(f"the new {primary} did not deliver new mail to {user}")
    total = sum(len(messages) for _, messages in before.values())
    return not problems, "; ".join(problems) or (f"{total} messages kept with their UIDs and flags ({user}'s \\Seen \\Flagged one"
                                                 f" included); queue key {old_version} -> {new_version}; new mail delivered")


def _running_key_version(lab: Lab, host: str) -> str:
    """The queue key version the host's image carries, from its queue-key.conf's header."""
    found = re.search(r"version (\S+)\.", lab.run_in(host, ["head", "-1", "/etc/mail/queue-key.conf"], timeout=10).stdout)
    return found.group(1) if found else "unknown"


def _current_version(store, key_id: str) -> str:
    current = store.read(key_id)
    return current.version if current else "none"


@scenario("every daemon still running", proves="""
    No daemon crashed while the scenarios above ran.""")
def daemons_running(lab: Lab) -> tuple[bool, str]:
    down = [key for key, running in lab.daemons().items() if not running]
    return not down, f"not running: {', '.join(down)}" if down else f"{len(lab.daemons())} daemons running"


DOCS = "docs/lab-scenarios.md"  # generated from DEMONSTRATION; tests/test_lab_scenarios.py fails on drift


def scenarios_markdown() -> str:
    """The docs' list of what the lab proves, from the declarations above."""
    lines = [
        "# What the lab proves",
        "",
        "<!-- Generated from mailsite/lab/scenarios.py by `python -m mailsite.lab.scenarios`; do not edit. -->",
        "",
        "`make lab` (`python -m mailsite lab demo`) runs these scenarios in this order, on the real",
        "daemons, and prints one line each: PASS, WARN or FAIL, the name below, the seconds it took and",
        "what it saw. Each is also a test: `tests/test_lab.py::test_scenario[<id>]`. The TLS scenarios'",
        "steps (each reply, swaks status and header a client meets) are tests of their own too, in",
        "`tests/test_lab_tls.py`.",
        "",
    ]
    for number, declared in enumerate(DEMONSTRATION, 1):
        lines += [f"{number}. **{declared.name}** (`{declared.id}`)", ""]
        proves = textwrap.wrap(declared.proves, 95, break_long_words=False, break_on_hyphens=False)
        lines += [f"   {line}" for line in proves] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(scenarios_markdown(), end="")
