"""What every secrets backend offers: versions of a secret under AWS Secrets Manager's labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import SecretStr

from ..problems import Problem, SiteConfigError

# A rotation moves a new version through these, as Secrets Manager's own rotation does: made as
# PENDING, promoted to CURRENT once the host runs with it, the old one kept as PREVIOUS.
CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"

# The most a secret's value may hold, in bytes of UTF-8: Secrets Manager's limit on a SecretString,
# which the file backend keeps so that a site can move between them.
MAX_SECRET_BYTES = 65536


@dataclass(frozen=True)
class SecretVersion:
    value: SecretStr
    version: str


class SecretStore(Protocol):
    def read(self, secret_id: str, label: str = CURRENT) -> SecretVersion | None: ...

    def create(self, secret_id: str, value: str, description: str = ...) -> SecretVersion:
        """A new secret whose first version is CURRENT; the description is for whoever browses the
        backend (Secrets Manager shows it)."""

    def put_current(self, secret_id: str, value: str) -> SecretVersion:
        """A new version of an existing secret, CURRENT at once; the old CURRENT becomes PREVIOUS.
        For a secret no host has to switch to in step (passwords), unlike a rotated key."""

    def put_pending(self, secret_id: str, value: str) -> SecretVersion:
        """A new version of an existing secret, labelled PENDING."""

    def promote(self, secret_id: str) -> None:
        """PENDING becomes CURRENT; the old CURRENT becomes PREVIOUS."""

    def discard_pending(self, secret_id: str) -> None:
        """A rollback: the PENDING label goes, CURRENT stays as it was."""

    def label(self, secret_id: str, label: str, version: str) -> None:
        """Put a label of our own on a version (moving it from any other)."""

    def unlabel(self, secret_id: str, label: str) -> None:
        """Take a label of our own off, wherever it is."""


def host_label(host: str) -> str:
    """The label naming the version of a site-wide key one host's image carries during a rollout."""
    return f"mailsite-{host}"


def secret_error(secret_id: str, message: str) -> SiteConfigError:
    return SiteConfigError([Problem("secret", secret_id, message)])


def refuse_if_too_large(secret_id: str, value: str) -> None:
    """Said before writing, by both backends alike (Secrets Manager would refuse it less clearly)."""
    if (size := len(value.encode())) > MAX_SECRET_BYTES:
        raise secret_error(secret_id, f"a value of {size} bytes is past the {MAX_SECRET_BYTES} bytes a secret may hold "
                                      "(Secrets Manager's limit, kept by the file backend); nothing was written")
