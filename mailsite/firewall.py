"""The site's inbound rule set: one list that both pf.conf and the cloud firewall are made from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal, Mapping

from .model import BRUTEFORCE_TABLE, Host, HostAddresses, Site

ANYWHERE = ("0.0.0.0/0", "::/0")

# pf's table of sources that broke a rate limit (pass ... overload <bruteforce>). An entry shuts
# its source out of the rate-limited services only, never smtp, and lasts this long: an office
# behind one NAT address that mistypes a password is locked out for an hour, not for good.
# (Its name, BRUTEFORCE_TABLE, is the model's: no bgp table may take it.)
BRUTEFORCE_EXPIRY_SECONDS = 3600
# How often root's crontab expires <bruteforce> entries: an entry lives up to expiry + this.
BRUTEFORCE_EXPIRE_EVERY_MINUTES = 10


@dataclass(frozen=True)
class Service:
    name: str  # as in OpenBSD's /etc/services, so pf.conf reads like an admin wrote it
    protocol: Literal["tcp", "udp"]
    port: int
    sources: tuple[str, ...]  # CIDRs allowed in; ANYWHERE for the whole internet
    purpose: str
    greylisted: bool = False  # new IPv4 senders meet spamd first
    rate_limited: bool = False  # floods land in <bruteforce>
    label: str = ""  # names the sources in pf.conf where two services share a port name

    @property
    def sources_name(self) -> str:
        return (self.label or self.name).replace("-", "_") + "_sources"

    @property
    def from_anywhere(self) -> bool:
        return self.sources == ANYWHERE


def _cidr(address) -> str:
    return f"{address}/{address.max_prefixlen}"


def inbound_services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    """What this host accepts from outside, and from whom."""
    services = [Service("smtp", "tcp", 25, ANYWHERE, "inbound mail (MTA)", greylisted=True)]
    if host.is_primary:
        # Only the primary is an MSA; a backup MX is an MTA and nothing else. (imaps is opened by the
        # daemon that serves it, when there is one: nothing listens on 993 yet.)
        services += [
            Service("submission", "tcp", 587, ANYWHERE, "mail submission (MSA, STARTTLS + auth)", rate_limited=True),
            Service("smtps", "tcp", 465, ANYWHERE, "mail submission (MSA, TLS + auth)", rate_limited=True),
        ]
    peers = tuple(_cidr(addresses[peer.name].ipv4) for peer in site.spamd_sync_peers(host))
    if peers:
        services.append(Service("spamd-sync", "udp", 8025, peers, "spamd greylist sync between the site's MXes"))
    route_servers = tuple(_cidr(server.address) for server in site.bgp_spamd.route_servers)
    services.append(Service("bgp", "tcp", 179, route_servers, "eBGP multihop from the bgp-spamd route servers"))
    if site.target == "vultr" and site.vultr.bgp.enabled:
        services.append(Service("bgp", "tcp", 179, (f"{site.vultr.bgp.neighbor}/32",), "eBGP multihop with Vultr, announcing the site's own prefixes", label="vultr-bgp"))
    admin = tuple(str(cidr) for cidr in site.admin_cidrs)
    if admin:
        services.append(Service("ssh", "tcp", 22, admin, "administration", rate_limited=True))
    return services


def rate_limited_ports(services: list[Service]) -> dict[str, list[str]]:
    """protocol -> the port names whose rules feed <bruteforce>: exactly what an entry blocks."""
    ports: dict[str, list[str]] = {}
    for service in services:
        if service.rate_limited and service.name not in ports.get(service.protocol, []):
            ports.setdefault(service.protocol, []).append(service.name)
    return ports


@dataclass(frozen=True)
class CloudRule:
    """One provider firewall rule: a protocol and port from one network (Vultr's shape)."""

    ip_type: Literal["v4", "v6"]
    protocol: Literal["tcp", "udp", "icmp"]
    subnet: str
    subnet_size: int
    port: str | None
    notes: str


def cloud_rules(services: list[Service]) -> list[CloudRule]:
    """The provider firewall in front of a host: the same services pf lets in, and nothing wider."""
    rules = [
        # Path MTU discovery dies without ICMP "fragmentation needed" / "packet too big".
        CloudRule("v4", "icmp", "0.0.0.0", 0, None, "icmp: path MTU discovery, echo"),
        CloudRule("v6", "icmp", "::", 0, None, "icmp6: path MTU discovery, neighbour discovery"),
    ]
    for service in services:
        for source in service.sources:
            network = ipaddress.ip_network(source)
            rules.append(
                CloudRule(
                    "v4" if network.version == 4 else "v6",
                    service.protocol,
                    str(network.network_address),
                    network.prefixlen,
                    str(service.port),
                    f"{service.name}: {service.purpose}",
                )
            )
    return rules
