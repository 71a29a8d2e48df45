"""Rendering a stack file outside `pulumi up` (render, bake, diff): addresses from the file,
keys from the secrets backend."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from pydantic import SecretStr

from .config import load_site_file, stack_name
from .model import BackupSecrets, HostAddresses, HostSecrets, Site
from .problems import Problem, SiteConfigError
from .render import render_host
from .templates import HostTree
from .secrets import site_secrets

REDACTED = "<redacted>"
# Where a provider allocates addresses, a review diff shows stand-ins from the benchmarking range.
_STAND_IN = ipaddress.IPv4Address("198.18.0.1")


def fixed_addresses(site: Site, stand_ins: bool = False) -> dict[str, HostAddresses]:
    """Addresses written in the stack file; "allocate" ones exist only once the provider made them."""
    problems, addresses = [], {}
    for i, host in enumerate(site.hosts):
        ipv4, ipv6 = host.ipv4, host.ipv6
        if ipv4 == "allocate" and stand_ins:
            ipv4 = _STAND_IN + i
        for family, value in (("ipv4", ipv4), ("ipv6", ipv6)):
            if value == "allocate" and not (stand_ins and family == "ipv6"):
                problems.append(Problem(f"mailsite:hosts[{i}].{family}", "allocate",
                                        "rendering here needs a fixed address; set one, or render through pulumi up"))
        if isinstance(ipv4, ipaddress.IPv4Address):  # "allocate" is a problem above; the model refuses none
            addresses[host.name] = HostAddresses(ipv4, None if ipv6 == "allocate" else ipv6)
    if problems:
        raise SiteConfigError(problems)
    return addresses


def render_stack(config: Path, redacted: bool = False, secrets_base: Path | None = None) -> tuple[Site, dict[str, HostTree], dict[str, HostSecrets]]:
    """Every host's tree. Redacted: keys (DKIM's too) and password hashes replaced by <redacted>, versions kept
    where the backend answers (a reviewer's machine may not reach it; then they read "unknown")."""
    site = load_site_file(config)
    stack = stack_name(config)
    addresses = fixed_addresses(site, stand_ins=redacted)
    try:
        secrets = site_secrets(site, stack, secrets_base or config.resolve().parent)
    except SiteConfigError:
        if not redacted:
            raise
        secrets = {h.name: HostSecrets(SecretStr(""), "unknown", SecretStr(""), "unknown") for h in site.hosts}
        if site.backup.enabled:
            unknown = BackupSecrets(SecretStr(""), "unknown", SecretStr(""), SecretStr(""), "unknown")
            secrets[site.primary.name] = replace(secrets[site.primary.name], backup=unknown)
    if redacted:
        secrets = {
            name: HostSecrets(SecretStr(REDACTED), s.queue_key_version, SecretStr(REDACTED), s.spamd_sync_key_version,
                              {user: SecretStr(REDACTED) for user in s.password_hashes}, s.password_hashes_version,
                              tuple(replace(key, private_key=SecretStr(REDACTED)) for key in s.dkim_keys),
                              s.backup and replace(s.backup, repository_password=SecretStr(REDACTED),
                                                   access_key_id=SecretStr(REDACTED), secret_access_key=SecretStr(REDACTED)))
            for name, s in secrets.items()
        }
    trees = {host.name: render_host(site, host, addresses, secrets[host.name]) for host in site.hosts}
    return site, trees, secrets
