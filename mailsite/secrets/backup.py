"""The backups' two secrets: restic's repository password (made by `secrets init`) and the
storage's keys (the provider's, stored by `secrets backup-credentials`). The primary's image
carries both as root-only files; nothing else ever holds them in clear."""

from __future__ import annotations

import json
import re
import secrets as random

from pydantic import SecretStr

from ..model import BackupSecrets
from .store import CURRENT, SecretStore, SecretVersion, secret_error

# What S3-compatible providers hand out (AWS: 20 capitals and digits, 40 of base64; Vultr and
# others alike), and nothing a shell or a file of KEY='value' lines could read as its own.
ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
SECRET_ACCESS_KEY = re.compile(r"[A-Za-z0-9/+=._~-]{1,256}")
_INIT = "python -m mailsite secrets init --config <stack file>"
_STORE = "python -m mailsite secrets backup-credentials --config <stack file>"


def backup_password_id(stack: str) -> str:
    return f"mailsite/{stack}/backup/repository-password"


def backup_credentials_id(stack: str) -> str:
    return f"mailsite/{stack}/backup/storage-credentials"


def new_repository_password() -> str:
    # 256 bits: restic derives the repository's key from it with scrypt; no one types it.
    return random.token_urlsafe(32)


def credentials_problem(access_key_id: str, secret_access_key: str) -> str | None:
    """What is wrong with a pair of storage keys, never showing either; None if nothing."""
    if not ACCESS_KEY_ID.fullmatch(access_key_id):
        return "the access key id is not one (letters, digits and . _ ~ -, at most 128)"
    if not SECRET_ACCESS_KEY.fullmatch(secret_access_key):
        return "the secret access key is not one (letters, digits and / + = . _ ~ -, at most 256)"
    return None


def serialize_credentials(access_key_id: str, secret_access_key: str) -> str:
    return json.dumps({"accessKeyId": access_key_id, "secretAccessKey": secret_access_key}, separators=(",", ":"))


def _credentials(found: SecretVersion, secret_id: str) -> tuple[SecretStr, SecretStr]:
    try:
        stored = json.loads(found.value.get_secret_value())
        pair = (stored["accessKeyId"], stored["secretAccessKey"])
    except (ValueError, KeyError, TypeError):
        pair = None
    # Never the value: only what is wrong with it.
    if pair is None or not all(isinstance(part, str) for part in pair):
        raise secret_error(secret_id, f"malformed: not a JSON object of accessKeyId and secretAccessKey; store them again: {_STORE}")
    if (problem := credentials_problem(*pair)) is not None:
        raise secret_error(secret_id, f"malformed: {problem}; store them again: {_STORE}")
    return SecretStr(pair[0]), SecretStr(pair[1])


def backup_secrets(store: SecretStore, stack: str) -> BackupSecrets:
    """Both secrets as the primary's image carries them, or one line saying which is missing."""
    password_id, credentials_id = backup_password_id(stack), backup_credentials_id(stack)
    password = store.read(password_id, CURRENT)
    if password is None:
        raise secret_error(password_id, f"not in the secrets backend; backup.bucket is set, so create it with: {_INIT}")
    if not password.value.get_secret_value():
        raise secret_error(password_id, "is empty; restic opens no repository with it: restore its previous version in the backend")
    credentials = store.read(credentials_id, CURRENT)
    if credentials is None:
        raise secret_error(credentials_id, f"not in the secrets backend; backup.bucket is set, so store the bucket's access key with: {_STORE}")
    access_key_id, secret_access_key = _credentials(credentials, credentials_id)
    return BackupSecrets(password.value, password.version, access_key_id, secret_access_key, credentials.version)


def store_credentials(store: SecretStore, stack: str, access_key_id: str, secret_access_key: str) -> SecretVersion:
    """The storage's keys as the backup's current ones (a new version if there were some)."""
    secret_id = backup_credentials_id(stack)
    if (problem := credentials_problem(access_key_id, secret_access_key)) is not None:
        raise secret_error(secret_id, f"{problem}; nothing was stored")
    value = serialize_credentials(access_key_id, secret_access_key)
    if store.read(secret_id, CURRENT) is None:
        return store.create(secret_id, value, description="S3 access key of the mail backups' bucket (mailsite)")
    return store.put_current(secret_id, value)
