"""Problems with a stack's settings, each one line: the setting, its value, what to do."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr, ValidationError

from .dns import zone_of
from .errors import UserError
from .keys import key_problem
from .model import NIC_DRIVERS, PF_CONF_TABLES, SPAMD_TABLES, Site

NAMESPACE = "mailsite"


@dataclass(frozen=True)
class Problem:
    setting: str
    value: str
    message: str

    def __str__(self) -> str:
        # One line, whatever a value holds: a newline or an escape sequence is shown, not obeyed.
        return printable(f"{self.setting} = {self.value}: {self.message}")


class SiteConfigError(UserError):
    """Raised at the edge with every problem found; callers print one line each. The user fixes
    a setting, an argument or a path: exit status 2."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Text with every control, format and line-separator character written as an escape."""
    def escaped(char: str) -> str:
        code = ord(char)
        return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(char if char.isprintable() else escaped(char) for char in text)


def setting_name(loc: tuple[Any, ...]) -> str:
    name = NAMESPACE
    for index, part in enumerate(loc):
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += (":" if index == 0 else ".") + str(part)
    return name


def show(value: Any) -> str:
    """A value as it may appear in an error: never a secret's contents, never a whole page."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
        return f"<secret of {len(value)} characters>"
    text = _brief(value) if isinstance(value, (dict, list)) or value == "" else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _brief(value: Any) -> str:
    # A section given where a value belongs is a misplaced part of the file: its names may be
    # settings put in the wrong place and its values keys, so neither is shown.
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_brief, value)) + "]"
    return repr(value)


def few(names: list[str], at_most: int = 5) -> str:
    """Names for an error line, which stays a line however many a site has."""
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


HIDDEN = "<not shown>"
_SEE = "see Pulumi.example.yaml"
_NUMBER = "must be a whole number; write digits only"
_SECTION = f"must be a section of settings, one name: value per line below it ({_SEE})"
# Pydantic's messages say what is wrong in Python's words; these say what to do, in ours.
_FIXES = {
    "extra_forbidden": f"unknown setting; remove it or correct its spelling ({_SEE})",
    "missing": f"required; add it ({_SEE})",
    "int_parsing": _NUMBER,
    "int_type": _NUMBER,
    "int_from_float": _NUMBER,
    "int_parsing_size": f"{_NUMBER}, of a sensible size",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text; quote it if YAML would read it as a number, true/false, a list or a section",
    "list_type": f"must be a list, one '- item' per line ({_SEE})",
    "dict_type": _SECTION,
    "model_type": _SECTION,
    "model_attributes_type": _SECTION,
    "greater_than_equal": "too small; use {ge} or more",
    "greater_than": "too small; use more than {gt}",
    "less_than_equal": "too large; use {le} or less",
    "less_than": "too large; use less than {lt}",
    "too_short": "must not be empty; list at least {min_length}",
    "too_long": "too many; list at most {max_length}",
    "string_too_short": "must not be empty",
    "string_too_long": "too long; use at most {max_length} characters",
    "literal_error": "not one of the allowed values; use {expected}",
    "ip_v4_address": "not an IPv4 address; write one like 192.0.2.10",
    "ip_v6_address": "not an IPv6 address; write one like 2001:db8::10",
    "ip_v4_network": "not a network in CIDR form with no host bits; write one like 192.0.2.0/24",
    "ip_v6_network": "not a network in CIDR form with no host bits; write one like 2001:db8::/48",
}
# What form a setting with a pattern takes, said to a person (by the setting's own name).
_FORMS = {
    "name": "not a host name; use lower-case letters, digits and -, like mx1",
    "egressInterface": "not a network card's interface (lo0, pflog1, enc0 and the like carry no mail); write it like vmx0 "
                       f"or vio0, a NIC driver ({', '.join(NIC_DRIVERS)}) and its unit",
    "ttl": "not a duration; write a whole number with s, m, h or d, like 7d",
    "blacklist": "not a pf table name; use letters, digits, _ and -, at most 32, like bgp_spamd",
    "bypass": "not a pf table name; use letters, digits, _ and -, at most 32, like bgp_spamd_bypass",
    "bridge": "not a Linux bridge name; use at most 15 lower-case letters, digits and -, like virbr-mail",
    "openbsdVersion": "not an OpenBSD release; write it like 7.8",
    "isoSha256": "not a SHA-256 checksum; copy the 64 hex digits from the release's SHA256 file",
    "diskSize": "not a disk size; write a whole number with M or G, like 8G",
    "adminSshKeys": "not an ssh public key; paste one whole line of a .pub file (ssh-ed25519 AAAA... comment)",
}
_FORM = f"has characters or a form this setting does not take ({_SEE})"
_ANY = f"not a value this setting takes ({_SEE})"
# Where a setting takes one of several forms, pydantic reports every form; the first of these
# that it reported says the most.
_TELLING = ("ip_v4_address", "ip_v6_address", "ip_v4_network", "ip_v6_network")
# Under mailsite:secrets, only these hold no key; any other value (a misspelt queueKeys...) is hidden.
_PLAIN_SECRET_SETTINGS = {"backend", "path", "region", "profile", "endpointUrl"}
_BRANCH_TAGS = {"str", "int", "IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network"}


_PATH_FORM = re.compile(r"[A-Za-z][A-Za-z0-9]*(\[[0-9]+\]|\.[A-Za-z][A-Za-z0-9]*)+")


def _message(kind: str, detail: dict[str, Any], loc: tuple[Any, ...]) -> str:
    if kind == "value_error":  # our own validators' messages, which say the fix already
        return str(detail["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        name = next((part for part in reversed(loc) if isinstance(part, str)), "")
        return _FORMS.get(name, _FORM)
    if kind == "extra_forbidden" and isinstance(loc[-1], str) and _PATH_FORM.fullmatch(loc[-1]):
        # `pulumi config set --path 'mailsite:hosts[0].ipv4'` written as a key of the file.
        return f"unknown setting; in the stack file, nest it below its section (a.b[0] is pulumi config set --path's form; {_SEE})"
    if kind in ("ip_v4_address", "ip_v6_address") and loc[:1] == ("hosts",):
        return f"{_FIXES[kind]}, or allocate"  # a host's address may be the provider's to choose
    try:
        return _FIXES[kind].format(**detail.get("ctx", {}))
    except (KeyError, IndexError):
        return _ANY


def _hidden(setting: str, kind: str, secret_paths: set[str]) -> bool:
    """An unknown setting may be a key put in the wrong place; a secret's value is never shown."""
    if kind == "extra_forbidden" or any(setting.startswith(path) for path in secret_paths):
        return True
    under = f"{NAMESPACE}:secrets"
    return setting == under or (setting.startswith(under + ".") and setting.split(".")[1] not in _PLAIN_SECRET_SETTINGS)


def from_validation_error(error: ValidationError, secret_paths: set[str] = frozenset()) -> list[Problem]:
    problems: dict[str, tuple[Problem, str]] = {}
    for detail in error.errors(include_url=False):
        kind = detail["type"]
        # An unknown setting's own name is the last part, whatever it looks like.
        *path, last = detail["loc"]
        loc = tuple(part for part in path if not _is_union_branch(part)) + (() if _is_union_branch(last) and kind != "extra_forbidden" else (last,))
        setting = setting_name(loc)
        value = detail.get("input")
        if kind == "missing":
            shown = "(absent)"
        elif _hidden(setting, kind, secret_paths):
            shown = HIDDEN if kind == "extra_forbidden" else show(SecretStr(str(value)))
        else:
            shown = show(value)
        problem = Problem(setting, shown, _message(kind, detail, loc))
        # A union (an address or "allocate") reports once per form: one line per setting.
        if setting not in problems or (kind in _TELLING and problems[setting][1] not in _TELLING):
            problems[setting] = (problem, kind)
        elif {kind, problems[setting][1]} in _EITHER_FAMILY:
            first = problems[setting][0]
            problems[setting] = (Problem(setting, first.value, _EITHER_FAMILY_FIX[kind.removeprefix("ip_v4_").removeprefix("ip_v6_")]), kind)
    return [problem for problem, _ in problems.values()]


# A setting that takes IPv4 or IPv6 says so when it gets neither.
_EITHER_FAMILY = ({"ip_v4_address", "ip_v6_address"}, {"ip_v4_network", "ip_v6_network"})
_EITHER_FAMILY_FIX = {
    "address": "not an IP address; write one like 192.0.2.10 or 2001:db8::10",
    "network": "not a network in CIDR form with no host bits; write one like 192.0.2.0/24 or 2001:db8::/48",
}


def _is_union_branch(part: Any) -> bool:
    return isinstance(part, str) and (part in _BRANCH_TAGS or _BRANCH.fullmatch(part) is not None)


# How pydantic names a branch of a union or a validator chain in an error's location, and a
# mapping's key ("[key]"); a name a person wrote with brackets in it (a pasted "hosts[0]") is kept.
_BRANCH = re.compile(r"\[key\]|(function-(after|before|wrap|plain)|literal|lax-or-strict|json-or-python|tagged-union|"
                     r"is-instance|nullable|chain|constrained-[a-z]+)\[.*\]", re.S)


def unreachable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of address cannot be a host's on the network, if this is one."""
    for kind in ("loopback", "unspecified", "multicast", "link_local", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None


def site_problems(site: Site) -> list[Problem]:
    """Checks that span settings: run once the settings are each valid on their own."""
    problems: list[Problem] = []
    add = lambda setting, value, message: problems.append(Problem(setting, show(value), message))
    hosts = "mailsite:hosts"

    primaries = [i for i, host in enumerate(site.hosts) if host.is_primary]
    if not primaries:
        add(hosts, [h.name for h in site.hosts], "no host has role primary; give exactly one host role: primary")
    for i in primaries[1:]:
        add(f"{hosts}[{i}].role", "primary", f"{site.hosts[primaries[0]].name} is already the primary; make this host role: backup")

    for field, label in (("name", "host name"), ("fqdn", "MX name")):
        seen: dict[str, int] = {}
        for i, host in enumerate(site.hosts):
            value = getattr(host, field)
            if value in seen:
                add(f"{hosts}[{i}].{field}", value, f"same {label} as hosts[{seen[value]}]; give each host its own")
            seen.setdefault(value, i)

    for i, host in enumerate(site.hosts):
        if zone_of(host.mx_name, site.domains) is None:
            # The MX name's A/AAAA records go in one of the site's zones; no zone holds this one.
            add(f"{hosts}[{i}].fqdn", host.mx_name, f"outside the site's domains ({few(site.domains)}); "
                f"use a name in one of them, like {host.name}.{site.domains[0]}")

    addresses: dict[str, str] = {}
    for i, host in enumerate(site.hosts):
        for family in ("ipv4", "ipv6"):
            value = getattr(host, family)
            if value not in (None, "allocate"):
                if (kind := unreachable(value)) is not None:
                    add(f"{hosts}[{i}].{family}", value, f"a {kind} address, which no other MX or sender can reach; give the host's own address")
                elif str(value) in addresses:
                    add(f"{hosts}[{i}].{family}", value, f"already the address of {addresses[str(value)]}; give each host its own")
                addresses.setdefault(str(value), host.name)
        if host.ipv4 is None:
            # spamd greylists and syncs over IPv4 only (spamd(8) -y/-Y take IPv4 addresses).
            add(f"{hosts}[{i}].ipv4", "(absent)", "every MX needs IPv4 for spamd greylisting and sync; set an address or allocate")

    if primaries:
        primary = site.hosts[primaries[0]]
        for i, host in enumerate(site.hosts):
            if not host.is_primary and host.preference <= primary.preference:
                add(
                    f"{hosts}[{i}].preference",
                    host.preference,
                    f"a backup's preference must be worse (higher) than the primary's {primary.preference}; "
                    f"set it above {primary.preference}",
                )

    seen_domains: set[str] = set()
    for i, domain in enumerate(site.domains):
        if domain in seen_domains:
            add(f"mailsite:domains[{i}]", domain, "listed twice; remove the copy")
        seen_domains.add(domain)

    for i, cidr in enumerate(site.admin_cidrs):
        if cidr.prefixlen == 0:
            add(f"mailsite:adminCidrs[{i}]", cidr, "opens ssh to the whole internet; list only your admin networks")
    for version, widest in ADMIN_NETWORKS_AT_MOST.items():
        networks = [cidr for cidr in site.admin_cidrs if cidr.version == version]
        covered = sum(network.num_addresses for network in ipaddress.collapse_addresses(networks))
        if networks and covered > 2 ** (networks[0].max_prefixlen - widest) and all(cidr.prefixlen > 0 for cidr in networks):
            add("mailsite:adminCidrs", [str(cidr) for cidr in networks],
                f"together open ssh to more than a /{widest} of IPv{version}; list only your admin networks")

    recipients = site.recipients
    if "postmaster" not in recipients.local_parts():
        add("mailsite:recipients", "(no postmaster)", "RFC 5321 requires postmaster; add postmaster to recipients.aliases")
    for part, target in recipients.aliases.items():
        if part in recipients.users:
            # Two virtuals lines for part@domain: the mailbox or the alias, whichever smtpd reads.
            add(f"mailsite:recipients.aliases.{part}", target, f"{part} is already a user of recipients.users; "
                "remove the alias, or remove the user to forward their mail")
        elif "@" not in target and target not in recipients.users:
            add(f"mailsite:recipients.aliases.{part}", target, "not a user; name one of recipients.users or a full address")

    if site.tls.key == site.tls.certificate:
        add("mailsite:tls.key", site.tls.key, "the same file as tls.certificate; give the key its own file, like /etc/ssl/private/{fqdn}.key")

    bgp = site.bgp_spamd
    if bgp.local_as == bgp.route_server_as:
        add("mailsite:bgpSpamd.localAs", bgp.local_as, "equals routeServerAs; the bgp-spamd sessions are eBGP, pick another private AS")
    servers: dict[str, int] = {}
    for i, server in enumerate(bgp.route_servers):
        setting = f"mailsite:bgpSpamd.routeServers[{i}].address"
        if str(server.address) in addresses:
            add(setting, server.address, f"is {addresses[str(server.address)]}'s address; a route server is outside the site")
        elif (kind := unreachable(server.address)) is not None:
            add(setting, server.address, f"a {kind} address, which no MX reaches over the internet; give the route server's own address")
        elif str(server.address) in servers:
            add(setting, server.address, f"same route server as routeServers[{servers[str(server.address)]}]; list each once")
        servers.setdefault(str(server.address), i)
    for i, prefix in enumerate(site.vultr.bgp.prefixes):
        longest = ANNOUNCED_PREFIX_AT_MOST[prefix.version]
        if prefix.prefixlen < longest:
            add(f"mailsite:vultr.bgp.prefixes[{i}]", prefix, f"wider than a /{longest}, which no network routes from a customer "
                f"(0.0.0.0/0 would claim the whole internet); announce the prefix your provider assigned you")
    if bgp.blacklist_community == bgp.bypass_community:
        add("mailsite:bgpSpamd.bypassCommunity", bgp.bypass_community, "same as blacklistCommunity; they mark opposite lists")
    tables = bgp.pf_tables
    for field in ("blacklist", "bypass"):
        if getattr(tables, field) in SPAMD_TABLES:
            add(f"mailsite:bgpSpamd.pfTables.{field}", getattr(tables, field), "spamd owns this table name; choose another")
        elif getattr(tables, field) in PF_CONF_TABLES:
            add(f"mailsite:bgpSpamd.pfTables.{field}", getattr(tables, field), "pf.conf's own table (<nospamd> skips spamd, "
                "<bruteforce> holds rate-limit offenders); choose another, like bgp_spamd")
    if tables.blacklist == tables.bypass:
        add("mailsite:bgpSpamd.pfTables.bypass", tables.bypass, "same as pfTables.blacklist; give each list its own table")

    if site.network.addressing == "static" and site.target == "libvirt":
        for i, host in enumerate(site.hosts):
            for family in ("ipv4", "ipv6"):
                if getattr(host, family) == "allocate":
                    add(f"{hosts}[{i}].{family}", "allocate", "network.addressing is static; give a fixed address")

    problems.extend(target_problems(site))
    problems.extend(secret_problems(site))
    return problems


# Wider than this, a list of admin networks is most of the internet, not an office or a VPN.
ADMIN_NETWORKS_AT_MOST = {4: 8, 6: 32}
# The most-specific prefixes the internet's routers accept from anyone (BGP operations practice).
ANNOUNCED_PREFIX_AT_MOST = {4: 24, 6: 48}


def target_problems(site: Site) -> list[Problem]:
    """What each target needs of the hosts' settings."""
    problems: list[Problem] = []
    hosts = "mailsite:hosts"
    if site.target == "libvirt":
        if site.vultr.bgp.enabled:
            problems.append(Problem("mailsite:vultr.bgp.enabled", "true", "Vultr's BGP session exists on the vultr target only; set false"))
        if site.network.addressing != "static":
            problems.append(Problem("mailsite:network.addressing", site.network.addressing,
                                    "the libvirt target uses fixed addresses on its own network; set static"))
            return problems
        if sum(h.is_primary for h in site.hosts) != 1 or any(h.ipv4 is None or isinstance(h.ipv4, str) for h in site.hosts):
            return problems  # reported above
        if unreachable(site.primary.ipv4) is not None:
            return problems  # reported above; the site network is the primary's, so nothing else is outside it
        network4, network6 = site.ipv4_network(), site.ipv6_network()
        if network6 and unreachable(network6.network_address) is not None:
            network6 = None  # the primary's own address is reported above
        gateway = site.network.ipv4_gateway
        for i, host in enumerate(site.hosts):
            if host.ipv4 not in network4:
                problems.append(Problem(f"{hosts}[{i}].ipv4", str(host.ipv4), f"outside the site network {network4}; use an address in it"))
            elif (taken := _not_a_host_address(host.ipv4, network4, gateway, "ipv4Gateway")) is not None:
                problems.append(Problem(f"{hosts}[{i}].ipv4", str(host.ipv4), f"{taken}; give the host an address of its own in {network4}"))
            elif network6 and host.ipv6 not in (None, "allocate") and (
                    taken := _not_a_host_address(host.ipv6, network6, site.network.ipv6_gateway, "ipv6Gateway")) is not None:
                problems.append(Problem(f"{hosts}[{i}].ipv6", str(host.ipv6), f"{taken}; give the host an address of its own in {network6}"))
            if network6 and host.ipv6 is not None and host.ipv6 not in network6:
                problems.append(Problem(f"{hosts}[{i}].ipv6", str(host.ipv6), f"outside the site network {network6}; use an address in it"))
        if not site.network.nameservers:
            problems.append(Problem("mailsite:network.nameservers", "[]", "static hosts need a resolver for MX lookups; list one (libvirt's network answers DNS on its own address)"))
        if gateway is None or gateway not in network4:
            problems.append(Problem("mailsite:network.ipv4Gateway", show(gateway), f"the libvirt network's own address must be in {network4}; set it, like {next(network4.hosts())}"))
    else:
        if site.network.addressing != "autoconf":
            problems.append(Problem("mailsite:network.addressing", site.network.addressing,
                                    "Vultr hands out the reserved addresses by DHCP and router advertisements; set autoconf"))
        bgp = site.vultr.bgp
        if bgp.enabled and (bgp.local_as is None or not bgp.prefixes):
            problems.append(Problem("mailsite:vultr.bgp", "enabled", "a Vultr BGP session needs localAs (from Vultr) and the prefixes to announce; set both"))
        for i, host in enumerate(site.hosts):
            # Vultr cannot take an address of our choosing: IPv4 is a reserved IP made by the stack,
            # IPv6 the instance's own (spamd and the images need only IPv4 before the VM exists).
            for family in ("ipv4", "ipv6"):
                value = getattr(host, family)
                if value is not None and value != "allocate":
                    problems.append(Problem(f"{hosts}[{i}].{family}", str(value), "on Vultr the provider assigns addresses; set allocate"))
            if host.egress_interface != "vio0":
                problems.append(Problem(f"{hosts}[{i}].egressInterface", host.egress_interface,
                                        "Vultr's NIC is virtio, which OpenBSD names vio0; set vio0"))
    return problems


def _not_a_host_address(address, network, gateway, gateway_setting: str) -> str | None:
    """Why an address in the site network cannot be a host's, if it cannot."""
    if address == gateway:
        return f"the gateway's address (network.{gateway_setting})"
    if network.num_addresses > 2 and address == network.network_address:
        # IPv4's all-zeros host is the network itself; IPv6's is the subnet routers' anycast address.
        return "the network's own address"
    if network.version == 4 and network.num_addresses > 2 and address == network.broadcast_address:
        return "the network's broadcast address"
    return None


def secret_problems(site: Site) -> list[Problem]:
    secrets = site.secrets
    problems: list[Problem] = []
    if secrets.backend != "inline":
        for field in ("queueKeys", "spamdSyncKey"):
            if getattr(secrets, "queue_keys" if field == "queueKeys" else "spamd_sync_key"):
                problems.append(Problem(f"mailsite:secrets.{field}", "<secret hidden>", f"values belong in the {secrets.backend} backend, not the stack file; remove it"))
        return problems
    for host in site.hosts:
        key = secrets.queue_keys.get(host.name)
        setting = f"mailsite:secrets.queueKeys.{host.name}"
        if key is None:
            problems.append(Problem(setting, "(absent)", "inline backend needs a queue key per host; add one (openssl rand -hex 16)"))
        elif (message := key_problem(key.get_secret_value())) is not None:
            problems.append(Problem(setting, show(key), message))
    for name in set(secrets.queue_keys) - {host.name for host in site.hosts}:
        problems.append(Problem(f"mailsite:secrets.queueKeys.{name}", "<secret hidden>", "no host has this name; remove it"))
    sync = secrets.spamd_sync_key
    if sync is None:
        problems.append(Problem("mailsite:secrets.spamdSyncKey", "(absent)", "inline backend needs a spamd sync key; add one (openssl rand -hex 16)"))
    elif (message := key_problem(sync.get_secret_value())) is not None:
        problems.append(Problem("mailsite:secrets.spamdSyncKey", show(sync), message))
    return problems
