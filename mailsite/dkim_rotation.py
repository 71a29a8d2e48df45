"""Rotating a domain's DKIM key with overlapping selectors, so that no signed message ever fails to
verify: a new selector is published while the old one signs; once resolvers can have it (the
record's TTL after it was first seen in DNS) the new one signs and the old one stays published;
once every host that signs the domain (the primary, and each backup whose MX name lies in it: its
own mail) is seen signing with the new one, the old one stays published for dkim.retireAfterDays
more (mail in flight, a receiver checking again later), then is withdrawn.

Each step is one new version of the domain's one secret (mailsite.dkim), holding every selector's
state and the times that decide the next step, so running the command again goes on from where
it stands and a crash leaves a step done or not done. The steps that change DNS or the signing
hosts' images are made by `pulumi up`: the command says which up comes next and what it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable, Literal

from .dkim import (PUBLISHED, RETIRING, SIGNING, DkimSelector, DomainKeys, dkim_record_text, new_selector, serialize_domain_keys,
                   signing_hosts)
from .model import Host, Site
from .secrets import SecretStore, dkim_keys_id, domain_keys
from .secrets.store import secret_error

# TXT texts served at a name (each record's strings joined); None when DNS could not be asked.
Lookup = Callable[[str], "list[str] | None"]
# Which key a host's image signs a domain with ("selector/fingerprint", its key-versions line
# dkim-<domain>); None when the host cannot be asked.
SigningOn = Callable[[Host, str], "str | None"]


@dataclass
class DkimStep:
    domain: str
    # advanced: a step was taken; waiting: nothing to do before a time or an up; stopped: a
    # problem to fix first.
    outcome: Literal["advanced", "waiting", "stopped"]
    message: str


def _at(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def record_name(domain: str, selector: DkimSelector) -> str:
    return f"{selector.name}._domainkey.{domain}"


def rotate_domain(site: Site, stack: str, store: SecretStore, domain: str, now: datetime, lookup: Lookup,
                  signing_on: SigningOn, hurry: bool = False) -> DkimStep:
    """One domain's rotation, one step further from where its stored state says it stands."""
    secret_id = dkim_keys_id(stack, domain)
    stored = domain_keys(store, stack, domain)
    if stored is None:
        raise secret_error(secret_id, "not in the secrets backend; create it with: python -m mailsite secrets init --config <stack file>")
    keys = stored[0]
    up = f"`pulumi up --stack {stack}`"
    signers = ", ".join(host.name for host in signing_hosts(site, domain))

    def save(changed: DomainKeys) -> None:
        store.put_current(secret_id, serialize_domain_keys(changed))

    new, old = keys.in_state(PUBLISHED), keys.in_state(RETIRING)
    if old is not None:
        return _retire(site, keys, old, now, signing_on, hurry, save, up)
    if new is None:
        taken = [s.name for s in keys.selectors] + list(keys.retired)
        made = new_selector(site.dkim.selector_prefix, site.dkim.key_bits, now, taken, PUBLISHED)
        save(keys.with_selectors(*keys.selectors, made))
        return DkimStep(domain, "advanced", f"{domain}: new key {made.name} made, not signing yet. Run {up}: it publishes "
                                            f"{record_name(domain, made)} (DNS only, no VM is replaced); then this command again")
    if new.live is None:
        texts = lookup(record_name(domain, new))
        if texts is None:
            return DkimStep(domain, "stopped", f"{domain}: could not ask DNS for {record_name(domain, new)}; run this command "
                                               "again where DNS answers")
        if dkim_record_text(new.public_key) not in texts:
            return DkimStep(domain, "waiting", f"{domain}: {record_name(domain, new)} is not in DNS yet. Run {up} to "
                                               "publish it, then this command again")
        new = replace(new, live=now)
        keys = keys.updated(keys.in_state(PUBLISHED), new)  # type: ignore[arg-type]
        save(keys)
    ttl = timedelta(seconds=site.dns.ttl)
    assert new.live is not None
    if now < new.live + ttl and not hurry:
        return DkimStep(domain, "waiting", f"{domain}: {record_name(domain, new)} is in DNS since {_at(new.live)}; a resolver "
                                           f"may still answer without it until {_at(new.live + ttl)} (dns.ttl, "
                                           f"{site.dns.ttl} s). Run this command again then to sign with it (--now "
                                           "signs at once, and mail to a receiver whose resolver lacks it fails DKIM)")
    signing = keys.signing
    save(keys.with_selectors(*(replace(s, state=SIGNING, since=now) if s.name == new.name else
                               replace(s, state=RETIRING, since=now) if s.name == signing.name else s
                               for s in keys.selectors)))
    return DkimStep(domain, "advanced", f"{domain}: {new.name} signs from the next {up}, which replaces the hosts that sign "
                                        f"{domain} ({signers}) alone: their images carry the new key (DNS stays as it is); "
                                        f"{signing.name} stays published. Then run this command again")


def _retire(site: Site, keys: DomainKeys, old: DkimSelector, now: datetime, signing_on: SigningOn,
            hurry: bool, save: Callable[[DomainKeys], None], up: str) -> DkimStep:
    domain, new = keys.domain, keys.signing
    signers = signing_hosts(site, domain)
    if old.confirmed is None:
        # Every host that signs the domain, not the primary alone: a backup whose image still
        # carries the old key signs its bounces with it, which would fail once it is withdrawn.
        for host in signers:
            running = signing_on(host, domain)
            if running is None:
                return DkimStep(domain, "stopped", f"{domain}: could not ask {host.name} which key it signs with; {old.name} "
                                                   "stays published. Run this command again once it answers")
            if running != f"{new.name}/{new.fingerprint}":
                return DkimStep(domain, "waiting", f"{domain}: {host.name} still signs with {running.split('/')[0]} (its "
                                                   f"image predates the switch to {new.name}). Run {up}, then this command again")
        old = replace(old, confirmed=now)
        keys = keys.updated(keys.in_state(RETIRING), old)  # type: ignore[arg-type]
        save(keys)
    assert old.confirmed is not None
    until = old.confirmed + timedelta(days=site.dkim.retire_after_days)
    if now < until and not hurry:
        return DkimStep(domain, "waiting", f"{domain}: {', '.join(h.name for h in signers)} sign with {new.name} since "
                                           f"{_at(old.confirmed)}; {old.name} "
                                           f"stays published until {_at(until)} (dkim.retireAfterDays) so that mail it "
                                           "signed still verifies. Run this command again then to withdraw it")
    save(keys.with_selectors(*(s for s in keys.selectors if s.name != old.name), retired=[old.name]))
    return DkimStep(domain, "advanced", f"{domain}: {old.name} retired. Run {up}: it withdraws "
                                        f"{old.name}._domainkey.{domain} (DNS only). The rotation is done; "
                                        "the next run starts another")


def dns_lookup(nameserver: str | None = None, port: int = 53, timeout: float = 10) -> Lookup:
    """TXT lookups through this machine's resolver, or one name server (the lab's)."""
    import dns.exception
    import dns.resolver

    def lookup(name: str) -> list[str] | None:
        try:
            resolver = dns.resolver.Resolver(configure=nameserver is None)
            if nameserver is not None:
                resolver.nameservers, resolver.port = [nameserver], port
            answer = resolver.resolve(name, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException:
            return None
        # A long record is served as several strings: its text is them joined.
        return [b"".join(record.strings).decode("ascii", "replace") for record in answer]

    return lookup


def rotate_dkim(site: Site, stack: str, store: SecretStore, now: Callable[[], datetime], lookup: Lookup,
                signing_on: SigningOn, only: str | None = None, hurry: bool = False,
                report: Callable[[DkimStep], None] = print) -> bool:
    """Every domain (or one) a step further; False when one could not go on."""
    ok = True
    for domain in [d for d in site.domains if only is None or d == only]:
        step = rotate_domain(site, stack, store, domain, now(), lookup, signing_on, hurry)
        report(step)
        ok = ok and step.outcome == "advanced"
    return ok
