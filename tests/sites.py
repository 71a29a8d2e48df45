"""Stack settings for tests: the example stack, and sites of other sizes made by config alone."""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import replace
from pathlib import Path

from pydantic import SecretStr

from mailsite.config import load_site, read_stack_settings
from mailsite.dkim import own_mail_domain
from mailsite.local import REDACTED
from mailsite.model import DkimKey, HostAddresses, HostSecrets, Site
from mailsite.problems import SiteConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "Pulumi.example.yaml"


def example_settings() -> dict:
    return copy.deepcopy(_example_as_read())


@functools.cache
def _example_as_read() -> dict:
    # Read once per test process: the YAML reader takes about 0.1 s a read, and hundreds of tests
    # (and every hypothesis example) start from the example stack; each gets its own deep copy.
    return read_stack_settings(EXAMPLE)


def sized_settings(count: int) -> dict:
    """The example stack with `count` hosts: mx1 primary, the rest backups, addresses in order."""
    settings = example_settings()
    settings["hosts"] = [
        {
            "name": f"mx{n}",
            "role": "primary" if n == 1 else "backup",
            "ipv4": f"192.0.2.{9 + n}",
            "ipv6": f"2001:db8::{10 * n}",
        }
        for n in range(1, count + 1)
    ]
    return settings


def fake_key(label: str) -> str:
    """A valid, obviously fake key, fixed per label so golden files stay put."""
    return hashlib.sha256(f"mailsite test {label}".encode()).hexdigest()[:32]


def fake_secrets(site: Site) -> dict[str, HostSecrets]:
    """Keys fixed per host; on the primary, every user's password hash and DKIM key as <redacted>,
    as a review render shows them: golden files hold no hash or private key, not even a test one's."""
    sync = SecretStr(fake_key("spamd-sync"))
    secrets = {h.name: HostSecrets(SecretStr(fake_key(h.name)), f"test-{h.name}", sync, "test-sync") for h in site.hosts}
    secrets[site.primary.name] = replace(
        secrets[site.primary.name],
        password_hashes={user: SecretStr(REDACTED) for user in site.recipients.users},
        password_hashes_version="test-passwords",
        # A DKIM key per domain, as a review render shows them: golden files hold no private key.
        dkim_keys=tuple(DkimKey(domain, "mailsite20261126", SecretStr(REDACTED), fake_key(f"dkim {domain}")[:12]) for domain in site.domains),
    )
    # A backup carries the key of the site domain its MX name lies in (it signs its own mail).
    for host in site.backups:
        if (domain := own_mail_domain(site, host)) is not None:
            secrets[host.name] = replace(secrets[host.name], dkim_keys=(
                DkimKey(domain, "mailsite20261126", SecretStr(REDACTED), fake_key(f"dkim {domain}")[:12]),))
    return secrets


def addresses(site: Site) -> dict[str, HostAddresses]:
    return {h.name: HostAddresses(h.ipv4, h.ipv6) for h in site.hosts}


def site_of(settings: dict) -> Site:
    return load_site(settings)


def refusal_lines(settings: dict) -> list[str]:
    """The lines the tool would print for these settings (none: accepted)."""
    try:
        site_of(settings)
    except SiteConfigError as error:
        return [str(problem) for problem in error.problems]
    return []
