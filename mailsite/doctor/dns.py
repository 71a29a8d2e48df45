"""DNS as the world sees it, compared with what the stack computes (mailsite.dns, mailsite.dkim).

Every record is asked of the resolver doctor uses, as a sender's MTA would ask it, and compared
by meaning, not by text: TXT strings joined, SPF as its set of mechanisms, DMARC, MTA-STS, TLS-RPT
and DKIM as tag lists, names without case or final dot. When the resolver disagrees with the
stack, the zone's own name servers (its NS records) are asked too: if they already serve the
stack's value, the resolver only holds an older answer, which is a WARN with the time it may keep
it, not a FAIL. A resolver that cannot answer (SERVFAIL, a timeout) makes a check say it cannot
tell, never PASS. The MTA-STS policy text itself is fetched by the smtp checks (HTTPS).
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from ..dkim import PUBLISHED, RETIRING, SIGNING, DomainKeys, dkim_records
from ..dns import (DnsRecord, address_names, address_records, named_records, presentation, reverse_zone_name,
                   zone_of)
from ..errors import UserError
from ..model import Host, HostAddresses, Site
from ..results import Status
from ..secrets import domain_keys
from .core import Check
from .view import SiteView

AREA = "dns"
# Timeouts a check may spend asking, in all: doctor gives each check three (its deadline), and a
# resolver that answers every query just inside the timeout must leave the check time to say it
# cannot tell, not be cut off at the deadline saying nothing.
ASKING = 2.5


# -- what a record means -------------------------------------------------------------------------

def _tags(text: str, folded: str = "") -> dict[str, str]:
    """A tag list (DMARC, DKIM, MTA-STS, TLS-RPT: "v=DMARC1; p=reject"): tag names without case,
    values trimmed; the value of `folded` (a DKIM key, p=) may be folded with blanks, which mean
    nothing in it."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            name = name.strip().lower()
            tags[name] = "".join(value.split()) if name == folded else value.strip()
    return tags


def _tag_key(exact: tuple[str, ...] = (), folded: str = "", first: str = "",
             defaults: dict[str, str] | None = None) -> Callable[[str], Hashable]:
    """What two tag lists agree on: every tag's value without case, but those of `exact` (a DKIM
    key's base64 and version, an MTA-STS id: case-sensitive), a tag left out as its default; and
    whether the tag `first`, when there, comes first (a DKIM record's v=: elsewhere, verifiers
    discard the record)."""
    def key(text: str) -> Hashable:
        written = _tags(text, folded)
        placed = first not in written or next(iter(written)) == first
        tags = {**(defaults or {}), **written}
        return frozenset((name, value if name in exact else value.lower()) for name, value in tags.items()), placed
    return key


def _first_tag(version: str) -> Callable[[str], bool]:
    """Whether a TXT record is of the kind whose first tag is v=<version> (RFC 7489 6.4 and its
    kin): other TXT records at the same name are someone else's."""
    def selects(text: str) -> bool:
        name, _, value = text.split(";")[0].partition("=")
        return name.strip() == "v" and value.strip() == version
    return selects


def _is_spf(text: str) -> bool:
    # RFC 7208 4.5: "v=spf1" followed by a blank or nothing.
    return text.split(" ")[0].lower() == "v=spf1"


def _spf_key(text: str) -> Hashable:
    # The stack's mechanisms all pass, then one `all` ends the record: which comes first among
    # the passing ones changes nothing, the closing `all` and its qualifier do, and so does
    # anything after it, which a receiver never tests (RFC 7208 5.1).
    # A domain may end in a dot (RFC 7208 7.1: domain-end), which changes nothing.
    terms = [re.sub(r"([:=].*)\.(?=/|$)", r"\1", term.lower().removeprefix("+")) for term in text.split()[1:]]
    closing = next((index for index, term in enumerate(terms) if term.lstrip("-~?") == "all"), len(terms))
    return frozenset(terms[:closing]), tuple(terms[closing:])


def _as_at(kind: Kind, name: str, text: str) -> str:
    """A served record as the stack would write it at `name`, to compare: an SPF `a:<name>` or
    `mx:<name>` at <name> itself is the stack's bare `a` or `mx` (RFC 7208 5.3: the domain
    defaults to the one checked)."""
    if kind is not SPF:
        return text
    own = re.escape(name.rstrip("."))
    return re.sub(rf"(?i)(?<=\s)([-~?+]?)(a|mx):{own}\.?(?=[\s/]|$)", r"\1\2", text)


def _name(text: str) -> str:
    return text.rstrip(".").lower()


def _mx_key(text: str) -> Hashable:
    preference, target = text.split()
    return int(preference), _name(target)


def _srv_key(text: str) -> Hashable:
    priority, weight, port, target = text.split()
    return int(priority), int(weight), int(port), _name(target)


def _caa_key(text: str) -> Hashable:
    # Tags without case (RFC 8659 4.1); an issue value starts with the CA's domain name, which
    # has none either (its parameters, an account URI, may).
    flags, tag, value = text.split(" ", 2)
    value, tag = value.strip('"'), tag.lower()
    if tag in ("issue", "issuewild"):
        issuer, semicolon, parameters = value.partition(";")
        value = issuer.lower() + semicolon + parameters
    return int(flags), tag, value


def _address_key(text: str) -> Hashable:
    return ipaddress.ip_address(text)


@dataclass(frozen=True)
class Kind:
    """One kind of record: its DNS type, which records of that type at a name are of this kind,
    and what two records agree on."""

    label: str
    rdtype: str
    key: Callable[[str], Hashable]
    selects: Callable[[str], bool] = lambda text: True


MX = Kind("MX", "MX", _mx_key)
SPF = Kind("SPF", "TXT", _spf_key, _is_spf)
# The tags RFC 7489 6.3 gives a default, which a record may as well write out (sp=: p='s, not fixed).
DMARC = Kind("DMARC", "TXT", _tag_key(defaults={"adkim": "r", "aspf": "r", "pct": "100", "fo": "0", "rf": "afrf",
                                                "ri": "86400"}), _first_tag("DMARC1"))
MTA_STS = Kind("MTA-STS", "TXT", _tag_key(exact=("id",)), _first_tag("STSv1"))
TLS_RPT = Kind("TLS-RPT", "TXT", _tag_key(), _first_tag("TLSRPTv1"))
# A selector's name holds its key's record and nothing else. v=DKIM1, when there, first and to
# the letter: "Records beginning with a v= tag with any other value MUST be discarded" (RFC 6376 3.6.1).
DKIM = Kind("DKIM", "TXT", _tag_key(exact=("p", "v"), folded="p", first="v", defaults={"v": "DKIM1", "k": "rsa"}))
SRV = Kind("SRV", "SRV", _srv_key)
CAA = Kind("CAA", "CAA", _caa_key)
A = Kind("A", "A", _address_key)
AAAA = Kind("AAAA", "AAAA", _address_key)


def kind_of(record: DnsRecord) -> Kind:
    if record.type == "TXT":
        return next((kind for kind in (SPF, DMARC, MTA_STS, TLS_RPT) if kind.selects(record.value)), DKIM)
    return {"MX": MX, "SRV": SRV, "CAA": CAA, "A": A, "AAAA": AAAA}[record.type]


def _text(record: DnsRecord) -> str:
    """A record's data as a resolver's answer reads: TXT as its joined text, the rest as presented."""
    return record.value if record.type == "TXT" else presentation(record)


# -- asking --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    """One name and type as a name server answered it."""

    texts: tuple[str, ...] = ()  # each record's data (TXT: its strings joined); () for none
    ttl: int | None = None  # how long the answer (or the absence) may be kept, when known
    trouble: str | None = None  # why nothing is known: no answer, SERVFAIL, refused
    alias: str | None = None  # the name is an alias (CNAME) of this one, which holds the records
    timed_out: bool = False  # the trouble took the whole time: asking again would too


def _texts(rrset) -> tuple[str, ...]:
    if rrset is None:
        return ()
    if rrset.rdtype == dns.rdatatype.TXT:
        return tuple(b"".join(item.strings).decode("utf-8", "replace") for item in rrset)
    return tuple(item.to_text() for item in rrset)


def _negative_ttl(response) -> int | None:
    # RFC 2308 5: an absence is kept for the SOA's TTL or its minimum field, whichever is less.
    for rrset in getattr(response, "authority", ()) or ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(rrset.ttl, rrset[0].minimum)
    return None


def ask(resolver: dns.resolver.Resolver, name: str, rdtype: str, timeout: float, until: float | None = None) -> Served:
    """`name`'s records of `rdtype` as the resolver answers them now; `until`: the monotonic
    time the check stops asking at."""
    left = timeout if until is None else min(timeout, until - time.monotonic())
    if left <= 0.01:
        return Served(trouble=_slow(timeout), timed_out=True)
    try:
        answer = resolver.resolve(dns.name.from_text(name), rdtype, lifetime=left, raise_on_no_answer=False,
                                  search=False)
    except dns.resolver.NXDOMAIN as error:
        responses = list(error.responses().values())
        return Served((), _negative_ttl(responses[0]) if responses else None)
    except dns.resolver.LifetimeTimeout:
        return Served(trouble=f"no answer within {timeout:g} s" if left >= timeout else _slow(timeout), timed_out=True)
    except dns.resolver.NoNameservers as error:
        return Served(trouble=_servers_trouble(error))
    except dns.exception.DNSException as error:
        return Served(trouble=f"{type(error).__name__}: {error}")
    alias = _name(answer.canonical_name.to_text()) if answer.canonical_name != answer.qname else None
    if answer.rrset is None:
        return Served((), _negative_ttl(answer.response), alias=alias)
    return Served(_texts(answer.rrset), answer.rrset.ttl, alias=alias)


def _slow(timeout: float) -> str:
    return f"the resolver answers too slowly: the {ASKING * timeout:g} s this check may ask for ran out"


def _servers_trouble(error: dns.resolver.NoNameservers) -> str:
    # Every server the resolver tried failed: say how, once per distinct answer.
    answers = []
    for _server, _tcp, _port, failure, *_ in error.kwargs.get("errors", []):
        text = str(failure) if failure is not None else "no answer"
        for code in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"):
            if code in text:
                text = code
        if text not in answers:
            answers.append(text)
    return "the resolver answered " + (", ".join(answers) or "nothing usable")


def ask_server(address: str, port: int, name: str, rdtype: str, timeout: float) -> Served:
    """`name`'s records of `rdtype` from one name server itself (no recursion)."""
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(query, address, timeout=timeout, port=port)
    except dns.exception.Timeout:
        return Served(trouble=f"{address}: no answer within {timeout:g} s", timed_out=True)
    except (dns.exception.DNSException, OSError) as error:
        return Served(trouble=f"{address}: {type(error).__name__}")
    if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Served(trouble=f"{address} answered {dns.rcode.to_text(response.rcode())}")
    wanted = dns.rdatatype.from_text(rdtype)
    rrset = next((r for r in response.answer if r.rdtype == wanted and r.name == query.question[0].name), None)
    return Served(_texts(rrset), rrset.ttl if rrset is not None else None)


# -- comparing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Want:
    """What the stack says one name holds, of one kind; `severity`: what a difference is."""

    name: str
    kind: Kind
    records: tuple[DnsRecord, ...]
    severity: Status = Status.FAIL
    note: str = ""  # why a difference matters, when it is not plain (a DKIM key's state)


@dataclass(frozen=True)
class Finding:
    status: Status
    seen: str
    fixes: tuple[str, ...] = ()
    timed_out: bool = False


# Characters of a served record a fix shows whole: a DKIM key's record fits; a hostile name
# server's 64 KB record is shown by its start and its length.
SHOWN_WHOLE = 1000


def _zone_string(text: str) -> str:
    """TXT data as a zone file's quoted string holds it: quotes and backslashes escaped, every
    byte that is not printable ASCII as \\DDD. What a hostile name server put there (a terminal's
    escape sequence) is shown, never obeyed, and the line stays one a zone file reads."""
    return "".join(f"\\{char}" if char in '"\\' else char if " " <= char <= "~" else
                   "".join(f"\\{byte:03d}" for byte in char.encode("utf-8")) for char in text)


def _shown(kind: Kind, text: str) -> str:
    return f'"{_zone_string(text)}"' if kind.rdtype == "TXT" else text


def _removed(kind: Kind, text: str) -> str:
    """A served record as a fix names it for removal: whole, or a long one by its start."""
    if len(text) <= SHOWN_WHOLE:
        return _shown(kind, text)
    return f"{_shown(kind, text[:100])[:-1]}...\" (a record of {len(text)} characters)"


def _listed(kind: Kind, texts: Sequence[str]) -> str:
    """Records as a line of what was seen: a long one (a DKIM key) by its ends alone, which tell
    two keys apart; the fix gives the whole record."""
    shown = [text if len(text) <= 100 else f"{text[:40]}...{text[-16:]}" for text in texts]
    return ", ".join(_shown(kind, text) for text in shown) if shown else "nothing"


class Zones:
    """The name servers of the zones holding the site's names (NS, then their addresses), each
    found once per run."""

    def __init__(self, view: SiteView):
        self.view = view
        self._servers: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()
        # Addresses that did not answer in time once this run: not asked again, so that the
        # checks after the first do not each wait for them.
        self.silent: set[str] = set()

    def servers(self, name: str, until: float) -> list[tuple[str, str]]:
        """(name, address) of each name server of the zone `name` lies in: the NS records of its
        site domain, or of the nearest name above that has some (a site domain may lie inside a
        zone of its parent's), as the resolver knows them; [] when none is found."""
        view = self.view
        domain = zone_of(name, view.site.domains) or name
        with self._lock:
            if domain in self._servers:
                return self._servers[domain]
        found: list[tuple[str, str]] = []
        labels = domain.split(".")
        # Not above the top-level domain: the root's and the TLD's servers hold no site record.
        for start in range(max(len(labels) - 1, 1)):
            names = ask(view.resolver, ".".join(labels[start:]), "NS", view.timeout, until).texts
            if names:
                for server in names:
                    for rdtype in ("A", "AAAA"):
                        found += [(_name(server), address)
                                  for address in ask(view.resolver, server, rdtype, view.timeout, until).texts]
                break
        with self._lock:
            return self._servers.setdefault(domain, found)


class Comparer:
    """Compares what the world is served with the stack's records, for one check: made when the
    check starts, it asks until ASKING timeouts later."""

    def __init__(self, view: SiteView, zones: Zones):
        self.view = view
        self.zones = zones
        self.until = time.monotonic() + ASKING * view.timeout

    def ask(self, name: str, rdtype: str) -> Served:
        return ask(self.view.resolver, name, rdtype, self.view.timeout, self.until)

    def find(self, want: Want) -> Finding:
        served = self.ask(want.name, want.kind.rdtype)
        kind, name = want.kind, want.name
        expected = [_text(record) for record in want.records]
        if served.trouble:
            return Finding(Status.WARN, f"cannot tell: {name} {kind.rdtype}: {served.trouble}",
                           (cannot_tell_fix(self.view.site, name),), served.timed_out)
        got = [text for text in served.texts if kind.selects(text)]
        problem = self._difference(kind, expected, [_as_at(kind, name, text) for text in got])
        if problem is None:
            return Finding(Status.PASS, f"{name} {_listed(kind, expected)}")
        if self._published_at_zone(want, expected):
            kept = f"up to {served.ttl} s" if served.ttl else "until its TTL runs out"
            return Finding(Status.WARN,
                           f"{name} {kind.label}: the resolver answers {_listed(kind, got)}, the zone's own name "
                           f"servers already serve the stack's {_listed(kind, expected)}",
                           (f"wait: resolvers keep the answer they have {kept}",))
        seen = f"{name} {kind.label}: {problem}"
        if want.note:
            seen += f" ({want.note})"
        return Finding(want.severity, seen, self._fixes(want, got, served))

    @staticmethod
    def _difference(kind: Kind, expected: Sequence[str], got: Sequence[str]) -> str | None:
        """What differs, in words; None when the records mean the same."""
        keys = {_safe_key(kind, text) for text in got}
        want_keys = {kind.key(text) for text in expected}
        if keys == want_keys and len(got) == len(expected):
            return None
        if not got:
            return f"none served, the stack's is {_listed(kind, expected)}"
        if not expected:
            return f"served {_listed(kind, got)}, the stack has none"
        return f"served {_listed(kind, got)}, the stack's is {_listed(kind, expected)}"

    def _published_at_zone(self, want: Want, expected: Sequence[str]) -> bool:
        """Whether every name server of the record's zone that answers already serves the stack's
        value (and at least one answers): then only the resolver is behind."""
        answered = False
        # All of them within two timeouts: a zone's dead name server must not hold the check past
        # its deadline, where it would say nothing of what the resolver did answer.
        until = min(self.until, time.monotonic() + 2 * self.view.timeout)
        for _, address in self.zones.servers(want.name, until):
            left = min(self.view.timeout, until - time.monotonic())
            if left <= 0:
                break
            if address in self.zones.silent:
                continue
            served = ask_server(address, self.view.resolver.port, want.name, want.kind.rdtype, left)
            if served.timed_out:
                self.zones.silent.add(address)
            if served.trouble:
                continue
            if self._difference(want.kind, expected, [_as_at(want.kind, want.name, t) for t in served.texts
                                                      if want.kind.selects(t)]) is not None:
                return False
            answered = True
        return answered

    def _fixes(self, want: Want, got: Sequence[str], served: Served) -> tuple[str, ...]:
        site, kind = self.view.site, want.kind
        want_keys = {kind.key(_text(record)) for record in want.records}
        fixes = [f"publish {zone_line(site, record)}" for record in want.records
                 if kind.key(_text(record)) not in {_safe_key(kind, text) for text in got}]
        fixes += [f"remove {want.name}. IN {kind.rdtype} {_removed(kind, text)}" for text in got
                  if _safe_key(kind, text) not in want_keys]
        if not fixes:  # the same records, one of them twice over (a second SPF record: a permerror)
            fixes = [f"publish exactly {'; '.join(zone_line(site, record) for record in want.records)}"]
        fixes.append(where_published(site, want.name))
        if served.ttl:
            fixes.append(f"resolvers keep the old answer up to {served.ttl} s after the change")
        return tuple(fixes)


def _safe_key(kind: Kind, text: str) -> Hashable:
    try:
        return kind.key(text)
    except ValueError:
        return ("unreadable", text)


def cannot_tell_fix(site: Site, name: str) -> str:
    return (f"check that {zone_of(name, site.domains) or name}'s name servers answer, or ask another resolver "
            "(--nameserver)")


def zone_line(site: Site, record: DnsRecord) -> str:
    """The record as a zone file line (what to publish, whatever the DNS host's form)."""
    return f"{record.name}. {site.dns.ttl} IN {record.type} {presentation(record)}"


def where_published(site: Site, name: str) -> str:
    """Where the site's records of `name` are written, so that the fix names the place."""
    zone = zone_of(name, site.domains) or name
    if site.runs_on("vultr"):
        if site.vultr.dns:
            # --refresh: without it Pulumi compares with its state, not with Vultr, and sees no change.
            return (f"`pulumi up --refresh` writes the stack's records to Vultr DNS (zone {zone}), putting back one "
                    "changed or deleted there by hand")
        return f"in the DNS that serves {zone} (vultr.dns is false: the stack writes none)"
    return (f"in your name server's zone {zone}: `pulumi up` writes the stack's records of it to a zone file in "
            f"libvirt.zoneDir ({site.libvirt.zone_dir})")


def _outcome(findings: Sequence[Finding]) -> tuple[Status, str, str]:
    """One check's result from its names' findings: the worst, with what was seen and the fixes
    of every finding that is that bad (a FAIL hides the WARNs beside it)."""
    worst = max((f.status for f in findings), key=[Status.PASS, Status.WARN, Status.FAIL].index, default=Status.PASS)
    if worst is Status.PASS:
        return Status.PASS, "as the stack says: " + "; ".join(f.seen for f in findings), ""
    shown = [f for f in findings if f.status is worst] if worst is Status.FAIL else [f for f in findings if f.status is not Status.PASS]
    fixes = list(dict.fromkeys(fix for f in shown for fix in f.fixes))
    return worst, "; ".join(f.seen for f in shown), "; ".join(fixes)


def findings(comparer: Comparer, wants: Sequence[Want]) -> list[Finding]:
    """Each name's finding, one after the other, until the resolver has once not answered in
    time: a check of six names would otherwise take six timeouts, past its deadline, and say
    nothing where it can say it cannot tell."""
    found = []
    for want in wants:
        found.append(comparer.find(want))
        if found[-1].timed_out:
            break
    return found


def compared(view: SiteView, zones: Zones, wants: Sequence[Want]) -> Callable[[], tuple[Status, str, str]]:
    return lambda: _outcome(findings(Comparer(view, zones), wants))


def wants_of(records: Sequence[DnsRecord], kind: Kind | None = None) -> list[Want]:
    """One Want per name and kind, in the order the records come."""
    grouped: dict[tuple[str, str], list[DnsRecord]] = {}
    kinds: dict[tuple[str, str], Kind] = {}
    for record in records:
        own = kind or kind_of(record)
        grouped.setdefault((record.name, own.label), []).append(record)
        kinds[(record.name, own.label)] = own
    return [Want(name, kinds[(name, label)], tuple(found)) for (name, label), found in grouped.items()]


# -- the checks ----------------------------------------------------------------------------------

def checks(view: SiteView) -> list[Check]:
    site, zones = view.site, Zones(view)
    records = named_records(site)
    hosts = {host.mx_name: host for host in site.hosts}
    by_domain: dict[str, list[DnsRecord]] = {}
    by_host: dict[str, list[DnsRecord]] = {}
    for record in records:
        if record.name in hosts and record.type != "MX":
            by_host.setdefault(hosts[record.name].name, []).append(record)
        else:
            by_domain.setdefault(zone_of(record.name, site.domains) or record.name, []).append(record)
    found = []
    for domain in site.domains:
        mine = by_domain.get(domain, [])
        for kind, what in ((MX, "MX records (each MX and its preference)"), (SPF, "SPF record"),
                           (DMARC, "DMARC record"), (MTA_STS, "MTA-STS record (the policy's id)"),
                           (TLS_RPT, "TLS-RPT record"), (SRV, "mail client SRV records"),
                           (CAA, "CAA records of the MTA-STS host")):
            wants = [want for want in wants_of(mine) if want.kind is kind]
            if wants:
                found.append(Check(f"{domain}: {what}", AREA, None, compared(view, zones, wants)))
        found.append(Check(f"{domain}: DKIM records of the keys in the secrets backend", AREA, None,
                           partial(_dkim, view, zones, domain)))
    for host in site.hosts:
        found.append(Check(f"{host.mx_name}: A/AAAA records", AREA, host.name,
                           partial(_addresses, view, zones, host)))
        found.append(Check(f"{host.mx_name}: reverse DNS names it (forward-confirmed)", AREA, host.name,
                           partial(_reverse, view, zones, host)))
        for kind, what in ((SPF, "SPF record (its bounces' HELO name)"), (CAA, "CAA record")):
            wants = [want for want in wants_of(by_host.get(host.name, [])) if want.kind is kind]
            if wants:
                found.append(Check(f"{host.mx_name}: {what}", AREA, host.name, compared(view, zones, wants)))
    return found


# DKIM: the secrets backend holds each domain's selectors; each must be in DNS with its key.

_DKIM_SEVERITY = {SIGNING: (Status.FAIL, "the key the primary signs with: receivers fail its signatures"),
                  PUBLISHED: (Status.WARN, "a new key, not signing yet: a rotation waits until DNS serves it"),
                  RETIRING: (Status.WARN, "a retiring key: mail it signed lately no longer verifies")}


def _dkim(view: SiteView, zones: Zones, domain: str) -> tuple[Status, str, str]:
    site, comparer = view.site, Comparer(view, zones)
    if site.secrets.backend == "inline":
        return (Status.WARN, "the inline secrets backend keeps no DKIM keys: the site signs nothing",
                "use secrets.backend file or aws-secretsmanager, then python -m mailsite secrets init --config <stack file>")
    try:
        stored = domain_keys(view.store(), view.stack, domain)
    except UserError as error:
        return Status.FAIL, f"the secrets backend's DKIM keys of {domain}: {error}", "see the secrets backend"
    except Exception as error:  # no credentials, no network to the backend: nothing is known
        return (Status.WARN, f"cannot tell: the secrets backend could not be read ({type(error).__name__})",
                "check the backend's credentials and reach from this machine (secrets in the stack file)")
    if stored is None:
        return (Status.FAIL, f"the secrets backend holds no DKIM keys of {domain}: its mail goes unsigned",
                "python -m mailsite secrets init --config <stack file>, then pulumi up")
    keys: DomainKeys = stored[0]
    wants = []
    for selector in keys.selectors:
        record, = dkim_records([DomainKeys(domain, (selector,))])
        severity, note = _DKIM_SEVERITY[selector.state]
        wants.append(Want(record.name, DKIM, (record,), severity, f"selector {selector.name}, {note}"))
    status, seen, fix = _outcome(findings(comparer, wants))
    if status is Status.PASS:
        states = ", ".join(f"{s.name} ({s.state})" for s in keys.selectors)
        seen = f"every selector's key published: {states}"
    return status, seen, fix


# A/AAAA: each MX name (and on the primary each MTA-STS host) has addresses; when the stack fixes
# them (static addressing), exactly those.

def _fixed_addresses(site: Site, host: Host) -> HostAddresses | None:
    if site.network.addressing != "static" or not isinstance(host.ipv4, ipaddress.IPv4Address):
        return None
    return HostAddresses(host.ipv4, host.ipv6 if isinstance(host.ipv6, ipaddress.IPv6Address) else None)


def _own_addresses(comparer: Comparer, host: Host) -> list[tuple[str, ...]] | tuple[Status, str, str]:
    """The MX name's A and AAAA records, or the check's WARN when the resolver does not answer.
    Asked here rather than through view.addresses, which cannot tell no address from no answer."""
    found = []
    for rdtype in ("A", "AAAA"):
        served = comparer.ask(host.mx_name, rdtype)
        if served.trouble:
            return (Status.WARN, f"cannot tell: {host.mx_name} {rdtype}: {served.trouble}",
                    cannot_tell_fix(comparer.view.site, host.mx_name))
        found.append(served.texts)
    return found


def _aliased(comparer: Comparer, host: Host, records: Sequence[DnsRecord]) -> tuple[Status, str, str] | None:
    """The FAIL of an MX name that is an alias (CNAME): a resolver follows it to addresses, but an
    MX's target must not be an alias (RFC 2181 10.3, RFC 5321 5.1), some MTAs refuse it, and the
    name holds none of the MX's own records (its HELO SPF, its CAA) beside the CNAME. `records`:
    its addresses as the stack has them, or as the alias answers when the provider allocates them."""
    served = comparer.ask(host.mx_name, "A")
    if served.alias is None:
        return None
    if not records:
        records = [DnsRecord(host.mx_name, rdtype, text)
                   for rdtype in ("A", "AAAA") for text in comparer.ask(host.mx_name, rdtype).texts]
    site = comparer.view.site
    publish = "; ".join(f"publish {zone_line(site, record)}" for record in records) or f"publish {host.mx_name}'s A and AAAA records"
    return (Status.FAIL, f"{host.mx_name} is an alias (CNAME) of {served.alias}: an MX's name must hold its own "
                         "A/AAAA records, not alias another name (RFC 2181 10.3); MTAs may refuse to deliver to it",
            f"remove {host.mx_name}. IN CNAME {served.alias}.; {publish}; {where_published(site, host.mx_name)}")


def _nowhere(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified or address.is_link_local or address.is_multicast


def _addresses(view: SiteView, zones: Zones, host: Host) -> tuple[Status, str, str]:
    site, comparer = view.site, Comparer(view, zones)
    names = [name for name, owner in address_names(site) if owner.name == host.name]
    fixed = _fixed_addresses(site, host)
    if fixed is not None:
        # address_records asks every host's addresses; only this host's names are kept.
        records = [r for r in address_records(site, {h.name: fixed for h in site.hosts}) if r.name in names]
        aliased = _aliased(comparer, host, [r for r in records if r.name == host.mx_name])
        if aliased is not None:
            return aliased
        wants = [want for want in wants_of(records)]
        # No AAAA in the stack: none must be served (a sender would try an address the MX lacks).
        wants += [Want(name, AAAA, ()) for name in names if fixed.ipv6 is None]
        return _outcome(findings(comparer, wants))
    # Addresses the provider allocates: the MX name must have them, the MTA-STS hosts the same.
    aliased = _aliased(comparer, host, [])
    if aliased is not None:
        return aliased
    own = _own_addresses(comparer, host)
    if isinstance(own, tuple):
        return own
    ipv4, ipv6 = own
    if not ipv4:
        return (Status.FAIL, f"{host.mx_name} has no A record: no sender can reach it (spamd and its sync are IPv4 only)",
                f"publish {host.mx_name}'s A record, the address of its VM: {where_published(site, host.mx_name)}")
    if host.ipv6 is not None and not ipv6:
        return (Status.FAIL, f"{host.mx_name} has no AAAA record, and the stack gives it IPv6",
                f"publish {host.mx_name}'s AAAA record, the address of its VM: {where_published(site, host.mx_name)}")
    # An address no sender can reach (loopback, unspecified, link-local, multicast): a record
    # typed by hand or a placeholder, which the checks from outside would then test on the machine
    # doctor runs on. Private ones stay: a libvirt site's network may be one.
    unreachable = [text for text in (*ipv4, *ipv6) if _nowhere(text)]
    if unreachable:
        return (Status.FAIL, f"{host.mx_name} has an address no sender can reach: {', '.join(unreachable)}",
                f"publish the address of its VM instead: {where_published(site, host.mx_name)}")
    wants = [Want(name, kind, tuple(DnsRecord(name, kind.rdtype, text) for text in texts))  # type: ignore[arg-type]
             for name in names if name != host.mx_name for kind, texts in ((A, ipv4), (AAAA, ipv6))]
    status, seen, fix = _outcome(findings(comparer, wants))
    addresses = ", ".join([*ipv4, *ipv6])
    if status is Status.PASS:
        return Status.PASS, f"{host.mx_name} {addresses}" + (f"; {', '.join(n for n in names if n != host.mx_name)} the same" if len(names) > 1 else ""), ""
    return status, seen, fix


# Reverse DNS: each address the MX name has answers the MX name (PTR), which answers that address
# (it is one of the MX name's addresses by construction): forward-confirmed.

def _reverse(view: SiteView, zones: Zones, host: Host) -> tuple[Status, str, str]:
    site, comparer = view.site, Comparer(view, zones)
    own = _own_addresses(comparer, host)
    if isinstance(own, tuple):
        return own
    addresses = [ipaddress.ip_address(text) for texts in own for text in texts]
    if not addresses:
        return (Status.FAIL, f"{host.mx_name} has no address to look up the reverse DNS of",
                f"publish {host.mx_name}'s A/AAAA records first (the A/AAAA check says which)")
    problems: list[tuple[str, str]] = []
    unknown: list[str] = []
    for address in addresses:
        served = comparer.ask(address.reverse_pointer, "PTR")
        if served.trouble:
            unknown.append(f"{address}: {served.trouble}")
            if served.timed_out:
                break
            continue
        names = [_name(text) for text in served.texts]
        if host.mx_name.lower() in names and len(names) == 1:
            continue
        if not names:
            problems.append((f"{address} has no PTR record", _ptr_fix(site, host, address)))
        elif host.mx_name.lower() in names:
            problems.append((f"{address} has PTR records {', '.join(names)}: receivers may take another than "
                             f"{host.mx_name}", _ptr_fix(site, host, address)))
        else:
            back = [name for name in names if str(address) in
                    {str(ipaddress.ip_address(t)) for rd in ("A", "AAAA") for t in comparer.ask(name, rd).texts}]
            confirmed = " (which resolves back to it)" if back else " (which does not even resolve back to it)"
            problems.append((f"{address} answers {', '.join(names)}{confirmed}, not {host.mx_name}: receivers "
                             f"distrust an MX whose HELO name the reverse DNS does not confirm",
                             _ptr_fix(site, host, address)))
    if problems:
        return Status.FAIL, "; ".join(p for p, _ in problems), "; ".join(dict.fromkeys(f for _, f in problems))
    if unknown:
        return (Status.WARN, "cannot tell: " + "; ".join(unknown),
                "check that the reverse zones' name servers (your provider's) answer, or ask another resolver (--nameserver)")
    shown = ", ".join(str(a) for a in addresses)
    return Status.PASS, f"{shown} answer {host.mx_name}, which answers them", ""


def _ptr_fix(site: Site, host: Host, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    line = f"{address.reverse_pointer}. {site.dns.ttl} IN PTR {host.mx_name}."
    if site.runs_on("vultr"):
        return (f"set {address}'s reverse DNS to {host.mx_name} at Vultr: `pulumi up` sets it on the instance "
                f"(its ReverseIpv4/ReverseIpv6), or the instance's Settings, IPv{address.version}, Reverse DNS")
    length = site.network.ipv4_prefix_length if address.version == 4 else site.network.ipv6_prefix_length
    zone = reverse_zone_name(ipaddress.ip_network(f"{address}/{length}", strict=False))
    return (f"publish {line} in the reverse zone {zone} (`pulumi up` writes its zone file in libvirt.zoneDir, {site.libvirt.zone_dir}), "
            f"served where your provider delegates that zone, or set the PTR at your provider")
