"""Queue keys and the spamd sync key: how they are made and what a valid one looks like."""

from __future__ import annotations

import re
import secrets

# smtpd's queue encryption takes exactly 32 characters (crypto_setup rejects any other length);
# 16 random bytes written as hex is what `openssl rand -hex 16` gives and what smtpd.conf(5) suggests.
KEY_LENGTH = 32
_KEY = re.compile(r"[0-9a-f]{32}")  # with fullmatch: the whole value


def new_key() -> str:
    """A fresh key from the operating system's CSPRNG."""
    return secrets.token_hex(KEY_LENGTH // 2)


def key_problem(value: str) -> str | None:
    """What is wrong with a key, in words that never repeat the key itself; None if it is valid."""
    if len(value) != KEY_LENGTH:
        return f"is {len(value)} characters, must be exactly {KEY_LENGTH}; make one with: openssl rand -hex 16"
    if not _KEY.fullmatch(value):
        return "must be lower-case hex (0-9, a-f); make one with: openssl rand -hex 16"
    return None
