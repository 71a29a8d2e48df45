"""Blocklists: each MX's addresses looked up in the DNS blocklists of doctor.blocklists, every
answer read as its list documents it.

A listing is a FAIL naming the list (for Spamhaus, which of its lists) and where to ask for
removal. Whatever says neither "listed" nor "not listed" is "cannot tell", a WARN, never a
listing: Spamhaus answers public, cloud and over-busy resolvers with an error code in
127.255.255.0/24; Barracuda refuses resolvers not registered with it; some ISPs' resolvers turn
NXDOMAIN into an address of their own; a list that has shut down may list every address, or none.
The last two are caught by the test entries every list keeps (RFC 5782 5): 127.0.0.2 is listed,
127.0.0.1 is not. Each is asked once per run and list, and only when an answer depends on it.

One check per MX and list: a monitor can then tell one list's trouble (Barracuda refusing an
unregistered resolver, say) from another's, and a FAIL's name says which list to go to.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.exception
import dns.name
import dns.resolver

from ..model import Host, Site
from ..problems import printable
from ..results import Status
from .core import Check

if TYPE_CHECKING:
    from .view import Address, SiteView

LISTED_TEST_ENTRY = ipaddress.IPv4Address("127.0.0.2")  # every list lists it (RFC 5782 5)
UNLISTED_TEST_ENTRY = ipaddress.IPv4Address("127.0.0.1")  # and no list lists this one
ANSWERS = ipaddress.IPv4Network("127.0.0.0/8")  # where every list's answers lie (RFC 5782 2.1)
ERROR_CODES = ipaddress.IPv4Network("127.255.255.0/24")  # Spamhaus's query errors; others follow it
UNDOCUMENTED = ", which it does not document as a listing"
TXT_SHOWN = 200  # characters of a listing's TXT record shown: a reason and a link fit


def blocklist_zones(site: Site) -> list[str]:
    """The zones doctor asks, and the lab's DNS answers for: doctor.blocklists."""
    return [str(zone) for zone in site.doctor.blocklists]


def query_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    """The name a list answers for `address`: 4.3.2.1.zone for 1.2.3.4; for IPv6 its 32 nibbles,
    last first (RFC 5782 2.4)."""
    digits = address.exploded.split(".") if address.version == 4 else list(address.exploded.replace(":", ""))
    return ".".join([*reversed(digits), zone])


# Lists asked through an account: the zone's first label is the account's key, a secret.
KEYED_ZONES = {".dq.spamhaus.net": "<DQS key>", ".mail.abusix.zone": "<API key>"}


def shown_zone(zone: str) -> str:
    """The zone as reports print it: the key of a list asked through an account left out."""
    labels = zone.split(".")
    for suffix, key in KEYED_ZONES.items():
        if zone.endswith(suffix) and len(labels) > suffix.count(".") + 1:
            return ".".join([key, *labels[1:]])
    return zone


# -- what each list documents ----------------------------------------------------------------

@dataclass(frozen=True)
class Listing:
    """What one answer code means, and what to do about it. {address}, {mx_name}, {zone} in the
    fix are filled in."""
    meaning: str
    fix: str


@dataclass(frozen=True)
class Blocklist:
    name: str
    # The answers the list documents as listings; empty: any in 127.0.0.0/8 but its test and error
    # codes (RFC 5782's convention, for a list doctor knows nothing more of).
    codes: Mapping[ipaddress.IPv4Address, Listing]
    listed_fix: str  # for a list that documents no codes
    # Its documented error answers: why doctor cannot tell, and the fix.
    errors: Mapping[ipaddress.IPv4Address, tuple[str, str]] = field(default_factory=dict)
    unanswered_fix: str = ("ask again later, or from another resolver (--nameserver); if it lasts, the list may have "
                           "shut down: take {zone} out of doctor.blocklists")


_OWN_RESOLVER = ("ask from a resolver of your own that queries the lists directly (unbound on the admin machine, then "
                 "--nameserver 127.0.0.1), not a public, ISP or cloud provider's resolver; or get a free Spamhaus DQS key "
                 "and list <key>.zen.dq.spamhaus.net in doctor.blocklists instead of zen.spamhaus.org")
_SPAMHAUS_LOOKUP = "look {address} up at https://check.spamhaus.org/ (the TXT record names the listing)"
_SBL = Listing("SBL (a spam source, or a spam operation's network)",
               _SPAMHAUS_LOOKUP + ": stop what sent the spam, then ask there for removal; a listing of the provider's "
               "whole range is the provider's to resolve: ask them, or move the MX to another address")
_CSS = Listing("CSS (SBL: low-reputation mail seen from the address, snowshoe spam)",
               _SPAMHAUS_LOOKUP + ": find what sent bulk or unwanted mail from it (a compromised account, a form "
               "that mails anyone), stop it, then ask there for removal")
_XBL = Listing("XBL (an exploited host: a bot, an open proxy or a stolen account sending from the address)",
               "find and stop what is infected or abused on the MX or behind it (the TXT record often names it), then "
               "remove {address} at https://check.spamhaus.org/")
_DROP = Listing("DROP (SBL: a hijacked or criminal network)",
                _SPAMHAUS_LOOKUP + ": the whole network is listed, which only its provider can resolve; move the MX "
                "to an address elsewhere")
_BCL = Listing("BCL (SBL: the address runs a botnet's command and control server)",
               "the MX, or whatever shares its address, is compromised: find and stop the controller (a process "
               "listening where no service of the site should), then ask for removal at https://check.spamhaus.org/")
_PBL = ("PBL ({who} marks the address end-user or dynamic: not meant to send mail to other domains directly)",
        "have the provider give {address} a static reverse name ({mx_name}) and take it out of the PBL, or remove it "
        "yourself at https://check.spamhaus.org/ (self-service for a mail server's static address)")

SPAMHAUS = Blocklist(
    "Spamhaus",
    codes={
        ipaddress.IPv4Address("127.0.0.2"): _SBL,
        ipaddress.IPv4Address("127.0.0.3"): _CSS,
        **{ipaddress.IPv4Address(f"127.0.0.{n}"): _XBL for n in (4, 5, 6, 7)},
        ipaddress.IPv4Address("127.0.0.9"): _DROP,
        ipaddress.IPv4Address("127.0.0.10"): Listing(_PBL[0].format(who="its provider"), _PBL[1]),
        ipaddress.IPv4Address("127.0.0.11"): Listing(_PBL[0].format(who="Spamhaus"), _PBL[1]),
        ipaddress.IPv4Address("127.0.0.30"): _BCL,
    },
    listed_fix="",
    errors={
        # A DQS zone's own: its first label, the key, is not (or no longer) one Spamhaus accepts.
        **{ipaddress.IPv4Address(f"127.255.255.{n}"): (
            f"Spamhaus answers 127.255.255.{n}: it does not accept the DQS key of {{zone}} ({why})",
            "log in to your Spamhaus DQS account and check the key; put the one it shows in doctor.blocklists "
            "(<key>.zen.dq.spamhaus.net)") for n, why in ((250, "the key is disabled"), (251, "the key is not valid"))},
        ipaddress.IPv4Address("127.255.255.252"): (
            "Spamhaus answers 127.255.255.252: no such list, the zone's name is mistyped",
            "correct {zone} in doctor.blocklists (zen.spamhaus.org, or <key>.zen.dq.spamhaus.net with a DQS key)"),
        ipaddress.IPv4Address("127.255.255.254"): (
            "Spamhaus answers 127.255.255.254: it refuses this resolver, a public or open one, or one without a "
            "reverse name of its own (a cloud provider's)", _OWN_RESOLVER),
        ipaddress.IPv4Address("127.255.255.255"): (
            "Spamhaus answers 127.255.255.255: this resolver sent it more queries than its free use allows",
            _OWN_RESOLVER),
    },
    unanswered_fix="ask again later; if it lasts, " + _OWN_RESOLVER,
)
BARRACUDA = Blocklist(
    "Barracuda",
    codes={LISTED_TEST_ENTRY: Listing(
        "a poor reputation in the Barracuda Reputation System",
        "stop what sent the spam, then ask for removal at https://www.barracudacentral.org/rbl/removal-request "
        "(look {address} up first at https://www.barracudacentral.org/lookups)")},
    listed_fix="",
    unanswered_fix=("Barracuda answers only resolvers registered with it: register the public address of the resolver "
                    "doctor asks (free, https://www.barracudacentral.org/account/register), or take {zone} out of "
                    "doctor.blocklists"),
)
SPAMCOP = Blocklist(
    "SpamCop",
    codes={LISTED_TEST_ENTRY: Listing(
        "reported as a spam source to SpamCop, or seen by its spam traps",
        "see https://www.spamcop.net/bl.shtml?{address}: the listing ends by itself about a day after the last "
        "report; stop what sent the mail first (a compromised account, or bounces of mail that should have been "
        "refused at RCPT: backscatter)")},
    listed_fix="",
)
PSBL = Blocklist(
    "PSBL",
    codes={LISTED_TEST_ENTRY: Listing(
        "mail from the address reached PSBL's spam traps",
        "see https://psbl.org/listing?ip={address}: anyone may remove an address there; stop what sent the mail "
        "to the traps first, or it is listed again")},
    listed_fix="",
)


def blocklist(zone: str) -> Blocklist:
    """What doctor knows of the list at `zone`: its own codes if it is one of the major lists."""
    if zone.endswith(("spamhaus.org", ".dq.spamhaus.net")):
        return SPAMHAUS
    if zone.endswith("barracudacentral.org"):
        return BARRACUDA
    if zone.endswith("spamcop.net"):
        return SPAMCOP
    if zone.endswith("surriel.com"):
        return PSBL
    return Blocklist(shown_zone(zone), codes={}, listed_fix="look {address} up on the web site of {zone}: it says why it is "
                     "listed and how to ask for removal; stop what sent the spam first")


# -- reading answers -------------------------------------------------------------------------

@dataclass(frozen=True)
class Reading:
    """One answer as its list means it: PASS not listed, FAIL listed, WARN cannot tell."""
    status: Status
    seen: str
    fix: str = ""


def read_answer(listed: Blocklist, zone: str, answers: Sequence[ipaddress.IPv4Address]) -> Reading:
    """The A records a list answered for a name, read as `listed` documents them; `zone` as
    reports show it. Any error code or any answer outside 127.0.0.0/8 makes the whole answer
    unreadable: cannot tell."""
    shown = ", ".join(map(str, answers))
    foreign = [a for a in answers if a not in ANSWERS]
    if foreign:
        return Reading(Status.WARN, f"cannot tell: the resolver answered {shown}, outside 127.0.0.0/8 where every "
                       "list answers (RFC 5782): it rewrites answers, as resolvers that turn NXDOMAIN into an address "
                       "of their own do",
                       "ask from a resolver that passes answers on unchanged: run unbound on the admin machine and "
                       "pass --nameserver 127.0.0.1")
    for answer in answers:
        if answer in listed.errors:
            why, fix = listed.errors[answer]
            return Reading(Status.WARN, f"cannot tell: {why.format(zone=zone)}", fix.format(zone=zone))
    errors = [a for a in answers if a in ERROR_CODES or a == UNLISTED_TEST_ENTRY]
    if errors:
        return Reading(Status.WARN, f"cannot tell: {listed.name} answered {shown}, an error code (127.255.255.0/24 "
                       "and 127.0.0.1 are never a listing)", listed.unanswered_fix.format(zone=zone))
    if listed.codes:
        unknown = [a for a in answers if a not in listed.codes]
        if unknown:
            return Reading(Status.WARN, f"cannot tell: {listed.name} answered {shown}{UNDOCUMENTED}",
                           listed.unanswered_fix.format(zone=zone))
        meanings = list(dict.fromkeys(listed.codes[a].meaning for a in answers))
        fixes = list(dict.fromkeys(listed.codes[a].fix for a in answers))
        return Reading(Status.FAIL, f"listed by {listed.name} ({shown}): {'; '.join(meanings)}", " ".join(fixes))
    return Reading(Status.FAIL, f"listed by {listed.name} ({shown})", listed.listed_fix)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _unanswered(error: dns.exception.DNSException, seconds: float) -> str:
    """Why a query got no answer that says listed or not, in the admin's words."""
    if isinstance(error, dns.exception.Timeout):
        return f"no answer within {seconds:g} s"
    if isinstance(error, dns.resolver.NoNameservers):
        said = [str(err[3]) for err in error.kwargs.get("errors") or []]
        return "the resolver answered " + (", ".join(dict.fromkeys(said)) or "nothing usable")
    return _one_line(error)


class _Lookups:
    """The queries of one list in one run: the answers for each address, and its test entries,
    each asked once however many checks need them."""

    def __init__(self, view: SiteView, zone: str):
        self.view, self.zone, self.list = view, zone, blocklist(zone)
        self.shown = shown_zone(zone)  # in every text: a DQS zone holds its account's key
        self._lock = threading.Lock()
        self._test_entries: dict[ipaddress.IPv4Address, Reading] = {}

    def _answers(self, name: str, deadline: float) -> list[ipaddress.IPv4Address] | str | None:
        """The A records at `name`; None when the list has none (NXDOMAIN, or NOERROR without
        an A record): not listed; the reason as text when there is no answer to read."""
        try:
            answer = self.view.resolver.resolve(dns.name.from_text(name), "A", search=False,
                                                lifetime=max(0.01, deadline - time.monotonic()))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as error:
            return _unanswered(error, self.view.timeout)
        return [ipaddress.IPv4Address(record.address) for record in answer]

    def _text(self, name: str, deadline: float) -> str:
        """The listing's TXT record, which often names the reason and the removal page; shown as
        printable text only, and short: it is the list's text, not ours."""
        try:
            answer = self.view.resolver.resolve(dns.name.from_text(name), "TXT", search=False,
                                                lifetime=max(0.01, deadline - time.monotonic()))
        except dns.exception.DNSException:
            return ""
        text = " ".join(b"".join(record.strings).decode("utf-8", "replace") for record in answer)
        text = printable(" ".join(text.split()))
        return text if len(text) <= TXT_SHOWN else text[:TXT_SHOWN] + "..."

    def test_entry(self, entry: ipaddress.IPv4Address, deadline: float) -> Reading:
        """Whether the list answers its test entry as a working list does: PASS when it does."""
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return Reading(Status.WARN, f"cannot tell: no answer within {self.view.timeout:g} s",
                           self.list.unanswered_fix.format(zone=self.shown))
        try:
            if entry not in self._test_entries:
                self._test_entries[entry] = self._read_test_entry(entry, deadline)
            return self._test_entries[entry]
        finally:
            self._lock.release()

    def _read_test_entry(self, entry: ipaddress.IPv4Address, deadline: float) -> Reading:
        answers = self._answers(query_name(entry, self.zone), deadline)
        fix = self.list.unanswered_fix.format(zone=self.shown)
        if isinstance(answers, str):
            return Reading(Status.WARN, f"cannot tell: asked for its test entry {entry}, {answers}", fix)
        if entry == LISTED_TEST_ENTRY:
            if answers is None:
                return Reading(Status.WARN, f"cannot tell: {self.shown} does not list its test entry {entry}, "
                               "as every working list does (RFC 5782): it does not answer through this resolver, or "
                               "has shut down", fix)
            reading = read_answer(self.list, self.shown, answers)
            # Listed at all, by a code the list documents or a newer one: the list answers. Only
            # an error code or a rewritten answer says it does not.
            working = reading.status is Status.FAIL or reading.seen.endswith(UNDOCUMENTED)
            return Reading(Status.PASS, "") if working else reading
        if answers is None:
            return Reading(Status.PASS, "")
        reading = read_answer(self.list, self.shown, answers)
        if reading.status is not Status.FAIL:
            return reading
        return Reading(Status.WARN, f"cannot tell: {self.shown} lists {entry} too, which no working list "
                       "does: it answers listed for every address (as some lists that shut down do), or the resolver "
                       "rewrites its answers", f"take {self.shown} out of doctor.blocklists if it has shut down; "
                       "otherwise ask from a resolver that passes answers on unchanged (--nameserver)")

    def look_up(self, address: Address, host: Host, deadline: float) -> Reading:
        """`address` as this list has it."""
        name = query_name(address, self.zone)
        answers = self._answers(name, deadline)
        if isinstance(answers, str):
            return Reading(Status.WARN, f"cannot tell: {answers}", self.list.unanswered_fix.format(zone=self.shown))
        if answers is None:
            working = self.test_entry(LISTED_TEST_ENTRY, deadline)
            return Reading(Status.PASS, "not listed") if working.status is Status.PASS else working
        reading = read_answer(self.list, self.shown, answers)
        if reading.status is not Status.FAIL:
            return reading
        working = self.test_entry(UNLISTED_TEST_ENTRY, deadline)
        if working.status is not Status.PASS:
            return working
        text = self._text(name, deadline)
        seen = reading.seen + (f'; its TXT record: "{text}"' if text else "")
        return Reading(Status.FAIL, seen, reading.fix.format(address=address, mx_name=host.mx_name, zone=self.shown))


def _check(view: SiteView, lookups: _Lookups, host: Host) -> tuple[Status, str, str]:
    addresses = view.addresses(host)
    if not addresses:
        return (Status.WARN, f"cannot tell: {host.mx_name} has no A or AAAA record to look up",
                "see the DNS checks of its address records")
    deadline = time.monotonic() + view.timeout
    readings = [(address, lookups.look_up(address, host, deadline)) for address in addresses]
    status = max((reading.status for _, reading in readings), key=[Status.PASS, Status.WARN, Status.FAIL].index)
    alike: dict[str, list[str]] = {}  # both addresses not listed: said once
    for address, reading in readings:
        alike.setdefault(reading.seen, []).append(str(address))
    seen = "; ".join(f"{', '.join(addresses)} {said}" for said, addresses in alike.items())
    fix = " ".join(dict.fromkeys(reading.fix for _, reading in readings if reading.fix))
    return status, seen, fix


def checks(view: SiteView) -> list[Check]:
    """One check per MX and list in doctor.blocklists, in the stack's order of hosts."""
    lists = [_Lookups(view, zone) for zone in blocklist_zones(view.site)]
    return [
        Check(f"{host.mx_name}: not listed by {lookups.shown}", "blocklists", host.name,
              functools.partial(_check, view, lookups, host))
        for host in view.site.hosts for lookups in lists
    ]
