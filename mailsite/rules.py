"""Rules that span settings, as a list of small named checks (nixos-mailserver's assertions).

The model's types and validators check each setting on its own first; these run once every
setting is valid, each a function of the site that returns its problems (one line each: the
setting, its value, the fix). They are grouped by the section whose settings they read, in the
model's order, and each stands alone: it reads what it needs and relies on no other rule having
run or passed. Where a rule has nothing to check until another rule's problem is fixed (the site
network of a libvirt site needs one primary with a usable address), it says so by calling the
same precondition, named, rather than by its place in a long function.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from .dns import zone_of
from .keys import key_problem
from .model import MAX_ADDRESSES, PF_CONF_TABLES, SPAMD_TABLES, Site, size_bytes, size_text
from .problems import Problem, few, show

Rule = Callable[[Site], list[Problem]]

# Every rule, in the order its lines are printed.
RULES: list[Rule] = []


def rule(check: Rule) -> Rule:
    RULES.append(check)
    return check


def site_problems(site: Site) -> list[Problem]:
    """Every rule's problems: the checks that span settings, run once each setting is valid."""
    return [problem for check in RULES for problem in check(site)]


def _problem(setting: str, value: object, message: str) -> Problem:
    return Problem(setting, show(value), message)


HOSTS = "mailsite:hosts"


def unreachable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of address cannot be a host's on the network, if this is one."""
    for kind in ("loopback", "unspecified", "multicast", "link_local", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None


def _fixed(value: object) -> bool:
    """An address written in the stack file (not left out, not the provider's to allocate)."""
    return value not in (None, "allocate")


def host_addresses(site: Site) -> dict[str, str]:
    """Each fixed address of a host, and the first host that has it."""
    owners: dict[str, str] = {}
    for host in site.hosts:
        for family in ("ipv4", "ipv6"):
            if _fixed(value := getattr(host, family)):
                owners.setdefault(str(value), host.name)
    return owners


# -- mailsite:hosts -----------------------------------------------------------------------------

def _primaries(site: Site) -> list[int]:
    return [i for i, host in enumerate(site.hosts) if host.is_primary]


@rule
def one_primary(site: Site) -> list[Problem]:
    primaries = _primaries(site)
    if not primaries:
        return [_problem(HOSTS, [h.name for h in site.hosts], "no host has role primary; give exactly one host role: primary")]
    return [_problem(f"{HOSTS}[{i}].role", "primary", f"{site.hosts[primaries[0]].name} is already the primary; make this host role: backup")
            for i in primaries[1:]]


@rule
def hosts_have_their_own_names(site: Site) -> list[Problem]:
    problems = []
    for field, label in (("name", "host name"), ("fqdn", "MX name")):
        seen: dict[str, int] = {}
        for i, host in enumerate(site.hosts):
            value = getattr(host, field)
            if value in seen:
                problems.append(_problem(f"{HOSTS}[{i}].{field}", value, f"same {label} as hosts[{seen[value]}]; give each host its own"))
            seen.setdefault(value, i)
    return problems


@rule
def mx_names_in_the_site_domains(site: Site) -> list[Problem]:
    # The MX name's A/AAAA records go in one of the site's zones; no zone holds one outside them.
    return [_problem(f"{HOSTS}[{i}].fqdn", host.mx_name, f"outside the site's domains ({few(site.domains)}); "
                     f"use a name in one of them, like {host.name}.{site.domains[0]}")
            for i, host in enumerate(site.hosts) if zone_of(host.mx_name, site.domains) is None]


@rule
def host_addresses_reachable_and_their_own(site: Site) -> list[Problem]:
    problems: list[Problem] = []
    owners: dict[str, str] = {}
    for i, host in enumerate(site.hosts):
        for family in ("ipv4", "ipv6"):
            value = getattr(host, family)
            if not _fixed(value):
                continue
            if (kind := unreachable(value)) is not None:
                problems.append(_problem(f"{HOSTS}[{i}].{family}", value, f"a {kind} address, which no other MX or sender can reach; give the host's own address"))
            elif str(value) in owners:
                problems.append(_problem(f"{HOSTS}[{i}].{family}", value, f"already the address of {owners[str(value)]}; give each host its own"))
            owners.setdefault(str(value), host.name)
    return problems


@rule
def every_mx_has_ipv4(site: Site) -> list[Problem]:
    # spamd greylists and syncs over IPv4 only (spamd(8) -y/-Y take IPv4 addresses).
    return [_problem(f"{HOSTS}[{i}].ipv4", "(absent)", "every MX needs IPv4 for spamd greylisting and sync; set an address or allocate")
            for i, host in enumerate(site.hosts) if host.ipv4 is None]


@rule
def backups_after_the_primary(site: Site) -> list[Problem]:
    primaries = _primaries(site)
    if not primaries:
        return []  # one_primary's problem: there is no preference to be worse than
    best = site.hosts[primaries[0]].mx_preference
    return [_problem(f"{HOSTS}[{i}].preference", host.preference,
                     f"a backup's preference must be worse (higher) than the primary's {best}; set it above {best}")
            for i, host in enumerate(site.hosts) if not host.is_primary and host.mx_preference <= best]


# -- mailsite:domains, adminCidrs -------------------------------------------------------------

@rule
def domains_listed_once(site: Site) -> list[Problem]:
    return [_problem(f"mailsite:domains[{i}]", domain, "listed twice; remove the copy")
            for i, domain in enumerate(site.domains) if domain in site.domains[:i]]


# Wider than this, a list of admin networks is most of the internet, not an office or a VPN.
ADMIN_NETWORKS_AT_MOST = {4: 8, 6: 32}


@rule
def ssh_not_open_to_the_internet(site: Site) -> list[Problem]:
    problems = [_problem(f"mailsite:adminCidrs[{i}]", cidr, "opens ssh to the whole internet; list only your admin networks")
                for i, cidr in enumerate(site.admin_cidrs) if cidr.prefixlen == 0]
    for version, widest in ADMIN_NETWORKS_AT_MOST.items():
        networks: list[Any] = [cidr for cidr in site.admin_cidrs if cidr.version == version]  # one family: collapsible
        covered = sum(network.num_addresses for network in ipaddress.collapse_addresses(networks))
        # A /0 is reported alone, above: the sum of the rest says nothing more.
        if networks and covered > 2 ** (networks[0].max_prefixlen - widest) and all(cidr.prefixlen > 0 for cidr in networks):
            problems.append(_problem("mailsite:adminCidrs", [str(cidr) for cidr in networks],
                                     f"together open ssh to more than a /{widest} of IPv{version}; list only your admin networks"))
    return problems


# -- mailsite:recipients ----------------------------------------------------------------------

@rule
def postmaster_received(site: Site) -> list[Problem]:
    if "postmaster" in site.recipients.local_parts():
        return []
    return [_problem("mailsite:recipients", "(no postmaster)", "RFC 5321 requires postmaster; add postmaster to recipients.aliases")]


@rule
def aliases_reach_a_user(site: Site) -> list[Problem]:
    recipients, problems = site.recipients, []
    for part, target in recipients.aliases.items():
        if part in recipients.users:
            # Two virtuals lines for part@domain: the mailbox or the alias, whichever smtpd reads.
            problems.append(_problem(f"mailsite:recipients.aliases.{part}", target, f"{part} is already a user of recipients.users; "
                                     "remove the alias, or remove the user to forward their mail"))
        elif "@" not in target and target not in recipients.users:
            problems.append(_problem(f"mailsite:recipients.aliases.{part}", target, "not a user; name one of recipients.users or a full address"))
    return problems


@rule
def users_listed_once(site: Site) -> list[Problem]:
    # One mailbox per name: a second entry would give the name two quotas, or two lines in the
    # primary's virtuals.
    users = site.recipients.users
    return [_problem(f"mailsite:recipients.users[{i}]", name, f"already users[{users.index(name)}]; list each user once")
            for i, name in enumerate(users) if name in users[:i]]


@rule
def quotas_hold_the_largest_message(site: Site) -> list[Problem]:
    # A mailbox smaller than the largest message the MXes accept could never store that message:
    # the backups would take it, and it would wait in their queues until it bounced.
    largest = size_bytes(site.max_message_size)
    return [_problem(f"mailsite:recipients.users[{i}].quota", account.quota,
                     f"smaller than maxMessageSize ({site.max_message_size}), the largest message the site accepts; "
                     f"raise it to {site.max_message_size} or more, like 5G")
            for i, account in enumerate(site.recipients.accounts)
            if account.quota is not None and size_bytes(account.quota) < largest]


@rule
def quotas_fit_the_mail_volume(site: Site) -> list[Problem]:
    # A quota larger than the volume is a limit the disk reaches first: the user's mail would then
    # fail for everyone's lack of room, not for the user's quota. Quotas may add up to more than
    # the volume (few mailboxes fill at once), so each is checked on its own, not their sum.
    room = size_bytes(site.mail_volume.size)
    return [_problem(f"mailsite:recipients.users[{i}].quota", account.quota,
                     f"larger than mailVolume.size ({site.mail_volume.size}), the disk every mailbox is on; "
                     f"lower the quota, or raise mailVolume.size to {-(-size_bytes(account.quota) // (1 << 30))}G or more")
            for i, account in enumerate(site.recipients.accounts)
            if account.quota is not None and size_bytes(account.quota) > room]


@rule
def catch_alls_for_the_site_domains(site: Site) -> list[Problem]:
    return [_problem(f"mailsite:recipients.catchAll.{domain}", domain, f"not one of the site's domains ({few(site.domains)}); "
                     "add it to domains, or remove the catch-all")
            for domain in site.recipients.catch_all if domain not in site.domains]


@rule
def catch_alls_reach_a_user(site: Site) -> list[Problem]:
    # A mailbox, not an alias or an address outside: a catch-all forwarded off the site would
    # relay every guessed name's spam onward, under the site's name.
    users = site.recipients.users
    return [_problem(f"mailsite:recipients.catchAll.{domain}", user, "not a user; name one of recipients.users")
            for domain, user in site.recipients.catch_all.items() if user not in users]


@rule
def recipients_fit_the_tables(site: Site) -> list[Problem]:
    names, domains = len(site.recipients.local_parts()), len(site.domains)
    if names * domains <= MAX_ADDRESSES:
        return []
    return [_problem("mailsite:recipients", f"{names} names in {domains} domains",
                     f"every MX's tables list each name in each domain, {names * domains} addresses; "
                     f"keep names times domains to {MAX_ADDRESSES} or less")]


# -- mailsite:tls -----------------------------------------------------------------------------

@rule
def tls_key_its_own_file(site: Site) -> list[Problem]:
    if site.tls.key != site.tls.certificate:
        return []
    return [_problem("mailsite:tls.key", site.tls.key, "the same file as tls.certificate; give the key its own file, like /etc/ssl/private/{fqdn}.key")]


@rule
def tls_paths_name_each_certificate(site: Site) -> list[Problem]:
    # acme-client refuses its whole configuration when two domain blocks name one file (parse.y:
    # "domain key file already used"), and the primary has two at least: its MX name's and the
    # MTA-STS names', each at these paths with {fqdn} its first name.
    return [_problem(f"mailsite:tls.{setting}", path, "names no {fqdn}, so the primary's certificates for its MX name "
                     "and for the MTA-STS names would share one file, and acme-client refuses a file used twice; "
                     f"write it like {example}")
            for setting, path, example in (("certificate", site.tls.certificate, "/etc/ssl/{fqdn}.crt"),
                                           ("key", site.tls.key, "/etc/ssl/private/{fqdn}.key"))
            if "{fqdn}" not in path]

@rule
def caa_issuer_known(site: Site) -> list[Problem]:
    # CAA records name the CA that may issue: Let's Encrypt's is known, another CA's is not.
    if site.acme.issuer_known:
        return []
    return [Problem("mailsite:acme.caaIssuer", "null", "no CAA issuer is known for acme.directory's CA; set the "
                    "domain name the CA's documentation gives for CAA records, like letsencrypt.org")]


# -- mailsite:dns -----------------------------------------------------------------------------

@rule
def dns_reports_received(site: Site) -> list[Problem]:
    # An address in a site domain that the site refuses would bounce every report back at the
    # reporters, and they stop sending.
    settings = {"dmarcReports": site.dns.dmarc_reports, "tlsReports": site.dns.tls_reports}
    return [_problem(f"mailsite:dns.{setting}", address, "the site does not receive this address; name a user or alias of "
                     "recipients, or an address outside the site's domains")
            for setting, address in settings.items()
            if address is not None and address.rpartition("@")[2] in site.domains and not site.accepts(address)]


@rule
def dns_nameservers_with_an_address(site: Site) -> list[Problem]:
    # A complete zone lists its name servers; one inside the zone needs its address there too
    # (the glue the registrar also holds), which the zone has only for an MX name.
    mx_names = {host.mx_name for host in site.hosts}
    inside = [ns for ns in site.dns.nameservers if zone_of(ns, site.domains) and ns not in mx_names]
    return [_problem("mailsite:dns.nameservers", ns, "lies in a site domain but is no MX, so the zone would hold no address "
                     "for it; name a server outside the site's domains, or leave nameservers empty and $INCLUDE the "
                     "records into your own zone") for ns in inside]


@rule
def dns_nameservers_only_for_zone_files(site: Site) -> list[Problem]:
    # Vultr DNS answers from Vultr's own name servers: the setting would change nothing there.
    if not site.runs_on("vultr") or not site.dns.nameservers:
        return []
    return [_problem("mailsite:dns.nameservers", site.dns.nameservers, "Vultr DNS serves the zones from its own name "
                     "servers (ns1.vultr.com, ns2.vultr.com); leave nameservers empty on the vultr target")]


@rule
def mx_names_not_mta_sts_hosts(site: Site) -> list[Problem]:
    # mta-sts.<domain> carries the primary's addresses for the MTA-STS policy; an MX of that name
    # would get a second set of A records.
    taken = {f"mta-sts.{domain}" for domain in site.domains}
    return [_problem(f"mailsite:hosts[{index}].fqdn", host.mx_name, "is the domain's MTA-STS policy host; "
                     "give the MX another name") for index, host in enumerate(site.hosts) if host.mx_name in taken]


# -- mailsite:bgpSpamd, vultr.bgp.prefixes ----------------------------------------------------

@rule
def bgp_spamd_sessions_are_ebgp(site: Site) -> list[Problem]:
    bgp = site.bgp_spamd
    if bgp.local_as != bgp.route_server_as:
        return []
    return [_problem("mailsite:bgpSpamd.localAs", bgp.local_as, "equals routeServerAs; the bgp-spamd sessions are eBGP, pick another private AS")]


@rule
def route_servers_outside_the_site(site: Site) -> list[Problem]:
    problems: list[Problem] = []
    hosts, servers = host_addresses(site), dict[str, int]()
    for i, server in enumerate(site.bgp_spamd.route_servers):
        setting, address = f"mailsite:bgpSpamd.routeServers[{i}].address", str(server.address)
        if address in hosts:
            problems.append(_problem(setting, server.address, f"is {hosts[address]}'s address; a route server is outside the site"))
        elif (kind := unreachable(server.address)) is not None:
            problems.append(_problem(setting, server.address, f"a {kind} address, which no MX reaches over the internet; give the route server's own address"))
        elif address in servers:
            problems.append(_problem(setting, server.address, f"same route server as routeServers[{servers[address]}]; list each once"))
        servers.setdefault(address, i)
    return problems


# The most-specific prefixes the internet's routers accept from anyone (BGP operations practice).
ANNOUNCED_PREFIX_AT_MOST = {4: 24, 6: 48}


@rule
def announced_prefixes_routable(site: Site) -> list[Problem]:
    return [_problem(f"mailsite:vultr.bgp.prefixes[{i}]", prefix, f"wider than a /{ANNOUNCED_PREFIX_AT_MOST[prefix.version]}, "
                     "which no network routes from a customer (0.0.0.0/0 would claim the whole internet); announce the prefix "
                     "your provider assigned you")
            for i, prefix in enumerate(site.vultr.bgp.prefixes) if prefix.prefixlen < ANNOUNCED_PREFIX_AT_MOST[prefix.version]]


@rule
def communities_differ(site: Site) -> list[Problem]:
    bgp = site.bgp_spamd
    if bgp.blacklist_community != bgp.bypass_community:
        return []
    return [_problem("mailsite:bgpSpamd.bypassCommunity", bgp.bypass_community, "same as blacklistCommunity; they mark opposite lists")]


@rule
def pf_tables_of_their_own(site: Site) -> list[Problem]:
    tables, problems = site.bgp_spamd.pf_tables, []
    for field in ("blacklist", "bypass"):
        name = getattr(tables, field)
        if name in SPAMD_TABLES:
            problems.append(_problem(f"mailsite:bgpSpamd.pfTables.{field}", name, "spamd owns this table name; choose another"))
        elif name in PF_CONF_TABLES:
            problems.append(_problem(f"mailsite:bgpSpamd.pfTables.{field}", name, "pf.conf's own table (<nospamd> skips spamd, "
                                     "<bruteforce> holds rate-limit offenders); choose another, like bgp_spamd"))
    if tables.blacklist == tables.bypass:
        problems.append(_problem("mailsite:bgpSpamd.pfTables.bypass", tables.bypass, "same as pfTables.blacklist; give each list its own table"))
    return problems


# -- mailsite:target with network and hosts: the libvirt target ------------------------------

@rule
def static_addresses_fixed(site: Site) -> list[Problem]:
    if not (site.network.addressing == "static" and site.runs_on("libvirt")):
        return []
    return [_problem(f"{HOSTS}[{i}].{family}", "allocate", "network.addressing is static; give a fixed address")
            for i, host in enumerate(site.hosts) for family in ("ipv4", "ipv6") if getattr(host, family) == "allocate"]


@rule
def libvirt_addressing_static(site: Site) -> list[Problem]:
    if not site.runs_on("libvirt") or site.network.addressing == "static":
        return []
    return [Problem("mailsite:network.addressing", site.network.addressing,
                    "the libvirt target uses fixed addresses on its own network; set static")]


def libvirt_site_network(site: Site) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None] | None:
    """The network every libvirt host sits in (the primary's), IPv4 and IPv6, or None while
    there is none to check against: not libvirt or not static (libvirt_addressing_static), not
    one primary (one_primary), a host without a fixed IPv4 (every_mx_has_ipv4,
    static_addresses_fixed) or a primary whose IPv4 no one reaches
    (host_addresses_reachable_and_their_own). Those rules report it; the rules that read the site
    network have nothing to say until it is fixed."""
    if not site.runs_on("libvirt") or site.network.addressing != "static":
        return None
    if len(_primaries(site)) != 1 or any(not _fixed(host.ipv4) for host in site.hosts):
        return None
    if not isinstance(primary4 := site.primary.ipv4, ipaddress.IPv4Address) or unreachable(primary4) is not None:
        return None
    network6 = site.ipv6_network()
    if network6 and unreachable(network6.network_address) is not None:
        network6 = None  # the primary's own IPv6 is reported by host_addresses_reachable_and_their_own
    return site.ipv4_network(), network6


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


@rule
def libvirt_hosts_in_the_site_network(site: Site) -> list[Problem]:
    if (networks := libvirt_site_network(site)) is None:
        return []
    network4, network6 = networks
    problems = []
    for i, host in enumerate(site.hosts):
        if host.ipv4 not in network4:
            problems.append(Problem(f"{HOSTS}[{i}].ipv4", str(host.ipv4), f"outside the site network {network4}; use an address in it"))
        elif (taken := _not_a_host_address(host.ipv4, network4, site.network.ipv4_gateway, "ipv4Gateway")) is not None:
            problems.append(Problem(f"{HOSTS}[{i}].ipv4", str(host.ipv4), f"{taken}; give the host an address of its own in {network4}"))
        elif network6 and _fixed(host.ipv6) and (
                taken := _not_a_host_address(host.ipv6, network6, site.network.ipv6_gateway, "ipv6Gateway")) is not None:
            problems.append(Problem(f"{HOSTS}[{i}].ipv6", str(host.ipv6), f"{taken}; give the host an address of its own in {network6}"))
        # An allocated IPv6 is static_addresses_fixed's problem, not a place outside the network.
        if network6 and _fixed(host.ipv6) and host.ipv6 not in network6:
            problems.append(Problem(f"{HOSTS}[{i}].ipv6", str(host.ipv6), f"outside the site network {network6}; use an address in it"))
    return problems


@rule
def libvirt_hosts_have_a_resolver(site: Site) -> list[Problem]:
    if libvirt_site_network(site) is None or site.network.nameservers:
        return []
    return [Problem("mailsite:network.nameservers", "[]", "static hosts need a resolver for MX lookups; list one (libvirt's network answers DNS on its own address)")]


@rule
def libvirt_gateway_in_the_site_network(site: Site) -> list[Problem]:
    if (networks := libvirt_site_network(site)) is None:
        return []
    network4, gateway = networks[0], site.network.ipv4_gateway
    if gateway is not None and gateway in network4:
        return []
    # iter(): a /31's or /32's hosts() is a list (libvirt_site_network_has_room reports those).
    return [Problem("mailsite:network.ipv4Gateway", show(gateway), f"the libvirt network's own address must be in {network4}; set it, like {next(iter(network4.hosts()))}")]


@rule
def libvirt_site_network_has_room(site: Site) -> list[Problem]:
    # A /31 or /32 holds no gateway beside the hosts: no host could route mail out.
    if (networks := libvirt_site_network(site)) is None or networks[0].prefixlen <= 30:
        return []
    return [Problem("mailsite:network.ipv4PrefixLength", str(networks[0].prefixlen),
                    "no room for the hosts and the libvirt network's own address; use 30 or less, the libvirt network's length, like 24")]


# -- mailsite:target with network, vultr and hosts: the vultr target ---------------------------
# A target's rules ask site.runs_on(its name); a rule about its own settings section refuses them
# on every other target ("only on vultr"), so a new target is covered without a rule of its own.

@rule
def vultr_addressing_autoconf(site: Site) -> list[Problem]:
    if not site.runs_on("vultr") or site.network.addressing == "autoconf":
        return []
    return [Problem("mailsite:network.addressing", site.network.addressing,
                    "Vultr hands out the reserved addresses by DHCP and router advertisements; set autoconf")]


@rule
def vultr_bgp_only_on_vultr(site: Site) -> list[Problem]:
    if site.runs_on("vultr") or not site.vultr.bgp.enabled:
        return []
    return [Problem("mailsite:vultr.bgp.enabled", "true", "Vultr's BGP session exists on the vultr target only; set false")]


@rule
def vultr_bgp_has_its_as_and_prefixes(site: Site) -> list[Problem]:
    bgp = site.vultr.bgp
    if not site.runs_on("vultr") or not bgp.enabled or (bgp.local_as is not None and bgp.prefixes):
        return []
    return [Problem("mailsite:vultr.bgp", "enabled", "a Vultr BGP session needs localAs (from Vultr) and the prefixes to announce; set both")]


@rule
def vultr_assigns_addresses(site: Site) -> list[Problem]:
    # Vultr cannot take an address of our choosing: IPv4 is a reserved IP made by the stack, IPv6
    # the instance's own (spamd and the images need only IPv4 before the VM exists).
    if not site.runs_on("vultr"):
        return []
    return [Problem(f"{HOSTS}[{i}].{family}", str(value), "on Vultr the provider assigns addresses; set allocate")
            for i, host in enumerate(site.hosts) for family in ("ipv4", "ipv6")
            if (value := getattr(host, family)) is not None and value != "allocate"]


@rule
def vultr_egress_is_virtio(site: Site) -> list[Problem]:
    if not site.runs_on("vultr"):
        return []
    return [Problem(f"{HOSTS}[{i}].egressInterface", host.egress_interface, "Vultr's NIC is virtio, which OpenBSD names vio0; set vio0")
            for i, host in enumerate(site.hosts) if host.egress_interface != "vio0"]


# -- mailsite:secrets -------------------------------------------------------------------------

@rule
def keys_only_inline_in_the_stack_file(site: Site) -> list[Problem]:
    secrets = site.secrets
    if secrets.backend == "inline":
        return []
    return [Problem(f"mailsite:secrets.{field}", "<secret hidden>", f"values belong in the {secrets.backend} backend, not the stack file; remove it")
            for field, value in (("queueKeys", secrets.queue_keys), ("spamdSyncKey", secrets.spamd_sync_key)) if value]


@rule
def inline_queue_keys_one_per_host(site: Site) -> list[Problem]:
    secrets = site.secrets
    if secrets.backend != "inline":
        return []
    problems = []
    for host in site.hosts:
        key, setting = secrets.queue_keys.get(host.name), f"mailsite:secrets.queueKeys.{host.name}"
        if key is None:
            problems.append(Problem(setting, "(absent)", "inline backend needs a queue key per host; add one (openssl rand -hex 16)"))
        elif (message := key_problem(key.get_secret_value())) is not None:
            problems.append(Problem(setting, show(key), message))
    for name in set(secrets.queue_keys) - {host.name for host in site.hosts}:
        problems.append(Problem(f"mailsite:secrets.queueKeys.{name}", "<secret hidden>", "no host has this name; remove it"))
    return problems


@rule
def inline_spamd_sync_key(site: Site) -> list[Problem]:
    secrets = site.secrets
    if secrets.backend != "inline":
        return []
    if (sync := secrets.spamd_sync_key) is None:
        return [Problem("mailsite:secrets.spamdSyncKey", "(absent)", "inline backend needs a spamd sync key; add one (openssl rand -hex 16)")]
    if (message := key_problem(sync.get_secret_value())) is not None:
        return [Problem("mailsite:secrets.spamdSyncKey", show(sync), message)]
    return []


# -- mailsite:images with maxMessageSize ------------------------------------------------------

@rule
def disk_holds_the_partitions(site: Site) -> list[Problem]:
    images = site.images
    if not (shortfall := images.disk_shortfall()):
        return []
    needed = size_bytes(images.disk_size) + shortfall
    layout = ", ".join(f"{p.mount_point} {size_text(p.min_bytes)}" for p in images.disk_layout())
    return [_problem("mailsite:images.diskSize", images.disk_size,
                     f"too small for the partitions, which need {size_text(needed)} with the boot area ({layout}, "
                     f"the queue's {site.queue_room} included); raise diskSize to {-(-needed // (1 << 30))}G "
                     f"or lower images.queueMessages (or images.queueSpace)")]
