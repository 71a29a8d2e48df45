"""filter-dkimsign(8) on a backup MX: signs the host's own mail (cron's, root's, and smtpd's bounces
of mail it could not relay, all enqueued through the local socket) with the current key of the
site domain its MX name lies in, so that it passes DMARC as that domain's (relaxed alignment).
The primary signs with rspamd (mailsite/daemons/dkim.py); a backup runs no rspamd. smtpd.conf
puts the filter on the socket and lo0 listeners only: what a backup relays is never signed."""

from __future__ import annotations

from ..dkim import key_path, own_mail_domain
from ..model import DkimKey, Host, Site
from ..templates import RenderedFile, UnsafeValue, render_template
from .base import Daemon, HostContext
from .dkim import NAME

# OpenBSD's opensmtpd-filter-dkimsign installs it here (as filter-rspamd); smtpd.conf names it whole.
FILTER = "/usr/local/libexec/smtpd/filter-dkimsign"
# The package makes this user, and smtpd runs the filter as it (smtpd.conf(5)'s example): it alone
# reads the key.
USER = "_dkimsign"


def on_a_signing_backup(site: Site, host: Host) -> bool:
    # A backup whose MX name lies in no site domain has no key to sign with: its mail leaves unsigned.
    return not host.is_primary and own_mail_domain(site, host) is not None


def signing_key(context: HostContext) -> DkimKey | None:
    """The key a backup signs its own mail with: the one its image carries (site_secrets gives a
    backup the signing key of the site domain its MX name lies in, and none when it lies in none)."""
    keys = context.secrets.dkim_keys
    return keys[0] if keys and not context.host.is_primary else None


def filter_command(key: DkimKey) -> str:
    """smtpd.conf's proc-exec line, with the key's domain, selector and file."""
    if not (NAME.fullmatch(key.domain) and NAME.fullmatch(key.selector)):
        raise UnsafeValue("a DKIM domain or selector is not a DNS name")
    return render_template("dkimsign/command.j2", filter=FILTER, domain=key.domain, selector=key.selector,
                           key=key_path(key.domain, key.selector)).strip()


def files(context: HostContext) -> dict[str, RenderedFile]:
    key = signing_key(context)
    if key is None:
        return {}
    # Read by the filter alone, as its user; nothing writes it on the host.
    return {key_path(key.domain, key.selector): RenderedFile(key.private_key.get_secret_value().strip() + "\n", 0o400,
                                                             secret=True, owner=USER)}


dkimsign = Daemon(
    "dkimsign",
    # A program smtpd runs, no daemon of its own (no rc.d script).
    packages=("opensmtpd-filter-dkimsign",),
    runs_on=on_a_signing_backup,
    files=files,
)
