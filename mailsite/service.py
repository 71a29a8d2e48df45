"""A service a daemon needs opened: the one record pf.conf and the cloud firewall are both made from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

ANYWHERE = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class RateLimit:
    """pf's limits per source address on a rate-limited service; a source past either lands in
    <bruteforce>. The defaults fit logins that come and go (submission, ssh)."""

    connections: int = 20  # open at once (max-src-conn)
    new: int = 15  # new connections ... (max-src-conn-rate)
    seconds: int = 5  # ... within this many seconds


@dataclass(frozen=True)
class Service:
    name: str  # as in OpenBSD's /etc/services, so pf.conf reads like an admin wrote it
    protocol: Literal["tcp", "udp"]
    port: int
    sources: tuple[str, ...]  # CIDRs allowed in; ANYWHERE for the whole internet
    purpose: str
    greylisted: bool = False  # new IPv4 senders meet spamd first
    rate_limited: bool = False  # floods land in <bruteforce>
    rate_limit: RateLimit = RateLimit()  # what a flood is, when rate_limited
    label: str = ""  # names the sources in pf.conf where two services share a port name

    @property
    def sources_name(self) -> str:
        return (self.label or self.name).replace("-", "_") + "_sources"

    @property
    def from_anywhere(self) -> bool:
        return self.sources == ANYWHERE


def host_cidr(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One address as a source network: 192.0.2.1/32."""
    return f"{address}/{address.max_prefixlen}"
