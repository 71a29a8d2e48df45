"""The site's DNS records, as plain data: the cloud DNS, the zone files and the lab all serve these.

Every record is computed here, once, from the model; each DNS target only writes them in its own
syntax (Vultr's API, an RFC 1035 zone file, dnsmasq's options). docs/operating.md, DNS records,
says what each record does for a sender and which setting controls it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .model import Host, HostAddresses, Site
from .mta_sts import policy_hosts, policy_id

RecordType = Literal["MX", "A", "AAAA", "TXT", "SRV", "CAA"]

# The most a TXT record's one character-string holds (RFC 1035 3.3.14): longer text (a 2048-bit
# DKIM key) is served as several strings, which a reader joins.
TXT_STRING_BYTES = 255


@dataclass(frozen=True)
class DnsRecord:
    name: str  # fully qualified, no trailing dot
    type: RecordType
    # MX and A/AAAA: the target or address. TXT: the text itself, unquoted and unsplit (each target
    # quotes and splits it). SRV: "priority weight port target" ("." for a service the site does not
    # offer). CAA: 'flags tag "value"'.
    value: str
    priority: int | None = None  # MX preference


@dataclass(frozen=True)
class ReverseRecord:
    """A PTR that must answer the MX name, so that forward and reverse DNS confirm each other."""

    address: str
    name: str


def certificate_authority(site: Site) -> str:
    """The CA that issues the hosts' certificates, as CAA names it (RFC 8659): acme.directory's,
    where acme-client gets them (letsencrypt.org, or acme.caaIssuer)."""
    return site.acme.issuer


def report_addresses(site: Site) -> tuple[str, str]:
    """Where DMARC aggregate and TLS reports go: the settings, or postmaster@ the first domain (a
    recipient every site has)."""
    return site.dns.dmarc_reports or zone_contact(site), site.dns.tls_reports or zone_contact(site)


def zone_contact(site: Site) -> str:
    """Who answers for the site's DNS (a complete zone's SOA): postmaster, which every site receives."""
    return f"postmaster@{site.domains[0]}"


def address_names(site: Site) -> list[tuple[str, Host]]:
    """Each name that carries a host's A/AAAA records, with its host: every MX name, and the
    MTA-STS policy hosts at the primary, whose httpd serves the policy."""
    return [(host.mx_name, host) for host in site.hosts] + [(name, site.primary) for name in policy_hosts(site)]


def spf_records(site: Site) -> list[DnsRecord]:
    """SPF (RFC 7208) for each site domain and each MX name, one record per name.

    A domain's mail leaves the site from the primary alone (submission, forwards, the hosts' own
    mail): a backup relays only to the primary, which is not checked against SPF on that hop. So
    a domain names the primary's MX name (`a:`, one lookup, both address families, right after
    the primary is replaced). Bounces carry an empty MAIL FROM and are checked by the HELO name,
    which every MX gives as its MX name: each MX name names its own addresses (`a`)."""
    mechanisms: dict[str, list[str]] = {}
    for domain in site.domains:
        mechanisms.setdefault(domain, []).append(f"a:{site.primary.mx_name}")
    for host in site.hosts:
        mechanisms.setdefault(host.mx_name, []).append(f"a:{host.mx_name}")
    return [DnsRecord(name, "TXT", " ".join(["v=spf1", *_short(name, dict.fromkeys(found)), "-all"]))
            for name, found in mechanisms.items()]


def _short(name: str, mechanisms: Mapping[str, None]) -> list[str]:
    # `a:<own name>` is `a`: the short form a reader expects on a HELO record.
    return ["a" if mechanism == f"a:{name}" else mechanism for mechanism in mechanisms]


def dmarc_records(site: Site) -> list[DnsRecord]:
    """DMARC (RFC 7489) for each domain, and the authorization the report address's domain must
    publish (7.1): reports for example.net sent to an address in example.org (or in
    reports.example.org) are only sent if that name says it takes them. The site writes it
    when the name lies in a zone of its own; in anyone else's, the user publishes it."""
    rua, _ = report_addresses(site)
    report_domain = rua.rpartition("@")[2]
    records = [DnsRecord(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={site.dns.dmarc_policy}; rua=mailto:{rua}")
               for domain in site.domains]
    if zone_of(report_domain, site.domains) is not None:
        records += [DnsRecord(f"{domain}._report._dmarc.{report_domain}", "TXT", "v=DMARC1")
                    for domain in site.domains if not _one_organization(domain, report_domain)]
    return records


def _one_organization(domain: str, other: str) -> bool:
    # Reports within one organizational domain need no authorization (7.1): a name and the names
    # below it, as far as the site's own domains tell (they are registered domains or below one).
    return domain == other or domain.endswith("." + other) or other.endswith("." + domain)


def mta_sts_records(site: Site) -> list[DnsRecord]:
    """MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) for each domain: the policy's id (a sender
    fetches the policy again when it changes) and where TLS failures are reported."""
    _, tls_rua = report_addresses(site)
    return [record for domain in site.domains for record in (
        DnsRecord(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={policy_id(site)}"),
        DnsRecord(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{tls_rua}"),
    )]


# RFC 6186 (with RFC 8314's submissions): where a mail client finds the primary's services, and
# that plain IMAP and POP3 are not offered (target "."): a client that tried 143 would find it shut.
# (service, port, offered); ports as the primary's daemons open them (mailsite.daemons).
MAIL_CLIENT_SERVICES = (("submissions", 465, True), ("submission", 587, True), ("imaps", 993, True),
                        ("imap", 0, False), ("pop3", 0, False), ("pop3s", 0, False))


def srv_records(site: Site) -> list[DnsRecord]:
    return [DnsRecord(f"_{service}._tcp.{domain}", "SRV",
                      f"0 1 {port} {site.primary.mx_name}" if offered else "0 0 0 .")
            for domain in site.domains for service, port, offered in MAIL_CLIENT_SERVICES]


def caa_records(site: Site, issuer: str) -> list[DnsRecord]:
    """CAA (RFC 8659) on the names the site gets certificates for (each MX name, each MTA-STS
    host): only `issuer` may issue for them. Not at a domain itself, not even for an MX named
    by it: there it would also bind the user's other names (www) to this CA."""
    names = dict.fromkeys([name for name, _ in address_names(site) if name not in site.domains])
    return [DnsRecord(name, "CAA", f'0 issue "{issuer}"') for name in names]


def named_records(site: Site, dkim: Sequence[DnsRecord] = ()) -> list[DnsRecord]:
    """Every record whose value the model alone decides (no address in it): a target can make
    these before any VM exists. DKIM's come from mailsite.dkim, as given."""
    return [
        *[DnsRecord(domain, "MX", target, preference) for domain, preference, target in site.mx_records()],
        *spf_records(site), *dmarc_records(site), *mta_sts_records(site), *srv_records(site),
        *caa_records(site, certificate_authority(site)), *dkim,
    ]


def address_records(site: Site, addresses: Mapping[str, HostAddresses]) -> list[DnsRecord]:
    records = []
    for name, host in address_names(site):
        own = addresses[host.name]
        records.append(DnsRecord(name, "A", str(own.ipv4)))
        if own.ipv6:
            records.append(DnsRecord(name, "AAAA", str(own.ipv6)))
    return records


def dns_records(site: Site, addresses: Mapping[str, HostAddresses], dkim: Sequence[DnsRecord] = ()) -> list[DnsRecord]:
    """The site's whole forward DNS, once every host's addresses are known."""
    return named_records(site, dkim) + address_records(site, addresses)


def reverse_records(site: Site, addresses: Mapping[str, HostAddresses]) -> list[ReverseRecord]:
    return [
        ReverseRecord(str(address), host.mx_name)
        for host in site.hosts
        for address in (addresses[host.name].ipv4, addresses[host.name].ipv6)
        if address
    ]


def zone_of(name: str, domains: list[str]) -> str | None:
    """The site domain whose zone holds `name` (the longest one that is a suffix), if any."""
    zones = [d for d in domains if name == d or name.endswith("." + d)]
    return max(zones, key=len) if zones else None


def relative_name(name: str, zone: str) -> str:
    return "" if name == zone else name.removesuffix("." + zone)


def _field(value: str) -> str:
    """One zone-file field. The model refuses what could break a line (an IPv6 %zone with a line
    break in it, say); this is the second line of defence, so a miss is a bug, not a user error:
    a line break, blank, `;` (a comment) or `(` would let a value write records of its own."""
    if not value or any(c.isspace() or not c.isprintable() or c in ';()"\\' for c in value):
        raise ValueError(f"not one zone-file field: {value!r}")
    return value


def _text(value: str) -> str:
    """TXT text, which a zone file and dnsmasq quote: printable ASCII without a quote or backslash
    (the only characters a quoted string escapes). Second line of defence, as _field."""
    if not value or any(not (" " <= c <= "~") or c in '"\\' for c in value):
        raise ValueError(f"not TXT text: {value!r}")
    return value


def txt_strings(value: str) -> list[str]:
    """The character-strings a TXT record's text is served as: at most 255 bytes each."""
    text = _text(value)
    return [text[i:i + TXT_STRING_BYTES] for i in range(0, len(text), TXT_STRING_BYTES)]


def _caa(value: str) -> tuple[int, str, str]:
    flags, tag, quoted = value.split(" ", 2)
    if not (flags.isdigit() and tag.isalnum() and quoted.startswith('"') and quoted.endswith('"')):
        raise ValueError(f"not a CAA value: {value!r}")
    return int(flags), tag, _field(quoted[1:-1])


def _zone_value(record: DnsRecord) -> str:
    if record.type == "MX":
        return f"{int(record.priority or 0)}\t{_field(record.value)}."
    if record.type == "TXT":
        return " ".join(f'"{string}"' for string in txt_strings(record.value))
    if record.type == "SRV":
        *numbers, target = record.value.split(" ")
        return " ".join([*(str(int(n)) for n in numbers), "." if target == "." else f"{_field(target)}."])
    if record.type == "CAA":
        flags, tag, issuer = _caa(record.value)
        return f'{flags} {tag} "{issuer}"'
    return _field(record.value)


def presentation(record: DnsRecord) -> str:
    """The record's data as name servers print it (dig +short, a zone file): what a resolver gets."""
    return _zone_value(record).replace("\t", " ")


# The serial of a complete zone's SOA, written in when the file is (components/zone_file.py): a
# secondary transfers the zone again only when the serial grows, so it grows with every change.
SERIAL = "SERIAL"
# refresh, retry, expire and negative-answer TTL (RFC 1912 2.2's ranges; 300 s, so that a name
# added later is not denied for long).
SOA_TIMERS = "3600 900 1209600 300"


def _head(zone: str, what: str, ttl: int, nameservers: Sequence[str], contact: str) -> list[str]:
    if not nameservers:
        return [
            f"; {zone}: {what}, to load into your own zone of {zone} with the line",
            ";     $INCLUDE <this file's path>",
            "; (docs/operating.md, DNS records). No SOA or NS: those stay your zone's.",
            "; Rendered by mailsite from the stack file: change the stack, not this file.",
            f"$ORIGIN {zone}.",
        ]
    mailbox, _, mail_domain = contact.rpartition("@")
    return [
        f"; {zone}: {what}, a complete zone whose name servers are dns.nameservers.",
        "; Rendered by mailsite from the stack file: change the stack, not this file.",
        f"$ORIGIN {zone}.",
        f"$TTL {ttl}",
        f"@\t{ttl}\tIN\tSOA\t{_field(nameservers[0])}. {_field(mailbox)}.{_field(mail_domain)}. ( {SERIAL} {SOA_TIMERS} )",
        *[f"@\t{ttl}\tIN\tNS\t{_field(name)}." for name in nameservers],
    ]


def render_zone(zone: str, records: Sequence[DnsRecord], ttl: int, nameservers: Sequence[str] = (),
                contact: str = "") -> str:
    """`zone`'s share of the site's records, as an RFC 1035 file nsd and BIND read: a file to
    $INCLUDE (owner names relative to $ORIGIN, each record with its TTL, so nothing leaks into
    the including zone), or with nameservers a complete zone, its SOA naming `contact`."""
    lines = _head(zone, "the mail site's records", ttl, nameservers, contact)
    for record in records:
        if zone_of(record.name, [zone]) != zone:
            continue
        owner = _field(relative_name(record.name, zone) or "@")
        lines.append(f"{owner}\t{ttl}\tIN\t{record.type}\t{_zone_value(record)}")
    return "\n".join(lines) + "\n"


def with_serial(text: str, serial: int) -> str:
    """A rendered zone with its SOA serial written in (a file to $INCLUDE has none)."""
    return text.replace(f"( {SERIAL} ", f"( {serial} ", 1)


def dnsmasq_options(records: Sequence[DnsRecord]) -> list[str]:
    """The records as dnsmasq(8) options, for the lab's DNS: CAA has no option of its own, so it
    goes as a raw record (dns-rr) in its RFC 8659 wire form."""
    options = []
    for record in records:
        if record.type == "MX":
            options.append(f"mx-host={_field(record.name)},{_field(record.value)},{int(record.priority or 0)}")
        elif record.type == "TXT":
            options.append(f"txt-record={_field(record.name)}," + ",".join(f'"{s}"' for s in txt_strings(record.value)))
        elif record.type == "SRV":
            priority, weight, port, target = record.value.split(" ")
            options.append(f"srv-host={_field(record.name)},{_field(target)},{int(port)},{int(priority)},{int(weight)}")
        elif record.type == "CAA":
            flags, tag, issuer = _caa(record.value)
            wire = bytes([flags, len(tag)]) + tag.encode() + issuer.encode()
            options.append(f"dns-rr={_field(record.name)},257,{wire.hex()}")
        else:
            options.append(f"host-record={_field(record.name)},{_field(record.value)}")
    return options


def reverse_zone_name(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The in-addr.arpa / ip6.arpa zone holding `network`: its prefix rounded down to a whole
    octet (IPv4) or nibble (IPv6), the unit reverse zones are delegated in."""
    unit = 8 if network.version == 4 else 4
    labels = network.network_address.reverse_pointer.split(".")
    keep = network.prefixlen // unit
    return ".".join(labels[len(labels) - 2 - keep:])


def render_reverse_zone(network, records: Sequence[ReverseRecord], ttl: int, nameservers: Sequence[str] = (),
                        contact: str = "") -> str:
    """The PTR records of the site's addresses inside `network`, each answering its MX name; to
    $INCLUDE, or a complete zone, as render_zone."""
    zone = reverse_zone_name(network)
    lines = _head(zone, "reverse DNS of the site's MXes", ttl, nameservers, contact)
    for record in records:
        address = ipaddress.ip_address(_field(record.address))
        if address.version == network.version and address in network:
            lines.append(f"{address.reverse_pointer}.\t{ttl}\tIN\tPTR\t{_field(record.name)}.")
    return "\n".join(lines) + "\n"
