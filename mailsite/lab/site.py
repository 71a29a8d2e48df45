"""The lab's site: the stack's site moved onto lab addresses, its nodes, and the files they run.

Pure: plain data in, text out. Hosts are rendered by the same render_host() as the images, with
LINUX as the only difference; the DNS server serves dns_records(), the values the cloud DNS gets.
What each node adds to the daemon root besides (its resolver, accounts, CA bundle, pki files) is
made here from the root's own files, passed in as text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from ..configtest import DOVECOT_HOST_ACCOUNTS
from ..dns import DnsRecord, dns_records, dnsmasq_options, reverse_records, reverse_zone_name
from ..doctor.blocklists import LISTED_TEST_ENTRY, blocklist_zones, query_name
from ..model import MAIL_USER, MAILBOXES, Host, HostAddresses, HostSecrets, Site
from ..problems import Problem, SiteConfigError
from ..render import render_host
from ..templates import HostTree, LinuxDifferences, RenderedFile, render_template
from .ca import Issued

# Private ranges nothing on this machine routes to: the lab lives on its own bridge.
LAB_IPV4 = ipaddress.IPv4Network("10.77.0.0/24")
LAB_IPV6 = ipaddress.IPv6Network("fd00:77::/64")
NAMESPACE_PREFIX = "mslab-"
WIRE = "mslab"  # the namespace that holds the bridge
BRIDGE = "mslab0"

# What Linux forces on the rendered files; LinuxDifferences says why for each field. bgpd_socket
# stays unset: each lab host has a /run of its own, so bgpd's default socket is already private.
LINUX = LinuxDifferences(pftable=False)

# What the lab's route servers announce: documentation addresses, by community.
BLACKLIST = ("198.51.100.5/32", "198.51.100.77/32")
BYPASS = ("203.0.113.7/32",)

# The system accounts the primary's daemons run as that the daemon roots lack, in each of its
# trees: those configtest lays out for doveconf, as an OpenBSD primary has them (Dovecot's own
# users, as its package numbers them, and the mail user every mailbox belongs to, whose home is
# the mailboxes' directory). Each gets a group of its own, of the same number.
PRIMARY_ACCOUNTS = {name: (uid, MAILBOXES if name == MAIL_USER else "/var/empty")
                    for name, uid in DOVECOT_HOST_ACCOUNTS if name != "root"}

# A domain that is not the site's, reserved (RFC 2606) and never a site domain: the outside world.
OUTSIDE_DOMAIN = "outside.test"

_DNS, _INTERNET, _FIRST_MX, _FIRST_ROUTE_SERVER = 2, 3, 11, 201

NodeKind = Literal["mx", "dns", "route-server", "internet"]


@dataclass(frozen=True)
class Node:
    name: str
    kind: NodeKind
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    link: str  # its link's name: for an MX the host's egress interface, as OpenBSD names it

    @property
    def namespace(self) -> str:
        return NAMESPACE_PREFIX + self.name

    @property
    def loopback(self) -> str:
        return "lo0" if self.kind == "mx" else "lo"


@dataclass(frozen=True)
class LabPlan:
    site: Site  # the stack's site on lab addresses
    nodes: tuple[Node, ...]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def of_kind(self, kind: NodeKind) -> list[Node]:
        return [node for node in self.nodes if node.kind == kind]

    @property
    def dns(self) -> Node:
        return self.of_kind("dns")[0]

    @property
    def internet(self) -> Node:
        return self.of_kind("internet")[0]

    def addresses(self) -> dict[str, HostAddresses]:
        """The MXes' lab addresses, in the shape the renderers and dns_records() take."""
        return {node.name: HostAddresses(node.ipv4, node.ipv6) for node in self.of_kind("mx")}


def _node(name: str, kind: NodeKind, number: int, link: str = "eth0") -> Node:
    return Node(name, kind, LAB_IPV4[number], ipaddress.IPv6Address(f"{LAB_IPV6.network_address}{number}"), link)


def lab_plan(site: Site, secrets_path: Path) -> LabPlan:
    """The site as the lab runs it: same hosts, names, preferences, domains and users; lab
    addresses; a lab-private secrets directory."""
    servers = site.bgp_spamd.route_servers
    if len(site.hosts) > _FIRST_ROUTE_SERVER - _FIRST_MX or len(servers) > 254 - _FIRST_ROUTE_SERVER:
        raise SiteConfigError([Problem("mailsite:hosts", str(len(site.hosts)), "the lab holds at most 190 MXes and 53 route servers")])
    mxes = [_node(host.name, "mx", _FIRST_MX + i, host.egress_interface) for i, host in enumerate(site.hosts)]
    route_servers = [_node(f"rs{i + 1}", "route-server", _FIRST_ROUTE_SERVER + i) for i in range(len(servers))]
    nodes = (_node("dns", "dns", _DNS), _node("internet", "internet", _INTERNET), *route_servers, *mxes)
    names = [node.name for node in nodes]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise SiteConfigError([Problem("mailsite:hosts", ", ".join(clashes), "the lab names its own nodes dns, internet, rs1...; rename the host")])
    if OUTSIDE_DOMAIN in site.domains:
        raise SiteConfigError([Problem("mailsite:domains", OUTSIDE_DOMAIN, "the lab's outside world is that domain; try the lab with another")])
    hosts = [host.model_copy(update={"ipv4": mx.ipv4, "ipv6": mx.ipv6}) for host, mx in zip(site.hosts, mxes)]
    bgp = site.bgp_spamd.model_copy(update={
        "route_servers": [server.model_copy(update={"address": rs.ipv4}) for server, rs in zip(servers, route_servers)],
    })
    lab = site.model_copy(update={
        "hosts": hosts,
        "bgp_spamd": bgp,
        "network": site.network.model_copy(update={
            "addressing": "static", "ipv4_prefix_length": LAB_IPV4.prefixlen, "ipv4_gateway": None,
            "ipv6_prefix_length": LAB_IPV6.prefixlen, "ipv6_gateway": None,
        }),
        "secrets": site.secrets.model_copy(update={"backend": "file", "path": str(secrets_path)}),
    })
    return LabPlan(lab, nodes)


def render_lab_host(plan: LabPlan, host: Host, secrets: HostSecrets) -> HostTree:
    return render_host(plan.site, host, plan.addresses(), secrets, LINUX)


def render_dnsmasq_conf(plan: LabPlan, listen: str | None = None, dkim: Sequence[DnsRecord] = ()) -> str:
    """The lab DNS's dnsmasq.conf; `listen`: another address than the dns node's (a test's loopback);
    `dkim`: the DKIM keys' records, from the lab's secrets backend as the program reads them."""
    addresses = plan.addresses()
    return render_template(
        "lab/dnsmasq.conf.j2",
        listen=listen or plan.dns.ipv4,
        domains=plan.site.domains,
        records=dnsmasq_options(dns_records(plan.site, addresses, dkim)),
        reverse=[(ipaddress.ip_address(r.address).reverse_pointer, r.name) for r in reverse_records(plan.site, addresses)],
        reverse_zones=[reverse_zone_name(network) for network in (LAB_IPV4, LAB_IPV6)],
        outside=outside(plan),
        blocklists=[(zone, query_name(LISTED_TEST_ENTRY, zone), LISTED_TEST_ENTRY) for zone in blocklist_zones(plan.site)],
    )


@dataclass(frozen=True)
class Outside:
    """The outside world's mail domain, whose MTA is on the internet node: a site user's mail to
    someone there leaves through the primary and arrives in its Maildir."""

    domain: str
    mx_name: str
    address: ipaddress.IPv4Address
    maildir: str = "/var/outside/Maildir"
    user: str = "nobody"  # the root's own: delivery needs a system user, the lab's sender is none


def outside(plan: LabPlan) -> Outside:
    return Outside(OUTSIDE_DOMAIN, f"mail.{OUTSIDE_DOMAIN}", plan.internet.ipv4)


def render_outside_smtpd_conf(plan: LabPlan) -> str:
    world = outside(plan)
    return render_template("lab/outside-smtpd.conf.j2", domain=world.domain, link=plan.internet.link,
                           maildir=world.maildir, user=world.user)


def render_route_server_conf(plan: LabPlan, server: Node, blacklist: Sequence[str], bypass: Sequence[str]) -> str:
    bgp = plan.site.bgp_spamd
    return render_template(
        "lab/route-server-bgpd.conf.j2",
        name=server.name,
        route_server_as=bgp.route_server_as,
        router_id=server.ipv4,
        multihop=bgp.multihop,
        clients=[(node, bgp.local_as) for node in plan.of_kind("mx")],
        announcements=[(prefix, bgp.blacklist_community) for prefix in blacklist]
        + [(prefix, bgp.bypass_community) for prefix in bypass],
    )


def _accounts(existing: str, entries: list[str]) -> str:
    """An /etc/passwd or /etc/group with `entries` in place of any line of the same name."""
    names = {entry.split(":")[0] for entry in entries}
    kept = [line for line in existing.splitlines() if line.split(":")[0] not in names]
    return "".join(f"{line}\n" for line in kept + entries)


def node_environment(plan: LabPlan) -> HostTree:
    """What every lab node lays over the daemon root's /etc: its resolver (the lab's DNS) and a
    plain /etc/hosts, so that names resolve as the site's DNS says and nowhere else."""
    return {
        "etc/resolv.conf": RenderedFile(f"nameserver {plan.dns.ipv4}\noptions timeout:1 attempts:2\n"),
        "etc/hosts": RenderedFile("127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
    }


# Where Debian's OpenSSL, smtpd (its compiled-in CA file) and swaks (IO::Socket::SSL, through
# /usr/lib/ssl/cert.pem) look for the CAs they trust.
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


# The lab CA alone, on every node: a client told to trust only it (swaks --tls-ca-path) shows
# that it is the lab's CA that verifies a certificate, not one of the public ones.
LAB_CA = "etc/ssl/mailsite-lab-ca.pem"


def trust_store(root_bundle: str, lab_ca: str) -> HostTree:
    """The root's CA bundle with the lab's CA after it: a node trusts what Debian trusts and the
    lab; and the lab CA in a file of its own."""
    return {CA_BUNDLE: RenderedFile(root_bundle.rstrip("\n") + "\n" + lab_ca), LAB_CA: RenderedFile(lab_ca)}


def pki_files(plan: LabPlan, host: Host, issued: Issued) -> HostTree:
    """The host's certificate and key where the site's smtpd.conf names them (site.tls)."""
    tls = plan.site.tls
    return {
        tls.certificate_for(host).lstrip("/"): RenderedFile(issued.certificate.decode()),
        tls.key_for(host).lstrip("/"): RenderedFile(issued.key.decode(), 0o600, secret=True),
    }


def host_environment(plan: LabPlan, host: Host, passwd: str, group: str) -> HostTree:
    """What the lab lays over a daemon root's /etc for a host's tree besides its rendered files:
    the node's environment, and on the primary the accounts its daemons run as (added to that
    root's `passwd` and `group`, in place of same-named lines)."""
    files = node_environment(plan)
    if host.is_primary:
        files["etc/passwd"] = RenderedFile(_accounts(passwd, [
            f"{name}:*:{uid}:{uid}:mailsite lab:{home}:/usr/sbin/nologin" for name, (uid, home) in PRIMARY_ACCOUNTS.items()]))
        files["etc/group"] = RenderedFile(_accounts(group, [f"{name}:x:{uid}:" for name, (uid, _) in PRIMARY_ACCOUNTS.items()]))
    return files


def account_ids(passwd: str) -> dict[str, int]:
    """user -> uid in an /etc/passwd: who owns a rendered file that names an owner other than root
    (Dovecot's passwd, read by its auth process as _dovecot)."""
    return {fields[0]: int(fields[2]) for fields in (line.split(":") for line in passwd.splitlines()) if len(fields) > 3}
