"""acme-client(1): every MX's certificate for its MX name, and on the primary the MTA-STS names'
certificates, from the site's CA (acme.directory) over http-01, which httpd answers. Not a
daemon, but a unit like one: its configuration, the job that renews and hands each certificate to
the daemons that use it, and the job's crontab lines.

Where its state lives (DESIGN: rendered, secret or state): the configuration and the job are
rendered; the account key, the certificates and their keys are state, made on the host. The
primary keeps them on the mail volume (its job saves them after each change, its rc.securelevel
puts them back before the daemons start), so a replaced primary asks the CA for nothing. A
backup has no volume: its replacement asks for one certificate for its one name
(docs/operating.md, Certificates, has the CA's limits)."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import STATE_MOUNT, Host, Site
from ..mta_sts import policy_hosts
from ..templates import RenderedFile, render_template
from .base import ConfigTest, Daemon, HostContext

CONFIG = "etc/acme-client.conf"
JOB = "usr/local/sbin/mailsite-certificates"
# acme-client's default challengedir, which OpenBSD's base creates (root:daemon 0755), and the
# same directory inside httpd's chroot (/var/www): httpd.conf's root "/acme".
CHALLENGEDIR = "/var/www/acme"
# The account key where OpenBSD's own example puts it (/etc/acme is base's, 0700 root).
ACCOUNT_KEYS = "/etc/acme"
# Below the mail volume: the primary's account key, certificates and keys, at their own paths.
ACME_STATE = f"{STATE_MOUNT}/acme"
# The most names one certificate may have at Let's Encrypt; the MTA-STS names come in
# certificates of at most this many.
NAMES_PER_CERTIFICATE = 100


@dataclass(frozen=True)
class Certificate:
    """One domain block of acme-client.conf: a certificate, the names it is for, where it and its
    key live, and the commands that make its daemons take a new one."""

    handle: str  # acme-client's name for it, also its first name (the subject's common name)
    names: tuple[str, ...]
    certificate: str
    key: str
    purpose: str
    refresh: tuple[str, ...]

    @property
    def alternative_names(self) -> tuple[str, ...]:
        return self.names[1:]


def _uses(site: Site, host: Host) -> tuple[str, ...]:
    """How each daemon on the host that offers the MX certificate takes a new one: smtpd and
    spamd read it only when they start (smtpd has no reload; spamd's -C/-K), Dovecot again on a
    reload. (httpd offers only the MTA-STS certificates.)"""
    from . import daemons_on  # the registry imports this module

    running = {daemon.name for daemon in daemons_on(site, host)}
    commands = [f"rcctl restart {name}" for name in ("smtpd", "spamd") if name in running]
    return tuple(commands + [f"rcctl reload {name}" for name in ("dovecot",) if name in running])


def mta_sts_names(site: Site, host: Host) -> list[tuple[str, ...]]:
    """The MTA-STS names the host serves (the primary alone), in certificates' worth."""
    if not host.is_primary:
        return []
    names = policy_hosts(site)
    return [tuple(names[i : i + NAMES_PER_CERTIFICATE]) for i in range(0, len(names), NAMES_PER_CERTIFICATE)]


def certificates(site: Site, host: Host) -> list[Certificate]:
    """The host's certificates: its MX name's, at the paths smtpd, spamd and Dovecot read
    (tls.certificate and tls.key), and on the primary the MTA-STS names', which httpd alone uses."""
    found = [Certificate(host.mx_name, (host.mx_name,), site.tls.certificate_for(host), site.tls.key_for(host),
                         "The host's MX name: smtpd, spamd" + (", Dovecot" if host.is_primary else "") + " and the relays "
                         "between the MXes verify it.", _uses(site, host))]
    for names in mta_sts_names(site, host):
        found.append(Certificate(names[0], names, site.tls.certificate_named(names[0]), site.tls.key_named(names[0]),
                                 "MTA-STS policy hosts, served by httpd over https.", ("rcctl reload httpd",)))
    return found


def account_key(site: Site) -> str:
    return f"{ACCOUNT_KEYS}/{site.acme.authority}-privkey.pem"


def render_acme_client_conf(site: Site, host: Host) -> str:
    return render_template(
        "acme-client/acme-client.conf.j2",
        mx_name=host.mx_name,
        authority=site.acme.authority,
        directory=site.acme.directory,
        account_key=account_key(site),
        contact=site.acme.contact,
        certificates=certificates(site, host),
        challengedir=CHALLENGEDIR,
    )


def kept_on_volume(site: Site, host: Host) -> list[str]:
    """What the primary keeps on its mail volume: the account key, then each key with its
    certificate."""
    return [account_key(site)] + [path for c in certificates(site, host) for path in (c.key, c.certificate)]


def render_job(site: Site, host: Host) -> str:
    return render_template(
        "acme-client/mailsite-certificates.j2",
        mx_name=host.mx_name,
        certificates=certificates(site, host),
        state=ACME_STATE if host.is_primary else None,
        kept=kept_on_volume(site, host),
        mount_point=STATE_MOUNT,
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    site, host = context.site, context.host
    return {
        CONFIG: RenderedFile(render_acme_client_conf(site, host)),
        JOB: RenderedFile(render_job(site, host), 0o755),
    }


def crontab(context: HostContext) -> str:
    return render_template("acme-client/crontab.j2", job=f"/{JOB}")


acme = Daemon(
    "acme-client",
    files=files,
    crontab=crontab,
    # acme-client -n is the bake's (OpenBSD only); here the job's shell grammar.
    configtests=(ConfigTest("sh -n", JOB),),
)
