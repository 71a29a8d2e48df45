"""smtpd(8): the MTA on every MX (a backup relays to better MXes only, for the site's recipients
only); on the primary also the MSA, checking the users' passwords against the credentials table,
and the delivery into mailboxes, handed to Dovecot over LMTP."""

from __future__ import annotations

from typing import Mapping

from ..model import LMTP_SOCKET, MAIL_USER, Host, HostAddresses, Site
from ..service import ANYWHERE, Service
from ..templates import RenderedFile, render_template
from .base import ConfigTest, Daemon, HostContext, LabRun
from .dkimsign import USER as DKIMSIGN_USER, filter_command as dkimsign_filter, signing_key
from .rspamd import FILTER_COMMAND as RSPAMD_FILTER


def render_smtpd_conf(context: HostContext) -> str:
    site, host = context.site, context.host
    tls = {"certificate": site.tls.certificate_for(host), "key": site.tls.key_for(host)}
    dkimsign_key = signing_key(context)  # a backup's own mail; None on the primary (rspamd signs)
    return render_template(
        "smtpd/smtpd.conf.j2",
        mx_name=host.mx_name,
        role=host.role,
        preference=host.preference,
        primary=host.is_primary,
        relay_backup_mx=None if host.is_primary else site.relay_backup_mx(host),
        relay_source=context.own.ipv4,
        relay_verifies=site.acme.trusted,
        egress_interface=host.egress_interface,
        queue_ttl=site.queue.ttl,
        max_message_size=site.max_message_size,
        lmtp_socket=LMTP_SOCKET,
        tls=tls,
        rspamd_filter=RSPAMD_FILTER,
        dkimsign_filter=dkimsign_filter(dkimsign_key) if dkimsign_key else None,
        dkimsign_domain=dkimsign_key.domain if dkimsign_key else None,
        dkimsign_user=DKIMSIGN_USER,
    )


def render_queue_key_conf(context: HostContext) -> str:
    return render_template(
        "smtpd/queue-key.conf.j2",
        mx_name=context.host.mx_name,
        version=context.secrets.queue_key_version,
        queue_key=context.secrets.queue_key.get_secret_value(),
    )


def virtuals(site: Site) -> list[tuple[str, str]]:
    """The primary's virtual table: each recipient the site takes (the backups' list) and what
    smtpd expands it to. A user's address goes to the one virtual mail user, which delivers it
    over LMTP under that address (`rcpt-to`), so Dovecot files it in the user's mailbox; an alias
    or a catch-all goes to the user's address in the same domain, and then on as that address does;
    an alias onto an outside address is relayed there."""
    recipients = site.recipients
    table = []
    for address in site.valid_recipients():
        part, domain = address.rsplit("@", 1)
        if part in recipients.users:
            target = MAIL_USER
        else:
            target = recipients.aliases[part] if part else recipients.catch_all[domain]
            if "@" not in target:
                target = f"{target}@{domain}"
        table.append((address, target))
    return table


def senders(site: Site) -> list[tuple[str, list[str]]]:
    """The MSA's senders table (`listen ... senders <sendas>`): each name a user logs in with
    (alice, alice@<each site domain>, as in the credentials table) and the addresses that user may
    send as: the site's addresses that reach the user's mailbox (the user's, the aliases onto the
    user, @domain for a catch-all domain) and no other, so an authenticated user cannot send as
    another user or as anyone outside the site."""
    recipients = site.recipients
    owned: dict[str, list[str]] = {user: [] for user in recipients.users}
    for address, target in virtuals(site):
        # An alias or catch-all goes to a user's address in the site, or outside it (no one's).
        user, _, domain = (address if target == MAIL_USER else target).rpartition("@")
        if user in owned and domain in site.domains:
            owned[user].append(address)
    return [(login, owned[user]) for user in recipients.users
            for login in [user, *(f"{user}@{domain}" for domain in site.domains)]]


def render_tables(site: Site, host: Host) -> dict[str, str]:
    """smtpd's tables: domains, aliases, and recipients (backup) or virtuals (primary)."""
    tables = {
        "etc/mail/domains": render_template("smtpd/domains.j2", domains=site.domains),
        "etc/mail/aliases": render_template("smtpd/aliases.j2", postmaster=f"postmaster@{site.domains[0]}"),
    }
    if host.is_primary:
        tables["etc/mail/virtuals"] = render_template("smtpd/virtuals.j2", virtuals=virtuals(site))
        tables["etc/mail/sendas"] = render_template("smtpd/sendas.j2", senders=senders(site))
    else:
        tables["etc/mail/recipients"] = render_template("smtpd/recipients.j2", recipients=site.valid_recipients())
    return tables


def files(context: HostContext) -> dict[str, RenderedFile]:
    tree = {
        "etc/mail/smtpd.conf": RenderedFile(render_smtpd_conf(context)),
        "etc/mail/queue-key.conf": RenderedFile(render_queue_key_conf(context), 0o600, secret=True),
    }
    for path, text in render_tables(context.site, context.host).items():
        tree[path] = RenderedFile(text)
    return tree


def services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    opened = [Service("smtp", "tcp", 25, ANYWHERE, "inbound mail (MTA)", greylisted=True)]
    if host.is_primary:
        # Only the primary is an MSA; a backup MX is an MTA and nothing else.
        opened += [
            Service("submission", "tcp", 587, ANYWHERE, "mail submission (MSA, STARTTLS + auth)", rate_limited=True),
            Service("smtps", "tcp", 465, ANYWHERE, "mail submission (MSA, TLS + auth)", rate_limited=True),
        ]
    return opened


def rc_conf_local(context: HostContext) -> str:
    return render_template("smtpd/rc.conf.local.j2")


smtpd = Daemon(
    "smtpd",
    files=files,
    services=services,
    rc_conf_local=rc_conf_local,
    # smtpd -n opens every table, include and pki file the config names, and resolves its
    # `listen on` interfaces: it is checked in a namespace shaped like the host (configtest).
    configtests=(ConfigTest("smtpd -n", "etc/mail/smtpd.conf"),),
    # OpenBSD's path; Debian's smtpd would look for /etc/smtpd.conf.
    lab=LabRun(("smtpd", "-d", "-f", "/etc/mail/smtpd.conf"), (25, "tcp"), config="/etc/mail/smtpd.conf"),
)
