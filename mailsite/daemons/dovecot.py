"""dovecot(1): the primary's mailboxes: IMAPS for the users, LMTP for smtpd's deliveries, one
Maildir per user on the mail volume, owned by the one virtual mail user, and the site's Sieve
script filing mail rspamd marked as spam into Junk. Also the two files made from the users'
password hashes: Dovecot's passwd-file and smtpd's credentials table."""

from __future__ import annotations

import posixpath
import re
from typing import Mapping

from ..model import (
    JUNK_MAILBOX, LMTP_SOCKET, MAIL_UID, MAIL_USER, MAILBOXES, SPAM_HEADER, SUBADDRESS_DELIMITER, Host, HostAddresses, Site,
)
from ..service import ANYWHERE, RateLimit, Service
from ..templates import RenderedFile, UnsafeValue, render_template
from .base import ConfigTest, Daemon, HostContext, LabRun

# The users OpenBSD's package creates (its PLIST's @newuser): the auth process runs as the first,
# the login processes as the second.
INTERNAL_USER = "_dovecot"
LOGIN_USER = "_dovenull"

CONFIG = "etc/dovecot/dovecot.conf"
USERS = "etc/dovecot/users"
PASSWD = "etc/dovecot/passwd"
CREDENTIALS = "etc/mail/credentials"
MAIL_USER_FILE = "etc/mailsite/mail-user"
JUNK_SIEVE = "etc/dovecot/junk.sieve"
# Below each user's home (beside the Maildir, not in it): the compiled JUNK_SIEVE.
SIEVE_BINDIR = "sieve-bin"

# A hash is one word of neither grammar's separators: a ":" would start a passwd-file field of
# its own (a uid, a home), a blank a second value in smtpd's table. ($2b$ hashes never hold
# either; a review render's stand-in, <redacted>, neither.)
_ONE_WORD = re.compile(r"[^\s:]+")


def on_the_primary(site: Site, host: Host) -> bool:
    return host.is_primary  # the backups keep no mailboxes


def quota_rule(quota: str) -> str:
    """A quota as Dovecot 2.3's storage= reads it: a bare number there is kilobytes, while the
    model's is bytes, so bytes get their B."""
    return quota if quota[-1] in "KMG" else f"{quota}B"


def password_hashes(context: HostContext) -> list[tuple[str, str]]:
    """(user, bcrypt hash) of the users in the model who have set a password, in the model's order;
    a hash of a user no longer in the model is left out."""
    hashes = context.secrets.password_hashes
    found = []
    for name in context.site.recipients.users:
        if name in hashes:
            hashed = hashes[name].get_secret_value()
            if not _ONE_WORD.fullmatch(hashed):
                # Not shown: it is a secret, whatever else it is.
                raise UnsafeValue(f"the password hash of {name} holds a blank or a colon, so it is no bcrypt hash; set "
                                  f"the password again (python -m mailsite user passwd {name})")
            found.append((name, hashed))
    return found


def render_dovecot_conf(context: HostContext) -> str:
    site, host = context.site, context.host
    base_dir, lmtp_listener = posixpath.split(LMTP_SOCKET)
    return render_template(
        "dovecot/dovecot.conf.j2",
        mx_name=host.mx_name,
        base_dir=base_dir,
        lmtp_listener=lmtp_listener,
        internal_user=INTERNAL_USER,
        login_user=LOGIN_USER,
        certificate=site.tls.certificate_for(host),
        key=site.tls.key_for(host),
        passwd=f"/{PASSWD}",
        users=f"/{USERS}",
        mail_user=MAIL_USER,
        mail_uid=MAIL_UID,
        mailboxes=MAILBOXES,
        recipient_delimiter=SUBADDRESS_DELIMITER,
        quota=any(account.quota for account in site.recipients.accounts),
        junk=JUNK_MAILBOX,
        sieve_before=f"/{JUNK_SIEVE}",
        sieve_bindir=SIEVE_BINDIR,
    )


def render_users(site: Site) -> str:
    users = [
        {
            "name": account.name,
            "home": f"{MAILBOXES}/{account.name}",
            "fields": f"userdb_quota_rule=*:storage={quota_rule(account.quota)}" if account.quota else "",
        }
        for account in site.recipients.accounts
    ]
    return render_template("dovecot/users.j2", users=users, mail_uid=MAIL_UID)


def logins(context: HostContext) -> list[tuple[str, str, str]]:
    """(login name, user, hash): the names a user with a password logs in with, on IMAP and on
    submission alike: alice and alice@<each site domain>, no other domain."""
    return [(login, name, hashed) for name, hashed in password_hashes(context)
            for login in [name, *(f"{name}@{domain}" for domain in context.site.domains)]]


def files(context: HostContext) -> dict[str, RenderedFile]:
    names = logins(context)
    return {
        CONFIG: RenderedFile(render_dovecot_conf(context)),
        USERS: RenderedFile(render_users(context.site)),
        JUNK_SIEVE: RenderedFile(render_template("dovecot/junk.sieve.j2", spam_header=SPAM_HEADER[0],
                                                 spam_mark=SPAM_HEADER[1], junk=JUNK_MAILBOX)),
        PASSWD: RenderedFile(render_template("dovecot/passwd.j2", logins=names, owner=INTERNAL_USER), 0o600,
                             secret=True, owner=INTERNAL_USER),
        # smtpd's (listen ... auth <credentials>), made here from the same logins as passwd.
        CREDENTIALS: RenderedFile(render_template("dovecot/credentials.j2", logins=names), 0o600, secret=True),
        MAIL_USER_FILE: RenderedFile(render_template("dovecot/mail-user.j2", mail_user=MAIL_USER, mail_uid=MAIL_UID,
                                                     mailboxes=MAILBOXES)),
    }


# IMAP clients stay connected (IDLE, and a cache of several connections each: Thunderbird keeps
# five), so an office of users behind one NAT address holds far more than submission's 20 at once;
# past this the office would lose IMAP, submission and ssh for an hour. Password guessing is
# slowed by Dovecot itself (auth_failure_delay, and a penalty per failing address).
IMAPS_RATE_LIMIT = RateLimit(connections=300, new=60, seconds=10)


def services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    # A source that floods 993 lands in <bruteforce>, as one flooding submission does.
    return [Service("imaps", "tcp", 993, ANYWHERE, "mailbox access (IMAP over TLS)", rate_limited=True,
                    rate_limit=IMAPS_RATE_LIMIT)]


dovecot = Daemon(
    "dovecot",
    # From packages: the basics name it in rc.conf.local's one pkg_scripts line, and the image
    # installs the version images.packages.dovecot pins.
    package="dovecot",
    # Pigeonhole: the Sieve plugin the LMTP delivery runs (a plugin, no daemon of its own).
    packages=("dovecot-pigeonhole",),
    runs_on=on_the_primary,
    files=files,
    services=services,
    # doveconf -n knows every 2.3 setting by name and refuses the others (a 2.4 file among them).
    configtests=(ConfigTest("doveconf", CONFIG),),
    # From the "dovecot" root (2.3, as OpenBSD ships it), in the foreground; its log to stderr,
    # which the lab keeps (the lab has no syslog).
    lab=LabRun(("dovecot", "-F", "-c", f"/{CONFIG}", "-o", "log_path=/dev/stderr"), (993, "tcp"), config=f"/{CONFIG}",
               root="dovecot"),
)
