"""The site's inbound rule set: the services the daemons on a host declare, the one list that both
pf.conf (mailsite.daemons.pf) and the cloud firewall are made from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal, Mapping

from .daemons import daemons_on
from .daemons.base import opened
from .model import Host, HostAddresses, Site
from .service import Service


def inbound_services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    """What this host accepts from outside, and from whom: what its daemons need, nothing else."""
    return opened(daemons_on(site, host), site, host, addresses)


@dataclass(frozen=True)
class CloudRule:
    """One provider firewall rule: a protocol and port from one network (Vultr's shape)."""

    ip_type: Literal["v4", "v6"]
    protocol: Literal["tcp", "udp", "icmp"]
    subnet: str
    subnet_size: int
    port: str | None
    notes: str  # what the provider's console shows beside the rule: free to reword
    # What it lets in, the start of the rule's resource name: state holds that name, so it never
    # changes (a renamed rule is deleted and made anew), whatever `notes` says.
    name: str


def cloud_rules(services: list[Service]) -> list[CloudRule]:
    """The provider firewall in front of a host: the same services pf lets in, and nothing wider."""
    rules = [
        # Path MTU discovery dies without ICMP "fragmentation needed" / "packet too big".
        CloudRule("v4", "icmp", "0.0.0.0", 0, None, "icmp: path MTU discovery, echo", "icmp"),
        CloudRule("v6", "icmp", "::", 0, None, "icmp6: path MTU discovery, neighbour discovery", "icmp6"),
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
                    service.name,
                )
            )
    return rules
