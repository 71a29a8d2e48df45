"""What every check reads about the site: the stack's model, and how doctor reaches the live
site from where it runs (an admin machine, or the lab's internet node). Built once per run."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import dns.exception
import dns.resolver

from ..hosts import HostControl
from ..model import Host, Site
from ..secrets.store import SecretStore

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SiteView:
    site: Site
    stack: str
    resolver: dns.resolver.Resolver  # the name servers doctor asks (--nameserver, else this machine's)
    control: Callable[[Host], HostControl]  # ssh on a real site, nsenter in the lab
    store: Callable[[], SecretStore]  # the secrets backend, opened only by the checks that need it
    cafile: str | None  # the CA bundle certificates are verified against; None: this machine's
    now: datetime  # one instant for every age and expiry of the run
    timeout: float  # for one network operation: a connect, a DNS query, a command on a host
    in_lab: bool = False  # the lab runs no pf and no spamd (OpenBSD only)
    _addresses: dict[str, list[Address]] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def addresses(self, host: Host) -> list[Address]:
        """The MX name's A and AAAA records as the resolver answers now, IPv4 first; [] when it
        has none (the DNS checks say why). Asked once per run, whichever check asks first."""
        with self._lock:
            if host.mx_name in self._addresses:
                return self._addresses[host.mx_name]
        # A and AAAA asked at once: the checks are made from these before any runs, so a resolver
        # that does not answer costs the run one timeout here, not one per record type.
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda rdtype: self._records(host.mx_name, rdtype), ("A", "AAAA")))
        found = [address for answer in answers for address in answer]
        with self._lock:
            return self._addresses.setdefault(host.mx_name, found)

    def _records(self, name: str, rdtype: str) -> list[Address]:
        try:
            return [ipaddress.ip_address(record.address) for record in self.resolver.resolve(name, rdtype, lifetime=self.timeout)]
        except dns.exception.DNSException:
            return []
