"""The file backend, the local default: a directory (0700) of secrets, versions in files (0600),
labels in a small JSON file per secret, written by rename so that a crash leaves old or new."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import uuid
from pathlib import Path

from pydantic import SecretStr

from ..dirs import private_directories
from ..problems import Problem, SiteConfigError
from .store import CURRENT, MAX_SECRET_BYTES, PENDING, PREVIOUS, SecretVersion, refuse_if_too_large, secret_error

# Versions are named by uuid4().hex; a label pointing at anything else is a damaged file, and
# never a path to follow.
_VERSION = re.compile(r"[0-9a-f]{32}")


# A version file holds a value and its newline; a FIFO or a device put in its place is refused, not
# waited on, and a longer file is refused, never cut short (a cut JSON object reads as a damaged one).
_MAX_FILE = MAX_SECRET_BYTES + 1
_OWNERS = {0, os.geteuid()}


class _TooLarge(ValueError):
    pass


def _read_private(path: Path) -> bytes:
    """A file of the store: written by this tool, so never a symbolic link, a pipe or a device."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY), "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError("not a regular file")
        content = b""
        while len(content) <= _MAX_FILE and (chunk := handle.read(_MAX_FILE + 1 - len(content))):
            content += chunk
        if len(content) > _MAX_FILE:
            raise _TooLarge()
        return content


def _unsafe(found: os.stat_result, sticky_allowed: bool) -> str | None:
    """Why another user could rename a directory's entries, if one could. In a sticky directory
    (/tmp) only an entry's owner may rename it."""
    if found.st_uid not in _OWNERS:
        return f"belongs to user {found.st_uid}, who could replace the keys in it"
    if found.st_mode & 0o022 and not (sticky_allowed and found.st_mode & stat.S_ISVTX):
        return f"is writable by others (mode {stat.S_IMODE(found.st_mode):o}), who could replace the keys in it"
    return None


class FileStore:
    def __init__(self, root: Path):
        self.root = root
        self._checked_git = False

    def _dir(self, secret_id: str) -> Path:
        return self.root / secret_id

    def _labels(self, secret_id: str) -> dict[str, str] | None:
        self._refuse_if_others_can_swap()
        path = self._dir(secret_id) / "labels.json"
        try:
            labels = json.loads(_read_private(path).decode("utf-8"))
        except FileNotFoundError:
            return None
        except NotADirectoryError as error:
            raise self._unusable(error) from None
        except (ValueError, OSError) as error:
            raise secret_error(secret_id, f"its labels ({path}) are unreadable ({type(error).__name__}); restore them from a backup") from None
        if not (isinstance(labels, dict) and all(isinstance(k, str) and isinstance(v, str) and _VERSION.fullmatch(v) for k, v in labels.items())):
            raise secret_error(secret_id, f"its labels ({path}) are damaged (not label: version pairs); restore them from a backup")
        return labels

    def _refuse_if_git_would_commit(self) -> None:
        """A store inside a git work tree that git does not ignore ends up in a commit (git add -A)."""
        existing = next(directory for directory in [self.root, *self.root.parents] if directory.is_dir())
        try:
            checked = subprocess.run(["git", "-C", str(existing), "check-ignore", "-q", "--", str(self.root / "mailsite")],
                                     capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return  # no git here: nothing to commit the keys with
        if checked.returncode == 1:  # 0: ignored; 128: not in a work tree
            raise SiteConfigError([Problem("mailsite:secrets.path", str(self.root), "is inside a git work tree and not ignored, so "
                                           "the keys would be committed; add it to .gitignore, or choose a directory outside the repository")])

    def _write(self, path: Path, text: str) -> None:
        """A file of the store: 0600 from its first byte, whatever the umask."""
        if not self._checked_git:
            self._refuse_if_git_would_commit()
            self._checked_git = True
        try:
            private_directories(path.parent)
            self._refuse_if_others_can_swap()
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
                os.fchmod(handle.fileno(), 0o600)
        except OSError as error:
            raise self._unusable(error) from None

    def _refuse_if_others_can_swap(self) -> None:
        """Keys baked into images come from here: a store that another user could replace (its
        directory or one above it writable by them) would let them choose the site's keys."""
        for directory in [self.root, *self.root.parents]:
            try:
                found = os.stat(directory)
            except FileNotFoundError:
                continue  # made 0700 by the first write
            except OSError as error:
                raise self._unusable(error) from None
            if (unsafe := _unsafe(found, sticky_allowed=directory != self.root)) is not None:
                raise SiteConfigError([Problem("mailsite:secrets.path", str(self.root), f"{directory} {unsafe}; "
                                               "choose a directory only you can write in (as ~/.mailsite/secrets is)")])

    def _unusable(self, error: OSError) -> SiteConfigError:
        return SiteConfigError([Problem("mailsite:secrets.path", str(self.root),
                                        f"cannot keep the key store there ({error.strerror}); set a directory you can write")])

    def _write_labels(self, secret_id: str, labels: dict[str, str]) -> None:
        staging = self._dir(secret_id) / f"labels.json.{uuid.uuid4().hex}"
        self._write(staging, json.dumps(labels, sort_keys=True) + "\n")
        staging.replace(self._dir(secret_id) / "labels.json")

    def read(self, secret_id: str, label: str = CURRENT) -> SecretVersion | None:
        labels = self._labels(secret_id)
        if labels is None or label not in labels:
            return None
        try:
            value = _read_private(self._dir(secret_id) / "versions" / labels[label]).decode("utf-8").strip()
        except _TooLarge:
            raise secret_error(secret_id, f"version {labels[label]} is larger than the {MAX_SECRET_BYTES} bytes a secret may "
                                          "hold (Secrets Manager's limit, kept by the file backend); make its previous "
                                          "version current again") from None
        except (OSError, ValueError) as error:
            raise secret_error(secret_id, f"version {labels[label]} is unreadable ({type(error).__name__}); restore it from a backup") from None
        return SecretVersion(SecretStr(value), labels[label])

    def _new_version(self, secret_id: str, value: str) -> str:
        refuse_if_too_large(secret_id, value)
        version = uuid.uuid4().hex
        self._write(self._dir(secret_id) / "versions" / version, value + "\n")
        return version

    def create(self, secret_id: str, value: str, description: str = "") -> SecretVersion:
        if self._labels(secret_id) is not None:
            raise secret_error(secret_id, "already exists; rotate it instead of creating it")
        version = self._new_version(secret_id, value)
        self._write_labels(secret_id, {CURRENT: version})
        return SecretVersion(SecretStr(value), version)

    def put_pending(self, secret_id: str, value: str) -> SecretVersion:
        labels = self._labels(secret_id)
        if labels is None:
            raise secret_error(secret_id, "does not exist; create it with: python -m mailsite secrets init")
        version = self._new_version(secret_id, value)
        self._write_labels(secret_id, {**labels, PENDING: version})
        return SecretVersion(SecretStr(value), version)

    def put_current(self, secret_id: str, value: str) -> SecretVersion:
        labels = self._labels(secret_id)
        if labels is None or CURRENT not in labels:
            raise secret_error(secret_id, "does not exist; create it first")
        version = self._new_version(secret_id, value)
        # One rename moves both labels: a crash leaves the old CURRENT or the new one.
        self._write_labels(secret_id, {**labels, CURRENT: version, PREVIOUS: labels[CURRENT]})
        return SecretVersion(SecretStr(value), version)

    def promote(self, secret_id: str) -> None:
        labels = self._labels(secret_id) or {}
        if PENDING not in labels:
            raise secret_error(secret_id, "has no pending version to promote")
        self._write_labels(secret_id, {CURRENT: labels[PENDING], PREVIOUS: labels[CURRENT]})

    def discard_pending(self, secret_id: str) -> None:
        self.unlabel(secret_id, PENDING)

    def label(self, secret_id: str, label: str, version: str) -> None:
        labels = self._labels(secret_id) or {}
        if not (self._dir(secret_id) / "versions" / version).is_file():
            raise secret_error(secret_id, f"has no version {version}")
        self._write_labels(secret_id, {**labels, label: version})

    def unlabel(self, secret_id: str, label: str) -> None:
        labels = self._labels(secret_id) or {}
        if labels.pop(label, None) is not None:
            self._write_labels(secret_id, labels)
