"""Where keys come from: the secrets backend named in the stack (an I/O edge).

Secret ids follow one scheme in every backend: `mailsite/<stack>/<host>/queue-key` per host and
`mailsite/<stack>/spamd-sync-key` per site. The file backend keeps AWS Secrets Manager's shape
(versions, and a label naming the current one) so that both behave alike.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from .keys import key_problem, new_key
from .model import HostSecrets, Site
from .problems import Problem, SiteConfigError

CURRENT = "AWSCURRENT"


@dataclass(frozen=True)
class SecretVersion:
    value: SecretStr
    version: str


def queue_key_id(stack: str, host: str) -> str:
    return f"mailsite/{stack}/{host}/queue-key"


def spamd_sync_key_id(stack: str) -> str:
    return f"mailsite/{stack}/spamd-sync-key"


class FileStore:
    """A directory (mode 0700) of secrets, each with versions (files mode 0600) and labels."""

    def __init__(self, root: Path):
        self.root = root

    def _dir(self, secret_id: str) -> Path:
        return self.root / secret_id

    def read(self, secret_id: str, label: str = CURRENT) -> SecretVersion | None:
        directory = self._dir(secret_id)
        try:
            labels = json.loads((directory / "labels.json").read_text())
            version = labels[label]
            value = (directory / "versions" / version).read_text().strip()
        except FileNotFoundError:
            return None
        except (KeyError, ValueError, OSError) as error:
            raise SiteConfigError([Problem("secret", secret_id, f"unreadable in the file backend ({type(error).__name__}); restore it or remove it and run secrets init")]) from None
        return SecretVersion(SecretStr(value), version)

    def create(self, secret_id: str, value: str) -> SecretVersion:
        directory = self._dir(secret_id)
        versions = directory / "versions"
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        versions.mkdir(parents=True, mode=0o700, exist_ok=True)
        version = uuid.uuid4().hex
        descriptor = os.open(versions / version, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(value + "\n")
        labels_tmp = directory / "labels.json.new"
        labels_tmp.write_text(json.dumps({CURRENT: version}) + "\n")
        labels_tmp.replace(directory / "labels.json")
        return SecretVersion(SecretStr(value), version)


def _checked(secret_id: str, found: SecretVersion | None) -> SecretVersion:
    if found is None:
        raise SiteConfigError([Problem("secret", secret_id, "not in the secrets backend; create it with: python -m mailsite secrets init --config <stack file>")])
    if (message := key_problem(found.value.get_secret_value())) is not None:
        raise SiteConfigError([Problem("secret", secret_id, f"malformed key: {message.split(';')[0]}; replace it")])
    return found


def _store(site: Site, base: Path) -> FileStore:
    backend = site.secrets.backend
    if backend == "file":
        return FileStore((base / os.path.expanduser(site.secrets.path)).resolve())
    raise SiteConfigError([Problem("mailsite:secrets.backend", backend, "not available in this version; use file")])


def site_secrets(site: Site, stack: str, base: Path) -> dict[str, HostSecrets]:
    """Each host's keys, read from the backend; `base` anchors a relative file-backend path."""
    if site.secrets.backend == "inline":
        sync = site.secrets.spamd_sync_key
        assert sync is not None, "validated by the model"
        return {
            host.name: HostSecrets(site.secrets.queue_keys[host.name], "inline", sync, "inline")
            for host in site.hosts
        }
    store = _store(site, base)
    sync_id = spamd_sync_key_id(stack)
    sync = _checked(sync_id, store.read(sync_id))
    result = {}
    for host in site.hosts:
        key_id = queue_key_id(stack, host.name)
        key = _checked(key_id, store.read(key_id))
        result[host.name] = HostSecrets(key.value, key.version, sync.value, sync.version)
    return result


def init_secrets(site: Site, stack: str, base: Path) -> list[str]:
    """Create every missing key; never touch one that exists. Returns the ids created."""
    if site.secrets.backend == "inline":
        return []
    store = _store(site, base)
    created = []
    for secret_id in [spamd_sync_key_id(stack)] + [queue_key_id(stack, h.name) for h in site.hosts]:
        if store.read(secret_id) is None:
            store.create(secret_id, new_key())
            created.append(secret_id)
    return created
