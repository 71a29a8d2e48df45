"""Where keys come from: the secrets backend named in the stack (an I/O edge).

Secret ids follow one scheme in every backend: `mailsite/<stack>/<host>/queue-key` per host,
`mailsite/<stack>/spamd-sync-key` and `mailsite/<stack>/password-hashes` (the mailbox users'
bcrypt hashes, a JSON object of user: hash) per site, `mailsite/<stack>/dkim/<domain>` (the domain's
DKIM selectors and their private keys: mailsite.dkim) per domain, and with backups on
`mailsite/<stack>/backup/repository-password` (restic's, made by secrets init) and
`mailsite/<stack>/backup/storage-credentials` (the bucket's keys, a JSON object stored by
`secrets backup-credentials`: mailsite.secrets.backup). The file backend keeps AWS Secrets Manager's shape
(versions, and a label naming the current one) so that both behave alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from pydantic import SecretStr

from .backup import backup_credentials_id, backup_password_id, backup_secrets, new_repository_password
from ..dkim import DomainKeys, MalformedKeys, first_keys, own_mail_domain, parse_domain_keys, serialize_domain_keys
from ..keys import key_problem, new_key
from ..model import HostSecrets, Site
from ..passwords import is_password_hash
from ..problems import show
from .file import FileStore
from .store import CURRENT, PENDING, PREVIOUS, SecretStore, SecretVersion, host_label, secret_error

__all__ = ["CURRENT", "PENDING", "PREVIOUS", "FileStore", "backup_credentials_id", "backup_password_id", "SecretStore", "SecretVersion", "dkim_keys_id", "domain_keys",
           "host_label", "host_store", "init_secrets", "site_dkim_keys", "password_hashes", "password_hashes_id", "queue_key_id", "site_secrets", "spamd_sync_key_id"]


def queue_key_id(stack: str, host: str) -> str:
    return f"mailsite/{stack}/{host}/queue-key"


def spamd_sync_key_id(stack: str) -> str:
    return f"mailsite/{stack}/spamd-sync-key"


def password_hashes_id(stack: str) -> str:
    return f"mailsite/{stack}/password-hashes"


def dkim_keys_id(stack: str, domain: str) -> str:
    return f"mailsite/{stack}/dkim/{domain}"


def domain_keys(store: SecretStore, stack: str, domain: str) -> tuple[DomainKeys, SecretVersion] | None:
    """A domain's DKIM selectors as stored now (None: none yet)."""
    secret_id = dkim_keys_id(stack, domain)
    found = store.read(secret_id, CURRENT)
    if found is None:
        return None
    try:
        return parse_domain_keys(domain, found.value.get_secret_value()), found
    except MalformedKeys as error:
        # Never the value: only what is wrong with it.
        raise secret_error(secret_id, f"malformed DKIM keys ({error}); make its previous version current again in the backend") from None


def _site_dkim_keys(store: SecretStore, site: Site, stack: str) -> dict[str, DomainKeys]:
    found = {}
    for domain in site.domains:
        stored = domain_keys(store, stack, domain)
        if stored is None:
            raise secret_error(dkim_keys_id(stack, domain), "not in the secrets backend; create it with: "
                                                             "python -m mailsite secrets init --config <stack file>")
        found[domain] = stored[0]
    return found


def site_dkim_keys(site: Site, stack: str, base: Path) -> dict[str, DomainKeys]:
    """Every domain's DKIM selectors, by domain: the program publishes each one's record. The
    inline backend (tests) keeps none: its site signs nothing."""
    if site.secrets.backend == "inline":
        return {}
    return _site_dkim_keys(host_store(site, base), site, stack)


def _checked(secret_id: str, found: SecretVersion | None) -> SecretVersion:
    if found is None:
        raise secret_error(secret_id, "not in the secrets backend; create it with: python -m mailsite secrets init --config <stack file>")
    if (message := key_problem(found.value.get_secret_value())) is not None:
        # Never the value: only what is wrong with it.
        raise secret_error(secret_id, f"malformed key: it {message.split(';')[0]}; rotate it to replace it")
    return found


def host_store(site: Site, base: Path) -> SecretStore:
    """The backend the stack names; `base` anchors a relative file-backend path."""
    secrets = site.secrets
    if secrets.backend == "aws-secretsmanager":
        from .aws import AwsStore  # boto3 is loaded only by stacks that use it

        return AwsStore(secrets.region, secrets.profile, secrets.endpoint_url)
    return FileStore((base / os.path.expanduser(secrets.path)).resolve())


def _in_use(store: SecretStore, secret_id: str) -> SecretVersion:
    """The version a new image carries: PENDING while a rotation is under way, else CURRENT."""
    return _checked(secret_id, store.read(secret_id, PENDING) or store.read(secret_id, CURRENT))


def password_hashes(store: SecretStore, stack: str, every_entry: bool = True) -> tuple[dict[str, str], SecretVersion | None]:
    """Every stored hash by user name, and the version they are in; none yet is ({}, None): users
    then receive mail but cannot log in, which is how a new site starts. Not `every_entry`: for
    `user passwd`, which sets one entry and keeps the others as they are, so that it can mend a
    malformed one whatever the others hold."""
    secret_id = password_hashes_id(stack)
    found = store.read(secret_id, CURRENT)
    if found is None:
        return {}, None
    try:
        hashes = json.loads(found.value.get_secret_value())
    except ValueError:
        hashes = None
    # Never the value, nor a user's entry: only what is wrong with them.
    if not (isinstance(hashes, dict) and all(isinstance(user, str) and isinstance(hashed, str) for user, hashed in hashes.items())):
        raise secret_error(secret_id, "malformed: not a JSON object of user name: bcrypt hash; make its previous "
                                      "version current again in the backend, or delete it and set each password anew")
    if every_entry:
        _refuse_malformed_entries(secret_id, hashes)
    return hashes, found


def _refuse_malformed_entries(secret_id: str, hashes: dict[str, str]) -> None:
    if bad := sorted(user for user, hashed in hashes.items() if not is_password_hash(hashed)):
        raise secret_error(secret_id, f"malformed: the entry of {show(bad[0])} is not a bcrypt ($2b$) hash; set that "
                                      f"password again: python -m mailsite user passwd {show(bad[0])} --config <stack file>")


def site_secrets(site: Site, stack: str, base: Path, store: SecretStore | None = None) -> dict[str, HostSecrets]:
    """Each host's keys, read from the backend; `base` anchors a relative file-backend path.
    `store`: the backend already opened (doctor's), in place of the one `base` finds."""
    if site.secrets.backend == "inline":
        sync = site.secrets.spamd_sync_key
        assert sync is not None, "validated by the model"
        return {
            host.name: HostSecrets(site.secrets.queue_keys[host.name], "inline", sync, "inline")
            for host in site.hosts
        }
    store = store or host_store(site, base)
    sync_id = spamd_sync_key_id(stack)
    current_sync = _checked(sync_id, store.read(sync_id, CURRENT))
    result = {}
    for host in site.hosts:
        key = _in_use(store, queue_key_id(stack, host.name))
        # The sync key is the site's; during its rollout a host that was rolled carries the new one.
        rolled = store.read(sync_id, host_label(host.name))
        host_sync = _checked(sync_id, rolled) if rolled else current_sync
        result[host.name] = HostSecrets(key.value, key.version, host_sync.value, host_sync.version)
    # The primary signs every domain (rspamd); a backup signs its own mail (filter-dkimsign) and
    # carries one key, that of the site domain its MX name lies in (none when it lies in none).
    domain_keys = _site_dkim_keys(store, site, stack)
    signing = tuple(keys.signing_key() for keys in domain_keys.values())
    result[site.primary.name] = replace(result[site.primary.name], dkim_keys=signing)
    for host in site.backups:
        if (domain := own_mail_domain(site, host)) is not None:
            result[host.name] = replace(result[host.name], dkim_keys=(domain_keys[domain].signing_key(),))
    # Only the primary authenticates (IMAP, submission); a backup's image holds no hash. Users
    # since removed from the stack are left out: they can no longer log in.
    # Only their entries are checked: user passwd refuses a user who has left the stack, so it could
    # not mend a damaged entry of theirs, and the image never carries it.
    hashes, version = password_hashes(store, stack, every_entry=False)
    if version is not None:
        primary = site.primary.name
        carried = {user: hashes[user] for user in site.recipients.users if user in hashes}
        _refuse_malformed_entries(password_hashes_id(stack), carried)
        result[primary] = replace(
            result[primary],
            password_hashes={user: SecretStr(hashed) for user, hashed in carried.items()},
            password_hashes_version=version.version,
        )
    if site.backup.enabled:
        result[site.primary.name] = replace(result[site.primary.name], backup=backup_secrets(store, stack))
    return result


def init_secrets(site: Site, stack: str, base: Path) -> list[str]:
    """Create every missing key; never touch one that exists. Returns the ids created."""
    if site.secrets.backend == "inline":
        return []
    store = host_store(site, base)
    created = []
    for secret_id in [spamd_sync_key_id(stack)] + [queue_key_id(stack, h.name) for h in site.hosts]:
        if store.read(secret_id) is None:
            store.create(secret_id, new_key())
            created.append(secret_id)
    now = datetime.now(timezone.utc)
    for domain in site.domains:
        secret_id = dkim_keys_id(stack, domain)
        if store.read(secret_id) is None:
            keys = first_keys(domain, site.dkim.selector_prefix, site.dkim.key_bits, now)
            store.create(secret_id, serialize_domain_keys(keys), description=f"DKIM keys of {domain} (mailsite)")
            created.append(secret_id)
    # The storage's keys are the storage provider's, stored by `secrets backup-credentials`.
    if site.backup.enabled and store.read(password_id := backup_password_id(stack)) is None:
        store.create(password_id, new_repository_password(), description="restic repository password of the mail backups (mailsite)")
        created.append(password_id)
    return created
