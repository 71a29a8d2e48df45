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

from ..dns import dns_records, reverse_records
from ..model import Host, HostAddresses, HostSecrets, Site
from ..problems import Problem, SiteConfigError, few
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

# Where the primary's mailbox users live inside its mount namespace, and their uids.
MAILBOX_HOMES = "/home"
_FIRST_MAILBOX_UID = 61000

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
    addresses; a lab-private secrets directory; delivery to maildir (the lab has no Dovecot)."""
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
    hosts = [host.model_copy(update={"ipv4": mx.ipv4, "ipv6": mx.ipv6}) for host, mx in zip(site.hosts, mxes)]
    bgp = site.bgp_spamd.model_copy(update={
        "route_servers": [server.model_copy(update={"address": rs.ipv4}) for server, rs in zip(servers, route_servers)],
    })
    lab = site.model_copy(update={
        "hosts": hosts,
        "bgp_spamd": bgp,
        "delivery": site.delivery.model_copy(update={"method": "maildir"}),
        "network": site.network.model_copy(update={
            "addressing": "static", "ipv4_prefix_length": LAB_IPV4.prefixlen, "ipv4_gateway": None,
            "ipv6_prefix_length": LAB_IPV6.prefixlen, "ipv6_gateway": None,
        }),
        "secrets": site.secrets.model_copy(update={"backend": "file", "path": str(secrets_path)}),
    })
    return LabPlan(lab, nodes)


def render_lab_host(plan: LabPlan, host: Host, secrets: HostSecrets) -> HostTree:
    return render_host(plan.site, host, plan.addresses(), secrets, LINUX)


def render_dnsmasq_conf(plan: LabPlan) -> str:
    addresses = plan.addresses()
    return render_template(
        "lab/dnsmasq.conf.j2",
        listen=plan.dns.ipv4,
        domains=plan.site.domains,
        records=dns_records(plan.site, addresses),
        reverse=[(ipaddress.ip_address(r.address).reverse_pointer, r.name) for r in reverse_records(plan.site, addresses)],
    )


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


def shadow(existing: str, hashes: dict[str, str], day: int) -> RenderedFile:
    """The root's /etc/shadow with a crypt(3) hash for each mailbox user (set on `day`, days after
    1970): smtpd's `auth` checks a user's password through PAM, which reads it here."""
    return RenderedFile(_accounts(existing, [f"{user}:{hash_}:{day}:0:99999:7:::" for user, hash_ in hashes.items()]),
                        0o640, secret=True)


def refuse_system_account_users(site: Site, passwd: str) -> None:
    """A mailbox user becomes an account of the primary's: one named like an account of the daemon
    root's `passwd` (root, mail, nobody, a daemon's) would replace it, and log in as it."""
    accounts = {line.split(":", 1)[0] for line in passwd.splitlines() if ":" in line}
    clashes = [user for user in site.recipients.users if user in accounts]
    if clashes:
        raise SiteConfigError([Problem("mailsite:recipients.users", few(clashes),
                                       "rename the user: the lab's primary has these system accounts")])


def host_environment(plan: LabPlan, host: Host, passwd: str, group: str) -> HostTree:
    """What the lab lays over the daemon root's /etc for a host besides its rendered files: the
    node's environment, and on the primary its mailbox users (added to the root's `passwd` and
    `group`), since smtpd delivers a virtual user's mail as that system user into the user's home."""
    files = node_environment(plan)
    if host.is_primary:
        refuse_system_account_users(plan.site, passwd)
        used = {int(line.split(":")[2]) for line in passwd.splitlines() + group.splitlines() if line.count(":") >= 3}
        free = (uid for uid in range(_FIRST_MAILBOX_UID, 65534) if uid not in used)
        ids = {user: next(free) for user in plan.site.recipients.users}
        files["etc/passwd"] = RenderedFile(_accounts(passwd, [
            f"{user}:x:{uid}:{uid}:lab mailbox:{MAILBOX_HOMES}/{user}:/usr/sbin/nologin" for user, uid in ids.items()
        ]))
        files["etc/group"] = RenderedFile(_accounts(group, [f"{user}:x:{uid}:" for user, uid in ids.items()]))
    return files


def mailbox_owners(environment: HostTree) -> dict[str, int]:
    """user -> uid of the lab's mailbox users in a host's environment (none on a backup)."""
    passwd = environment.get("etc/passwd")
    if passwd is None:
        return {}
    return {
        fields[0]: int(fields[2])
        for fields in (line.split(":") for line in passwd.text.splitlines())
        if fields[4:5] == ["lab mailbox"]
    }
