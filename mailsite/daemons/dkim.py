"""DKIM signing on the primary: rspamd's dkim_signing module (its local.d file) and one key file per
site domain, the domain's current signing key from the secrets backend (mailsite.dkim). rspamd
itself, and the filter that hands it smtpd's mail, are mailsite/daemons/rspamd.py's."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..dkim import key_path
from ..templates import RenderedFile, UnsafeValue, render_template
from .base import Daemon, HostContext
from .dovecot import on_the_primary

CONFIG = "etc/rspamd/local.d/dkim_signing.conf"
# rspamd's workers run as this user (OpenBSD's package creates it) and read the keys when they sign.
RSPAMD_USER = "_rspamd"
# What the host hands smtpd itself (its own mail over lo0; the local socket, which filter-rspamd
# gives rspamd as 127.0.0.1): signed like a user's.
LOOPBACK = ("127.0.0.0/8", "::1")
# A selector and a domain go into a quoted UCL string and a path; the model and mailsite.dkim
# refuse anything else, this is the second line of defence.
NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class _Signing:
    domain: str
    selector: str
    path: str


def files(context: HostContext) -> dict[str, RenderedFile]:
    keys = context.secrets.dkim_keys
    signing = []
    for key in keys:
        if not (NAME.fullmatch(key.domain) and NAME.fullmatch(key.selector)):
            raise UnsafeValue("a DKIM domain or selector is not a DNS name")
        signing.append(_Signing(key.domain, key.selector, key_path(key.domain, key.selector)))
    # The longest first: a From: domain lying under two site domains is signed as the nearer one.
    longest_first = sorted((sign.domain for sign in signing), key=lambda domain: (-len(domain), domain))
    tree = {CONFIG: RenderedFile(render_template("dkim/dkim_signing.conf.j2", keys=signing, loopback=LOOPBACK,
                                                 longest_first=longest_first))}
    for key, sign in zip(keys, signing):
        # Read by rspamd's workers alone, after they dropped root; nothing writes it on the host.
        tree[sign.path] = RenderedFile(key.private_key.get_secret_value().strip() + "\n", 0o400, secret=True, owner=RSPAMD_USER)
    return tree


dkim = Daemon(
    "dkim",
    runs_on=on_the_primary,
    files=files,
)
