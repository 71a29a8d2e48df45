"""The site's MTA-STS policy (RFC 8461): which MXes a sender may deliver to, and only over TLS with
a certificate it can verify. One policy for every site domain, since every domain has the same
MXes; the primary's httpd serves it at https://mta-sts.<domain>/.well-known/mta-sts.txt and the
DNS announces its id at _mta-sts.<domain>."""

from __future__ import annotations

import hashlib

from .model import Site

WELL_KNOWN_PATH = "/.well-known/mta-sts.txt"


def policy_text(site: Site) -> str:
    """The policy file: RFC 8461 3.2's key/value lines, one `mx:` per MX name, best first."""
    mxes = sorted(site.hosts, key=lambda host: (host.mx_preference, host.name))
    lines = ["version: STSv1", f"mode: {site.dns.mta_sts_mode}",
             *[f"mx: {host.mx_name}" for host in mxes], f"max_age: {site.dns.mta_sts_max_age}"]
    # CRLF, as the RFC's own examples end their lines; its grammar takes LF too.
    return "\r\n".join(lines) + "\r\n"


def policy_id(site: Site) -> str:
    """The id the _mta-sts TXT record carries: a sender refetches the policy only when the id
    changes, so it is made from the policy's text. RFC 8461 3.1: 1 to 32 letters and digits."""
    return hashlib.sha256(policy_text(site).encode()).hexdigest()[:20]


def policy_hosts(site: Site) -> list[str]:
    """The names a sender fetches the policy from, one per site domain: each needs the primary's
    address and a certificate of its own."""
    return [f"mta-sts.{domain}" for domain in site.domains]
