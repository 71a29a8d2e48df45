"""Mailbox users' passwords: what the site accepts as one, and the bcrypt hash it stores instead.

One `$2b$` hash serves both readers on the primary: smtpd's `auth <credentials>` table (crypt(3)
on OpenBSD and libxcrypt in the lab) and Dovecot's passwd-file as `{BLF-CRYPT}` (Dovecot ships its
own crypt_blowfish, which takes $2a$, $2b$ and $2y$).
"""

from __future__ import annotations

import re
import unicodedata

import bcrypt

# 2^12 rounds, python bcrypt's default (OWASP's floor is 10): about a third of a second on a small
# VM, paid once per IMAP or submission login (clients keep their connection), and for every guess
# by whoever steals an image's hashes.
COST = 12
MIN_LENGTH = 12
# bcrypt reads at most 72 bytes of a password and ignores the rest, so a longer one would let in
# anyone who knows its first 72 bytes; bcrypt 5 refuses to hash one.
MAX_BYTES = 72
# A shorter name inside a password is as likely chance as a choice ("al" in "metal").
MIN_NAME_IN_PASSWORD = 3

# $2b$ or $2y$, a two-digit cost bcrypt accepts, then 22 characters of salt and 31 of hash in
# bcrypt's base64 alphabet: the one shape both smtpd and Dovecot read.
_HASH = re.compile(r"\$2[by]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def hash_password(password: str) -> str:
    """The `$2b$` bcrypt hash of a password that password_problem accepts."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(COST)).decode("ascii")


def password_problem(user: str, password: str) -> str | None:
    """Why this password will not do for this user, as the end of a sentence with its fix; None
    when it will. Never quotes the password."""
    if not password:
        return "is empty; choose one of at least 12 characters"
    if any(unicodedata.category(char) == "Cc" for char in password):
        return ("holds a control character (a newline or tab, say), which a mail client cannot "
                "type; choose one without")
    if len(password.encode()) > MAX_BYTES:
        return (f"is longer than {MAX_BYTES} bytes, and bcrypt would check only its first "
                f"{MAX_BYTES}; choose a shorter one")
    if len(password) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters; choose a longer one (a few words will do)"
    if len(set(password)) == 1:
        return "is one character repeated; choose one a guesser would not try first"
    if len(user) >= MIN_NAME_IN_PASSWORD and user.lower() in password.lower():
        return f"contains the user name {user}; choose one without it"
    return None


def is_password_hash(value: str) -> bool:
    """Whether a stored value is a bcrypt hash as hash_password makes it (or `$2y$`, Dovecot's own
    spelling), so a wrong value in the backend is named before it reaches an image. By its shape:
    checking one costs a login's time."""
    return _HASH.fullmatch(value) is not None
