"""DKIM keys of the site's domains: how one is made, how a domain's selectors are kept, and the TXT
records DNS publishes for them.

One secret per domain (mailsite/<stack>/dkim/<domain>) holds all of that domain's selectors, each
with its private key and where it stands in a rotation, and the names of those retired. Every step
of a rotation writes one new version of that one secret, so a crash leaves the step done or not,
never half of it (mailsite.dkim_rotation).

RSA only: it is what every receiver verifies (RFC 6376); Ed25519 (RFC 8463) would only be a second
signature beside it, which the large receivers ignore, and a second key to rotate for nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from .dns import DnsRecord, zone_of
from .model import DkimKey, Host, Site

# In DNS and still valid: PUBLISHED waits to sign (a new key), SIGNING signs, RETIRING no longer
# signs but stays published so that mail it signed still verifies.
PUBLISHED: Final = "published"
SIGNING: Final = "signing"
RETIRING: Final = "retiring"
State = Literal["published", "signing", "retiring"]
# A selector is a DNS label and part of a key file's name and of rspamd's config: nothing else.
_SELECTOR = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class DkimSelector:
    name: str  # the DNS label: <name>._domainkey.<domain>
    private_key: SecretStr  # PEM (PKCS#1), as rspamd reads a key file
    created: datetime
    state: State
    # PUBLISHED: when its record was first seen in DNS (the TTL wait counts from there).
    live: datetime | None = None
    # SIGNING: since when the state says sign with it; RETIRING: since when it no longer signs.
    since: datetime | None = None
    # RETIRING: when every host that signs the domain was first seen signing with its successor (the
    # retire wait counts from there, not from the switch: a host signs with the new key only after an up).
    confirmed: datetime | None = None

    @property
    def public_key(self) -> str:
        """The key's SubjectPublicKeyInfo, DER in base64: a DKIM record's p= tag."""
        return public_key_of(self.private_key)

    @property
    def fingerprint(self) -> str:
        """Names this key without revealing it (twelve hex digits of its public key's hash)."""
        return hashlib.sha256(base64.b64decode(self.public_key)).hexdigest()[:12]


@dataclass(frozen=True)
class DomainKeys:
    domain: str
    selectors: tuple[DkimSelector, ...]
    retired: tuple[str, ...] = field(default=())  # names never to use again

    def in_state(self, state: State) -> DkimSelector | None:
        return next((s for s in self.selectors if s.state == state), None)

    @property
    def signing(self) -> DkimSelector:
        found = self.in_state(SIGNING)
        assert found is not None, "parse_domain_keys refuses a domain without a signing selector"
        return found

    def signing_key(self) -> DkimKey:
        return DkimKey(self.domain, self.signing.name, self.signing.private_key, self.signing.fingerprint)

    def with_selectors(self, *selectors: DkimSelector, retired: Iterable[str] = ()) -> DomainKeys:
        return replace(self, selectors=tuple(selectors), retired=(*self.retired, *retired))

    def updated(self, old: DkimSelector, new: DkimSelector) -> DomainKeys:
        return replace(self, selectors=tuple(new if s.name == old.name else s for s in self.selectors))


def new_private_key(bits: int) -> str:
    """A fresh RSA key (exponent 65537) as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode("ascii")


def public_key_of(private_key: SecretStr) -> str:
    return _public_key(private_key.get_secret_value())


# Loading an RSA key checks it (a tenth of a second); a run reads the same few keys many times.
@functools.lru_cache(maxsize=64)
def _public_key(pem: str) -> str:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def selector_name(prefix: str, day: datetime, taken: Iterable[str]) -> str:
    """The prefix and the day (mailsite20261126), then b, c... when that day already has one: a
    name is never used twice for a domain, so a cached old record never meets a new key."""
    used, base = set(taken), f"{prefix}{day:%Y%m%d}"
    for suffix in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        if base + suffix not in used:
            return base + suffix
    raise ValueError(f"more than 26 DKIM keys made on {day:%Y-%m-%d}")


def new_selector(prefix: str, bits: int, now: datetime, taken: Iterable[str], state: State) -> DkimSelector:
    return DkimSelector(selector_name(prefix, now, taken), SecretStr(new_private_key(bits)), now, state,
                        since=now if state == SIGNING else None)


def first_keys(domain: str, prefix: str, bits: int, now: datetime) -> DomainKeys:
    """A new domain's one key, signing at once: nothing signed for the domain before."""
    return DomainKeys(domain, (new_selector(prefix, bits, now, (), SIGNING),))


def dkim_record_text(public_key: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_key}"


def dkim_records(domains: Iterable[DomainKeys]) -> list[DnsRecord]:
    """A TXT record for every selector still valid (published, signing or retiring)."""
    return [DnsRecord(f"{selector.name}._domainkey.{keys.domain}", "TXT", dkim_record_text(selector.public_key))
            for keys in domains for selector in keys.selectors]


def own_mail_domain(site: Site, host: Host) -> str | None:
    """The site domain a host's own mail (root@, MAILER-DAEMON@ its MX name) is signed for: the
    one its MX name lies in (the longest), so that it aligns with DMARC's relaxed mode. None when
    it lies in none: that host's own mail leaves unsigned."""
    return zone_of(host.mx_name, site.domains)


def signing_hosts(site: Site, domain: str) -> list[Host]:
    """The hosts that sign `domain`'s mail: the primary (rspamd, every domain) and each backup
    whose MX name lies in it (filter-dkimsign, its own mail)."""
    return [host for host in site.hosts if host.is_primary or own_mail_domain(site, host) == domain]


def key_path(domain: str, selector: str) -> str:
    """Where a host keeps a signing key (below /): rspamd's dkim_signing reads it there on the
    primary, filter-dkimsign on a backup."""
    return f"etc/mail/dkim/{domain}.{selector}.key"


# The secret's JSON: what is stored, and read back by parse_domain_keys.


def _time(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def serialize_domain_keys(keys: DomainKeys) -> str:
    return json.dumps({
        "selectors": [{"selector": s.name, "privateKey": s.private_key.get_secret_value(), "state": s.state,
                       "created": _time(s.created), "live": _time(s.live), "since": _time(s.since),
                       "confirmed": _time(s.confirmed)} for s in keys.selectors],
        "retired": list(keys.retired),
    }, sort_keys=True)


class MalformedKeys(ValueError):
    """What is wrong with a stored value, in words that never quote it."""


def _parse_time(entry: dict, name: str, required: bool = False) -> datetime | None:
    value = entry.get(name)
    if value is None and not required:
        return None
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise MalformedKeys(f"a selector's {name} is not a time like 2026-11-26T08:00:00Z") from None


def parse_domain_keys(domain: str, text: str) -> DomainKeys:
    try:
        data = json.loads(text)
    except ValueError:
        raise MalformedKeys("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("selectors"), list) or not isinstance(data.get("retired", []), list):
        raise MalformedKeys("not an object of selectors and retired names")
    selectors = []
    for entry in data["selectors"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("selector"), str) or not isinstance(entry.get("privateKey"), str):
            raise MalformedKeys("a selector without its name or private key")
        if not _SELECTOR.fullmatch(entry["selector"]):
            raise MalformedKeys("a selector's name is not a DNS label (a-z, 0-9, -)")
        if entry.get("state") not in (PUBLISHED, SIGNING, RETIRING):
            raise MalformedKeys(f"selector {entry['selector']} has no state of {PUBLISHED}, {SIGNING} or {RETIRING}")
        selector = DkimSelector(entry["selector"], SecretStr(entry["privateKey"]), _parse_time(entry, "created", True),  # type: ignore[arg-type]
                                entry["state"], _parse_time(entry, "live"), _parse_time(entry, "since"),
                                _parse_time(entry, "confirmed"))
        try:
            public_key_of(selector.private_key)
        except (ValueError, TypeError):
            raise MalformedKeys(f"selector {selector.name}'s private key is not an unencrypted PEM key") from None
        selectors.append(selector)
    if [s.state for s in selectors].count(SIGNING) != 1:
        raise MalformedKeys("not exactly one signing selector")
    if any([s.state for s in selectors].count(state) > 1 for state in (PUBLISHED, RETIRING)):
        raise MalformedKeys("more than one selector published or retiring (one rotation at a time)")
    return DomainKeys(domain, tuple(selectors), tuple(str(name) for name in data.get("retired", [])))
