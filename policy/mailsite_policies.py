"""Policies that stop a preview whose change would break mail: a backup that would loop, a port
opened to the world, a VM not from a baked image, a key outside a secret.

Each check is a plain function over the stack's resources (`PolicyResource`s), so the tests can
feed it a passing and a violating stack without a Pulumi engine. Self-contained on purpose: the
engine runs a policy pack apart from the program.

Under a real preview the engine hands properties wrapped in pulumi_policy's unknown-checking
proxies: reading a value the engine does not know yet (an image-changing pull request: the new
snapshot id, the new VM's IPv6 address) raises, and the engine then reports the whole policy as
an advisory "can't run during preview", i.e. it checks nothing. So no check here reads a property
with `.get()`, `in` or `.items()`; every read goes through `_get`/`_keys`/`_leaves`, which turn an
unknown into `UNKNOWN`, and each policy decides what an unknown means for it (comments at each).
The general rule: enforce everything that is known; an unknown never passes a violation, never
fails a clean stack, and when it is decisive the policy says so (`not_applicable`, with the reason)
instead of passing silently.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from pulumi_policy import (
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
# Not re-exported by the package, but it is what its proxies raise on an unknown.
from pulumi_policy.proxy import UnknownValueError

INSTANCE = "vultr:index/instance:Instance"
DNS_RECORD = "vultr:index/dnsRecord:DnsRecord"
REVERSE_V4 = "vultr:index/reverseIpv4:ReverseIpv4"
REVERSE_V6 = "vultr:index/reverseIpv6:ReverseIpv6"
FIREWALL_RULE = "vultr:index/firewallRule:FirewallRule"
DOMAIN = "libvirt:index/domain:Domain"
VOLUME = "libvirt:index/volume:Volume"
DATA_VOLUME = "mailsite:index:DataVolume"  # its children are the mail volume, not an image
DYNAMIC = "pulumi-python:dynamic:Resource"

# The zone files' records, as mailsite.dns writes them: owner, TTL, class, type, value.
_ZONE_MX = re.compile(r"^(\S+)\t(?:\d+\t)?IN\tMX\t(\d+)\t(\S+)\.$", re.M)
_ZONE_ADDRESS = re.compile(r"^(\S+)\t(?:\d+\t)?IN\t(A|AAAA)\t(\S+)$", re.M)
_ZONE_PTR = re.compile(r"^(\S+)\.\t(?:\d+\t)?IN\tPTR\t(\S+)\.$", re.M)
_ZONE_TXT = re.compile(r'^(\S+)\t(?:\d+\t)?IN\tTXT\t((?:"[^"]*" ?)+)$', re.M)
_ORIGIN = re.compile(r"^\$ORIGIN (\S+)\.$", re.M)
# smtpd.conf's line, however smtpd's parser would read it: any blanks, a quoted key; and as it reads
# inside a JSON document held in a property (blanks escaped as \t or \n).
_KEY_IN_TEXT = re.compile(r'queue(?:\s|\\[tn])+encryption(?:\s|\\[tn])+(?:\\?")?[0-9a-f]{32}')
# The bake's inputs that carry keys (and the primary's, its users' password hashes); the program
# marks them secret.
KEY_PROPERTIES = ("queueKey", "spamdSyncKey", "tree", "passwordHashes", "dkimKeys")
# A bcrypt hash as the primary's images carry them: whoever reads one can guess its password offline.
_PASSWORD_HASH = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
# A private key in PEM (the primary's DKIM keys are RSA ones), whatever its body: no resource
# property may hold one in clear.
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----")
# The ports only the primary opens (smtpd's MSA, Dovecot's IMAPS, httpd's MTA-STS policy): a backup
# MX is an MTA only. The daemons (mailsite.daemons) decide who opens what; tests/test_policy.py
# fails when this list drifts.
PRIMARY_ONLY_PORTS = (443, 465, 587, 993)
# Of those, the ones that are a key itself: its value must appear nowhere else in clear.
KEY_VALUES = ("queueKey", "spamdSyncKey")


class _Unknown:
    """A value the engine will know only during `up` (a preview's computed value)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


def _get(mapping: Any, key: str, default: Any = None) -> Any:
    if mapping is UNKNOWN:
        return UNKNOWN
    if not isinstance(mapping, Mapping):
        return default
    try:
        return mapping[key]
    except KeyError:
        return default
    except UnknownValueError:
        return UNKNOWN


def _keys(mapping: Any) -> list[str]:
    # Iterating a proxy's keys never reads a value; `key in proxy` does, and raises on an unknown.
    return list(iter(mapping)) if isinstance(mapping, Mapping) else []


def _item(sequence: Sequence, index: int) -> Any:
    try:
        return sequence[index]
    except UnknownValueError:
        return UNKNOWN


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every scalar inside a property, with its path: `str()` of a nested proxy is its repr, so a
    key nested in a dict or list would never be seen by a check that looked at `str(value)`."""
    if isinstance(value, Mapping):
        for key in _keys(value):
            yield from _leaves(_get(value, key), (*path, str(key)))
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        for index in range(len(value)):
            yield from _leaves(_item(value, index), (*path, str(index)))
    else:
        yield path, value


def _dependencies(resource: Any, prop: str) -> frozenset[str]:
    """The resources a property's value comes from (stack policies only)."""
    return frozenset(r.urn for r in (getattr(resource, "property_dependencies", None) or {}).get(prop, []))


def _of(resources: Iterable[Any], typ: str) -> list[Any]:
    return [r for r in resources if r.resource_type == typ]


def _verifying(policy: str, check: Callable[[Any, ReportViolation, list[str]], None]) -> Callable[[Any, ReportViolation], None]:
    """Runs a check that notes in `unseen` what it could not verify because a value is unknown.
    Nothing found but something unseen: say so as not-applicable, with what and why, rather than
    pass silently; a violation found among the known values is reported as usual. The engine
    drops a not-applicable reason (its policy summary keeps only passed and failed), but shows
    each line the pack writes to stderr: the reason goes there too, for the reviewer to see."""

    def validate(args, report: ReportViolation) -> None:
        unseen: list[str] = []
        found: list[str] = []

        def counted(message: str, urn: str | None = None) -> None:
            found.append(message)
            report(message, urn)

        check(args, counted, unseen)
        if unseen and not found:
            which = f"{args.name}: " if isinstance(args, ResourceValidationArgs) else ""  # a stack policy names its own
            reason = which + "not verifiable before `up` (values known only then): " + "; ".join(dict.fromkeys(unseen))
            print(f"mailsite policy {policy}: {reason}", file=sys.stderr, flush=True)
            args.not_applicable(reason)

    validate.__name__ = check.__name__
    return validate


def _zone_files(resources, unseen: list[str]) -> list[str]:
    texts = []
    for r in _of(resources, DYNAMIC):
        if not {"path", "text"} <= set(_keys(r.props)):
            continue  # not a ZoneFile (a bake has a path, but no text)
        path, text = _get(r.props, "path"), _get(r.props, "text")
        if path is UNKNOWN or (str(path).endswith(".zone") and text is UNKNOWN):
            unseen.append(f"{r.name}: zone file")
        elif str(path).endswith(".zone") and text:
            texts.append(str(text))
    return texts


def _roles(resources, unseen: list[str]) -> dict[str, str]:
    """MX name -> primary|backup, from the VMs (Vultr tags; libvirt descriptions)."""
    roles = {}
    for vm in _of(resources, INSTANCE):
        name, tags = _get(vm.props, "hostname"), _get(vm.props, "tags") or []
        if name is UNKNOWN or tags is UNKNOWN or any(t is UNKNOWN for _, t in _leaves(tags)):
            unseen.append(f"{vm.name}: hostname or role tag")
            continue
        roles[name] = "primary" if "primary" in [t for _, t in _leaves(tags)] else "backup"
    for vm in _of(resources, DOMAIN):
        name, description = _get(vm.props, "name"), _get(vm.props, "description", "")
        if UNKNOWN in (name, description):
            unseen.append(f"{vm.name}: name or description")
            continue
        roles[name] = "primary" if "primary" in str(description) else "backup"
    return roles


def _mx_records(resources, unseen: list[str]) -> list[tuple[str, Any, str, str]]:
    """(domain, preference (None if missing, or UNKNOWN), target, record) of every MX record."""
    records = []
    for r in _of(resources, DNS_RECORD):
        kind = _get(r.props, "type")
        if kind is UNKNOWN:
            unseen.append(f"{r.name}: record type")
            continue
        if kind != "MX":
            continue
        domain, priority, data = (_get(r.props, k) for k in ("domain", "priority", "data"))
        if UNKNOWN in (domain, data):
            unseen.append(f"{r.name}: MX domain or target")
            continue
        preference = priority if priority in (UNKNOWN, None) else int(priority)
        records.append((domain, preference, str(data).rstrip("."), r.name))
    for text in _zone_files(resources, unseen):
        origin = _ORIGIN.search(text)
        for _, preference, target in _ZONE_MX.findall(text):
            records.append((origin[1] if origin else "?", int(preference), target, f"zone {origin[1] if origin else '?'}"))
    return records


def check_primary_preference(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # Preferences, targets and roles come from the stack's config and are known in every preview
    # of this program; should one ever be unknown, the records that are known are still compared
    # and the unknown one is named (not-applicable), never guessed either way.
    roles = _roles(args.resources, unseen)
    domains: dict[str, list[tuple[int, str]]] = {}
    for domain, preference, target, record in _mx_records(args.resources, unseen):
        if preference is UNKNOWN:
            unseen.append(f"{domain}: preference of MX {target}")
            continue
        if preference is None:
            report(f"{domain}: MX {record} ({target}) has no preference; give every MX record one (priority)")
            continue
        domains.setdefault(domain, []).append((preference, target))
    for domain, records in domains.items():
        primary = [p for p, target in records if roles.get(target) == "primary"]
        backups = [(p, target) for p, target in records if roles.get(target) == "backup"]
        if not primary:
            if not unseen:
                report(f"{domain}: no MX record points at the primary")
            continue
        for preference, target in backups:
            if preference <= min(primary):
                report(f"{domain}: backup {target} has preference {preference}, not worse than the primary's {min(primary)}: mail would loop or bypass the primary")


@dataclass(frozen=True)
class _Address:
    value: Any  # str, or UNKNOWN
    sources: frozenset[str]  # URNs the value comes from (stack policies)
    record: str
    family: int  # 4 (A) or 6 (AAAA): known even when the address is not


@dataclass(frozen=True)
class _Pointer:
    ip: Any  # str, or UNKNOWN
    name: str
    sources: frozenset[str]
    family: int  # 4 (in-addr.arpa, ReverseIpv4) or 6


def _addresses(resources, unseen: list[str]) -> dict[str, list[_Address]]:
    found: dict[str, list[_Address]] = {}
    for record in _of(resources, DNS_RECORD):
        kind = _get(record.props, "type")
        if kind is UNKNOWN:
            unseen.append(f"{record.name}: record type")
        if kind not in ("A", "AAAA"):
            continue
        name, domain = _get(record.props, "name"), _get(record.props, "domain")
        if UNKNOWN in (name, domain):
            unseen.append(f"{record.name}: record name")
            continue
        owner = f"{name}.{domain}" if name else domain
        data = _get(record.props, "data")
        found.setdefault(owner, []).append(_Address(data if data is UNKNOWN else str(data), _dependencies(record, "data"), record.name, 4 if kind == "A" else 6))
    for text in _zone_files(resources, unseen):
        origin = _ORIGIN.search(text)
        for owner, kind, address in _ZONE_ADDRESS.findall(text):
            name = origin[1] if owner == "@" else f"{owner}.{origin[1]}"
            found.setdefault(name, []).append(_Address(address, frozenset(), f"zone {origin[1]}", 4 if kind == "A" else 6))
    return found


def _pointers(resources, unseen: list[str]) -> list[_Pointer]:
    """Each PTR: the address it is for and the name it answers."""
    pointers = []
    for r in _of(resources, REVERSE_V4) + _of(resources, REVERSE_V6):
        ip, reverse = _get(r.props, "ip"), _get(r.props, "reverse")
        if reverse is UNKNOWN:
            unseen.append(f"{r.name}: PTR name")
            continue
        pointers.append(_Pointer(ip if ip is UNKNOWN else str(ip), str(reverse).rstrip("."), _dependencies(r, "ip"), 4 if r.resource_type == REVERSE_V4 else 6))
    for text in _zone_files(resources, []):
        for pointer, name in _ZONE_PTR.findall(text):
            labels = pointer.split(".")
            if pointer.endswith("in-addr.arpa"):
                pointers.append(_Pointer(".".join(reversed(labels[:4])), name, frozenset(), 4))
            elif pointer.endswith("ip6.arpa"):
                nibbles = "".join(reversed(labels[:32]))
                pointers.append(_Pointer(str(ipaddress.IPv6Address(":".join(nibbles[i:i + 4] for i in range(0, 32, 4)))), name, frozenset(), 6))
    return pointers


def check_forward_confirmed(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # A new VM's address (Vultr's IPv6, a first reserved IP) is unknown in a preview, on both the
    # A/AAAA record and the PTR. When both take it from the same resource, the PTR is for exactly
    # the address the record will hold, so the pair is confirmed by where the values come from.
    # Anything else unknown is named (not-applicable); a known mismatch is always reported.
    incomplete: list[str] = []  # records that may be the missing A/AAAA, once known
    nameless: list[str] = []  # PTRs that may be the missing one, once their name is known
    addresses, pointers = _addresses(args.resources, incomplete), _pointers(args.resources, nameless)
    unseen += incomplete + nameless
    known = {p.ip: p.name for p in pointers if p.ip is not UNKNOWN}
    pending = [p for p in pointers if p.ip is UNKNOWN]
    for domain, _, target, _ in _mx_records(args.resources, unseen):
        if not addresses.get(target) and not incomplete:
            report(f"{domain}: MX target {target} has no A or AAAA record")
        for address in sorted(addresses.get(target, ()), key=lambda a: str(a.value)):
            if address.value is UNKNOWN:
                answers = {p.name for p in pending if p.sources and p.sources == address.sources}
                if answers - {target}:
                    report(f"{target}: the PTR for its new address ({address.record}) answers {', '.join(sorted(answers - {target}))}, not {target}: receivers reject mail without forward-confirmed reverse DNS")
                elif not answers and not nameless and not any(p.name == target and p.family == address.family for p in pointers):
                    # Whatever the address turns out to be, no PTR of its family answers this name.
                    report(f"{target}: no PTR answers {target} for its new address ({address.record}): receivers reject mail without forward-confirmed reverse DNS")
                elif not answers:
                    unseen.append(f"{target}: address of {address.record}")
            elif known.get(address.value) != target:
                if address.value not in known and any(p.name == target for p in pending):
                    unseen.append(f"{target}: PTR address for {address.value}")
                else:
                    report(f"{target}: {address.value} has PTR {known.get(address.value)!r}, not {target}: receivers reject mail without forward-confirmed reverse DNS")


def _texts(resources, unseen: list[str]) -> dict[str | None, list[Any]]:
    """Each name's TXT records, as a receiver reads them (a zone file's strings joined). A record
    whose text is unknown is UNKNOWN at its name; one whose name (or type) is unknown, at None:
    it may be any name's (_may_hold)."""
    found: dict[str | None, list[Any]] = {}
    for record in _of(resources, DNS_RECORD):
        kind = _get(record.props, "type")
        if kind is UNKNOWN:
            unseen.append(f"{record.name}: record type")
            found.setdefault(None, []).append(UNKNOWN)
        if kind != "TXT":
            continue
        name, domain, data = (_get(record.props, k) for k in ("name", "domain", "data"))
        if UNKNOWN in (name, domain, data):
            unseen.append(f"{record.name}: TXT record")
            owner = None if UNKNOWN in (name, domain) else (f"{name}.{domain}" if name else str(domain))
            found.setdefault(owner, []).append(UNKNOWN)
            continue
        # Vultr takes and returns TXT data in one pair of quotes.
        found.setdefault(f"{name}.{domain}" if name else str(domain), []).append(str(data).removeprefix('"').removesuffix('"'))
    for text in _zone_files(resources, unseen):
        origin = _ORIGIN.search(text)
        zone = origin[1] if origin else "?"
        for owner, strings in _ZONE_TXT.findall(text):
            found.setdefault(zone if owner == "@" else f"{owner}.{zone}", []).append("".join(re.findall(r'"([^"]*)"', strings)))
    return found


def _may_hold(texts: dict[str | None, list[Any]], name: str) -> bool:
    """Whether a TXT record at `name` is unknown in this preview: a missing one may be it."""
    return UNKNOWN in texts.get(name, []) or UNKNOWN in texts.get(None, [])


def _spf_names(record: str, owner: str, host: str) -> bool:
    """Whether an SPF record at `owner` lets `host`'s addresses pass by name: `a` (the owner's
    own addresses), `a:<host>` or `mx` (every MX of the domain), each without a failing qualifier."""
    return any(term in ("mx", f"a:{host}") or (term == "a" and owner == host)
               for term in (t.removeprefix("+").lower() for t in record.split()[1:]))


def check_spf_covers_mxes(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # Every MX sends under its HELO name (its bounces have an empty MAIL FROM, and receivers check
    # that name), and each domain's mail leaves from the primary: without these, receivers that
    # enforce SPF (and DMARC) reject or junk the site's mail.
    texts, roles = _texts(args.resources, unseen), _roles(args.resources, unseen)
    primaries = [name for name, role in roles.items() if role == "primary"]

    def spf(name: str) -> list[str]:
        return [t for t in texts.get(name, []) if t is not UNKNOWN and (t.lower().startswith("v=spf1 ") or t.lower() == "v=spf1")]

    domains = {}
    for domain, _, target, _ in _mx_records(args.resources, unseen):
        domains[domain] = True
        records = spf(target)
        if not records and _may_hold(texts, target):
            continue  # named by _texts (not-applicable)
        if not records:
            report(f"{target}: an MX of {domain} without an SPF record for its HELO name; its bounces fail SPF (publish v=spf1 a -all)")
        elif not any(_spf_names(r, target, target) for r in records):
            report(f"{target}: its SPF record ({records[0]}) does not name its own addresses; its bounces fail SPF (publish v=spf1 a -all)")
    for domain in domains:
        records = spf(domain)
        if not records and _may_hold(texts, domain):
            continue
        if not records:
            report(f"{domain}: no SPF record; receivers cannot tell the site's mail from a forgery (publish v=spf1 a:<primary> -all)")
        for primary in primaries:
            if records and not any(_spf_names(r, domain, primary) for r in records):
                report(f"{domain}: its SPF record ({records[0]}) does not name the primary {primary}, which sends the domain's mail")


def check_dmarc_published(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    texts = _texts(args.resources, unseen)
    for domain in dict.fromkeys(domain for domain, *_ in _mx_records(args.resources, unseen)):
        found = [t for t in texts.get(f"_dmarc.{domain}", []) if t is not UNKNOWN]
        if not any(t.startswith("v=DMARC1") for t in found) and not _may_hold(texts, f"_dmarc.{domain}"):
            report(f"{domain}: no DMARC record (_dmarc.{domain} TXT v=DMARC1; p=...): receivers get no policy for mail forged "
                   "in the domain, and the site gets no reports")


# A site's MTA-STS policy, as an image carries it for its httpd.
MTA_STS_POLICY = "mta-sts.txt"


def check_mta_sts_names_the_mxes(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # A sender that enforces the policy delivers only to the MX names it lists: an MX left out is
    # refused mail by every such sender, and a listed name that is no MX is a stale policy.
    targets = {target for _, _, target, _ in _mx_records(args.resources, unseen)}
    for bake in _of(args.resources, DYNAMIC):
        tree = _get(bake.props, "tree")
        if tree is UNKNOWN:
            unseen.append(f"{bake.name}: the image's files")
            continue
        for path in _keys(tree):
            if not str(path).endswith(MTA_STS_POLICY):
                continue
            text = _get(_get(tree, path), "text")
            if text is UNKNOWN or not isinstance(text, str):
                unseen.append(f"{bake.name}: {path}")
                continue
            listed = {line.split(":", 1)[1].strip().lower() for line in text.splitlines() if line.lower().startswith("mx:")}

            def matches(pattern: str, name: str) -> bool:
                # RFC 8461 4.1: "*.example.org" matches one label to its left.
                return pattern == name or (pattern.startswith("*.") and name.split(".", 1)[-1] == pattern[2:])

            for name in sorted(listed):
                if not any(matches(name, target) for target in targets):
                    report(f"{bake.name}: the MTA-STS policy {path} names {name}, which is no MX of the site's domains")
            for target in sorted(targets):
                if not any(matches(name, target) for name in listed):
                    report(f"{bake.name}: the MTA-STS policy {path} leaves out the MX {target}: senders that enforce it refuse to deliver there")


def _lets_through(rule: Any, wanted: int, unseen: list[str], where: str = "") -> bool:
    """Whether a Vultr firewall rule lets tcp/udp port `wanted` in. Vultr reads `a:b` as a range
    and a tcp/udp rule without a port as every port; icmp, gre, esp and ah have no ports, so a port
    given means tcp or udp. An unknown that decides it is noted in `unseen` (and counts as not let
    through)."""
    protocol, port = _get(rule.props, "protocol"), _get(rule.props, "port")
    if protocol is not UNKNOWN and str(protocol) not in ("tcp", "udp"):
        return False
    if port is UNKNOWN:
        unseen.append(f"{where}port")
        return False
    if port in (None, ""):
        if protocol is UNKNOWN:
            unseen.append(f"{where}protocol")
            return False
        return True
    low, _, high = str(port).partition(":")
    try:
        return int(low) <= wanted <= int(high or low)
    except ValueError:
        return True  # Vultr refuses it anyway; never let a malformed port hide an opening


def check_no_world_sync_or_bgp(args: ResourceValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # A rule's port and source are unknown in a preview only when they come from addresses not yet
    # allocated (a first preview). The engine runs this policy again during `up`, before the rule
    # is created, with every value known: an unknown here is named, and enforced then.
    services = [name for wanted, name in ((8025, "spamd-sync (udp/8025)"), (179, "bgp (tcp/179)")) if _lets_through(args, wanted, unseen)]
    if not services:
        return
    size, subnet = _get(args.props, "subnetSize"), _get(args.props, "subnet")
    if size is UNKNOWN:
        unseen.append("subnetSize")
        return
    if int(size if size is not None else 32) == 0:
        port = _get(args.props, "port")
        report(f"{' and '.join(services)} open to the world ({subnet}/0, port {port or 'all'}); only the site's MXes or the route servers may reach it")


def _group_of(resource) -> frozenset:
    """What identifies a firewall group: its id when known, and the group resource it comes from
    (a new group's id is unknown in a preview, but the rule and the VM still name the same one)."""
    value = _get(resource.props, "firewallGroupId")
    known = frozenset() if value is UNKNOWN or value is None else frozenset({("id", str(value))})
    return known | frozenset(("urn", urn) for urn in _dependencies(resource, "firewallGroupId"))


def check_backups_no_msa(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    backup_groups: set = set()
    for vm in _of(args.resources, INSTANCE):
        tags = _get(vm.props, "tags") or []
        values = [t for _, t in _leaves(tags)] if tags is not UNKNOWN else [UNKNOWN]
        if UNKNOWN in values:
            unseen.append(f"{vm.name}: role tag")
        elif "primary" not in values:
            backup_groups |= _group_of(vm)
    for rule in _of(args.resources, FIREWALL_RULE):
        if not _group_of(rule) & backup_groups:
            continue
        exposed = [str(p) for p in PRIMARY_ONLY_PORTS if _lets_through(rule, p, unseen, f"{rule.name}: ")]
        if exposed:
            port = _get(rule.props, "port")
            shown = exposed[0] if str(port) == exposed[0] else f"{' and '.join(exposed)} (port {port or 'all'})"
            report(f"{rule.name}: a backup MX exposes port {shown}; a backup is an MTA only (tcp/25)", rule.urn)


def _mail_volume(urn: str) -> bool:
    """The primary's mail volume (components/data_volume.py): blank by design, never booted from;
    the domain boots from its first disk, which is a baked one."""
    return f"{DATA_VOLUME}$" in urn.split("::")[2]


def check_baked_image(args: ResourceValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # What is checked is where a VM boots from, not which id: an image-changing preview leaves the
    # new snapshot id (or qcow2 path) unknown, and it still names this project's bake. The stock
    # image properties are never set by the program: one set from another resource's output
    # (unknown) is a violation whatever its value turns out to be.
    props, present = args.props, set(_keys(args.props))
    if args.resource_type == INSTANCE:
        other = [k for k in ("osId", "isoId", "appId", "imageId") if k in present and (_get(props, k) is UNKNOWN or _get(props, k))]
        if other or "snapshotId" not in present:
            report(f"{args.name} must boot from this project's baked snapshot (snapshotId), not {other or 'nothing'}")
    elif args.resource_type == VOLUME and not _mail_volume(args.urn):
        if not any(_get(props, k) is UNKNOWN or _get(props, k) for k in ("source", "baseVolumeId")):
            report(f"{args.name} must be made from this project's baked image (source)")
    elif args.resource_type == DOMAIN:
        # The volumes are checked above; a VM boots from them only if nothing else is attached to
        # boot from: a disk by file, url or block device, or a kernel handed over directly.
        other = [k for k in ("kernel", "initrd") if _get(props, k) is not None]
        disks = _get(props, "disks") or []
        if disks is UNKNOWN:
            unseen.append("disks")
            disks = []
        for index in range(len(disks)):
            disk = _item(disks, index)
            if disk is UNKNOWN:
                unseen.append(f"disks.{index}")
                continue
            other += [f"disks.{index}.{k}" for k in ("file", "url", "blockDevice") if _get(disk, k) is not None]
            if _get(disk, "volumeId") is None:
                other.append(f"disks.{index} without a volumeId")
        if other:
            report(f"{args.name} must boot only from this project's baked volumes (disks[].volumeId), not {', '.join(other)}")


def check_images_from_bakes(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # The resource policy above sees only a value, and a stock snapshot id or qcow2 path looks like
    # any other. Where a value comes from is known in every preview, even when the value is not:
    # the engine sends each property's dependencies. This project's images are made by its dynamic
    # resources (the bake, and the wait for Vultr's snapshot).
    kinds = {r.urn: r.resource_type for r in args.resources}
    for vm in _of(args.resources, INSTANCE) + _of(args.resources, VOLUME):
        present = set(_keys(vm.props))
        for prop in [p for p in ("snapshotId", "source", "baseVolumeId") if p in present]:
            sources = _dependencies(vm, prop)
            if not sources:
                report(f"{vm.name}: {prop} is not made by this project's bake (it is set directly); boot only from a baked image", vm.urn)
            elif others := sorted(kinds.get(u, "a resource outside the stack") for u in sources if kinds.get(u) != DYNAMIC):
                report(f"{vm.name}: {prop} is not made by this project's bake (it comes from {', '.join(others)}); boot only from a baked image", vm.urn)


def _clear_properties(resource) -> Iterator[tuple[str, Any]]:
    """Every scalar of a resource outside its declared secret properties, with its path."""
    secret = set(resource.opts.additional_secret_outputs or [])
    for name in _keys(resource.props):
        if name not in secret:
            for path, value in _leaves(_get(resource.props, name), (name,)):
                yield ".".join(path), value


def _key_values(resource) -> set[str]:
    secret = set(resource.opts.additional_secret_outputs or [])
    values = {_get(resource.props, name) for name in KEY_VALUES if name in secret}
    if "passwordHashes" in secret:
        values |= {value for _, value in _leaves(_get(resource.props, "passwordHashes"))}
    if "dkimKeys" in secret:
        # A DKIM key as a whole, and its body's first line: a key copied without its PEM lines
        # (into a user-data script, say) is as much in clear.
        pems = [value for path, value in _leaves(_get(resource.props, "dkimKeys")) if path[-1:] == ("privateKey",)]
        values |= {part for pem in pems if isinstance(pem, str) for part in (pem, *pem.splitlines()[1:2])}
    return {v for v in values if isinstance(v, str) and v}


def check_keys_secret(args: ResourceValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # An unknown string is skipped: it cannot be searched now, and the engine runs this policy
    # again during `up` with the value known, before the resource is created.
    secret = set(args.opts.additional_secret_outputs or [])
    carried = [name for name in KEY_PROPERTIES if name in set(_keys(args.props))] if args.resource_type == DYNAMIC else []
    for name in carried:
        if name not in secret:
            report(f"{args.name}: {name} carries a key but is not a secret")
    keys = _key_values(args)
    for path, value in _clear_properties(args):
        if path.split(".")[0] in carried:
            continue  # reported above when not secret
        if isinstance(value, str) and (_KEY_IN_TEXT.search(value) or any(k in value for k in keys)):
            report(f"{args.name}: property {path} holds a key in clear")
        elif isinstance(value, str) and _PASSWORD_HASH.search(value):
            report(f"{args.name}: property {path} holds a password hash in clear")
        elif isinstance(value, str) and _PRIVATE_KEY.search(value):
            report(f"{args.name}: property {path} holds a private key in clear")


def check_keys_not_elsewhere(args: StackValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # A key is a secret where the program hands it over; the same characters anywhere else in
    # the stack (a user-data script, a tag, a file's text) would sit in clear in state and in
    # every preview. Unknown strings are skipped: they are checked by the resource policy at `up`.
    # A key in clear beside its own secret is the resource policy's finding; this one looks across.
    keys = set().union(*(_key_values(r) for r in _of(args.resources, DYNAMIC)))
    for resource in args.resources:
        others = keys - _key_values(resource)
        for path, value in _clear_properties(resource):
            if isinstance(value, str) and any(k in value for k in others):
                report(f"{resource.name}: property {path} holds a key that is a secret elsewhere", resource.urn)


def check_mail_volume_protected(args: ResourceValidationArgs, report: ReportViolation, unseen: list[str]) -> None:
    # The mail volume outlives every VM of the primary; unprotected, a changed region or block
    # type (a replacement), its removal from the program or a destroy would delete the mail.
    if args.resource_type != DATA_VOLUME and not _mail_volume(args.urn):
        return
    if not args.opts.protect:
        report(f"{args.name} holds the site's mail: it must be protected (protect=True), so that nothing deletes it "
               "without `pulumi state unprotect` first")


def _resource(name: str, description: str, validate: Callable) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=_verifying(name, validate))


def _stack(name: str, description: str, validate: Callable) -> StackValidationPolicy:
    return StackValidationPolicy(name=name, description=description, validate=_verifying(name, validate))


POLICIES = [
    _stack("primary-mx-preference", "The primary's MX preference is strictly better than every backup's.", check_primary_preference),
    _stack("mx-forward-confirmed", "Every MX target has A/AAAA and a PTR answering its name.", check_forward_confirmed),
    _stack("mx-spf-covered", "Every MX target has SPF for its HELO name, and each domain's SPF names the primary.", check_spf_covers_mxes),
    _stack("dmarc-published", "Every mail domain publishes a DMARC record.", check_dmarc_published),
    _stack("mta-sts-names-the-mxes", "The MTA-STS policy lists exactly the MX names.", check_mta_sts_names_the_mxes),
    _resource("no-world-spamd-sync-or-bgp", "No firewall rule opens udp/8025 or tcp/179 to the world.", check_no_world_sync_or_bgp),
    _stack("backups-mta-only", f"Backups do not expose {'/'.join(map(str, PRIMARY_ONLY_PORTS))}.", check_backups_no_msa),
    _resource("baked-images-only", "Every instance boots from a baked image of this project.", check_baked_image),
    _stack("baked-images-from-this-project", "Every VM's snapshot or disk is made by this project's bake.", check_images_from_bakes),
    _resource("mail-volume-protected", "The primary's mail volume is protected: nothing deletes it unasked.", check_mail_volume_protected),
    _resource("queue-keys-secret", "Queue keys, DKIM keys and password hashes reach resources only as secrets.", check_keys_secret),
    _stack("keys-not-in-clear-elsewhere", "A key is nowhere in the stack in clear.", check_keys_not_elsewhere),
]
