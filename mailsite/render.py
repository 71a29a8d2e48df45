"""Renderers: pure functions from the site model to each host's OpenBSD files.

Each daemon has one template in configs/ and one small function here that hands it plain values;
render_host() puts a host's files together as {path: RenderedFile}. No I/O beyond reading the
templates, no decisions the model already made.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import jinja2

from .firewall import (
    BRUTEFORCE_EXPIRE_EVERY_MINUTES, BRUTEFORCE_EXPIRY_SECONDS, BRUTEFORCE_TABLE, Service, inbound_services,
    rate_limited_ports,
)
from .model import Host, HostAddresses, HostSecrets, Site

TEMPLATES = Path(__file__).resolve().parent.parent / "configs"

BLACK_LIST_FILE = "/etc/mail/bgp-spamd.black"
BYPASS_LIST_FILE = "/etc/mail/bgp-spamd.bypass"
UPDATE_JOB = "usr/local/sbin/bgp-spamd-update"
# bgpd.conf's group of bgp-spamd route servers; the update job counts its sessions by this name.
ROUTE_SERVER_GROUP = "bgp-spamd"


@dataclass(frozen=True)
class RenderedFile:
    text: str
    mode: int = 0o644
    secret: bool = False  # holds a key: mode 0600, redacted wherever it is shown


@dataclass(frozen=True)
class LinuxDifferences:
    """What a host's files must do differently to run on Linux (the lab); empty for OpenBSD.

    Every difference the lab makes to a rendered file is a field here, and only what Linux forces.
    (Interface names are not one: the lab names its links vmx0 and lo0, as on OpenBSD.)
    """

    plain_smtp: bool = False  # Debian's smtpd 6.8 cannot finish a TLS handshake with OpenSSL 3
    bgpd_socket: str | None = None  # two bgpd on one machine need their own control sockets
    # Linux has no pf: bgpd there refuses `set pftable` ("pftable not supported"). The lines are
    # blanked, not dropped, so that line numbers in bgpd's messages still match the OpenBSD file.
    pftable: bool = True


OPENBSD = LinuxDifferences()

HostTree = dict[str, RenderedFile]


# bgpd on Linux refuses exactly these lines ("pftable not supported"): Linux has no pf.
_PFTABLE = re.compile(r"\bset pftable\b")


def linux_bgpd_conf(text: str) -> str:
    """The file bgpd on Linux can parse: `set pftable` lines blanked, every other line intact."""
    return "".join("#\n" if _PFTABLE.search(line) else line for line in text.splitlines(keepends=True))


class UnsafeValue(ValueError):
    """A value the model should have refused reached a template: a bug in the model's types."""


# Behind the model's types, a second line of defence: each grammar's quoting, and no value at all
# that writes a line (or a control character) of its own into a file that runs as root.
def _one_line(value: object) -> object:
    text = str(value)
    if not text.isprintable():
        bad = next(char for char in text if not char.isprintable())
        # The value itself is not shown: it may be a key.
        raise UnsafeValue(f"a value holds a line break or control character ({bad!r})")
    return value


def _quoted(grammar: str) -> Callable[[object], str]:
    """A double-quoted string as smtpd's and bgpd's lexers read it; a quote or backslash inside
    would end it or escape, so neither may be in it."""
    def quote(value: object) -> str:
        text = str(value)
        if bad := sorted(set(text) & {'"', "\\"}):
            raise UnsafeValue(f"{grammar}: a quoted string cannot hold {''.join(bad)!r}")
        return f'"{text}"'
    return quote


def _sh_word(value: object) -> str:
    """One word inside rc.conf.local's double quotes, which /etc/rc sources as root: $ ` \\ "
    would expand or end the string, and a blank would split a daemon's flag in two."""
    text = str(value)
    if bad := sorted(set(text) & set('"$`\\ \t')):
        raise UnsafeValue(f"rc.conf.local: a flag cannot hold {''.join(bad)!r}")
    return text


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_one_line,
    )
    environment.filters.update(smtpd_string=_quoted("smtpd.conf"), bgpd_string=_quoted("bgpd.conf"), sh_word=_sh_word)
    return environment


def render_template(template: str, **values: object) -> str:
    """A template of configs/ with plain values; the lab renders its own templates with it too."""
    return _environment().get_template(template).render(**values)


@dataclass(frozen=True)
class PfRule:
    service: Service
    macro: str | None  # the pf macro that names its sources, None when from anywhere


def render_pf_conf(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> str:
    services = inbound_services(site, host, addresses)
    rules = [
        PfRule(service, None if service.from_anywhere else service.sources_name)
        for service in services
        if not service.greylisted
    ]
    tables = site.bgp_spamd.pf_tables
    return render_template(
        "pf.conf.j2",
        host=host,
        pf_rules=rules,
        table_entries=site.bgp_spamd.table_entries,
        site_addresses=[str(a.ipv4) for a in addresses.values()],
        blacklist_table=tables.blacklist,
        bypass_table=tables.bypass,
        bruteforce_table=BRUTEFORCE_TABLE,
        bruteforce_ports=rate_limited_ports(services),
        bruteforce_minutes=BRUTEFORCE_EXPIRY_SECONDS // 60,
    )


def render_smtpd_conf(site: Site, host: Host, linux: LinuxDifferences = OPENBSD) -> str:
    tls = None if linux.plain_smtp else {"certificate": site.tls.certificate_for(host), "key": site.tls.key_for(host)}
    return render_template(
        "smtpd.conf.j2",
        mx_name=host.mx_name,
        role=host.role,
        preference=host.preference,
        primary=host.is_primary,
        relay_backup_mx=None if host.is_primary else site.relay_backup_mx(host),
        egress_interface=host.egress_interface,
        queue_ttl=site.queue.ttl,
        max_message_size=site.max_message_size,
        delivery=site.delivery,
        tls=tls,
    )


def render_queue_key_conf(host: Host, secrets: HostSecrets) -> str:
    return render_template(
        "queue-key.conf.j2",
        mx_name=host.mx_name,
        version=secrets.queue_key_version,
        queue_key=secrets.queue_key.get_secret_value(),
    )


def render_rc_conf_local(site: Site, host: Host, addresses: Mapping[str, HostAddresses], linux: LinuxDifferences = OPENBSD) -> str:
    return render_template(
        "rc.conf.local.j2",
        mx_name=host.mx_name,
        greylist=site.greylist.spamd_g,
        white_expiry_hours=site.greylist.white_expiry_hours,
        sync_listen=addresses[host.name].ipv4,
        sync_peers=[addresses[peer.name].ipv4 for peer in site.spamd_sync_peers(host)],
        tls=None if linux.plain_smtp else {"certificate": site.tls.certificate_for(host), "key": site.tls.key_for(host)},
    )


def render_spamd_conf() -> str:
    return render_template("spamd.conf.j2", black_list_file=BLACK_LIST_FILE, bypass_list_file=BYPASS_LIST_FILE)


def render_bgpd_conf(site: Site, host: Host, addresses: Mapping[str, HostAddresses], linux: LinuxDifferences = OPENBSD) -> str:
    bgp = site.bgp_spamd
    text = render_template(
        "bgpd.conf.j2",
        mx_name=host.mx_name,
        local_as=bgp.local_as,
        router_id=addresses[host.name].ipv4,
        socket=linux.bgpd_socket,
        route_server_group=ROUTE_SERVER_GROUP,
        route_server_as=bgp.route_server_as,
        multihop=bgp.multihop,
        max_prefixes=bgp.max_prefixes,
        max_prefix_restart=bgp.max_prefix_restart_minutes,
        route_servers=bgp.route_servers,
        blacklist_community=bgp.blacklist_community,
        bypass_community=bgp.bypass_community,
        blacklist_table=bgp.pf_tables.blacklist,
        bypass_table=bgp.pf_tables.bypass,
        vultr=site.vultr.bgp if site.target == "vultr" and site.vultr.bgp.enabled else None,
    )
    return text if linux.pftable else linux_bgpd_conf(text)


def render_bgp_spamd_update(site: Site) -> str:
    bgp = site.bgp_spamd
    return render_template(
        "bgp-spamd-update.j2",
        route_server_group=ROUTE_SERVER_GROUP,
        blacklist_community=bgp.blacklist_community,
        bypass_community=bgp.bypass_community,
        black_list_file=BLACK_LIST_FILE,
        bypass_list_file=BYPASS_LIST_FILE,
    )


def render_crontab(site: Site) -> str:
    minutes = site.bgp_spamd.update_minutes
    return (
        "# root's crontab additions, installed by the image's install.site. Rendered by mailsite.\n"
        f"*/{minutes}\t*\t*\t*\t*\t-n -s /{UPDATE_JOB}\n"
        f"# Rate-limit offenders (pf <{BRUTEFORCE_TABLE}>) are let back in after {BRUTEFORCE_EXPIRY_SECONDS // 60} minutes.\n"
        f"*/{BRUTEFORCE_EXPIRE_EVERY_MINUTES}\t*\t*\t*\t*\t-n /sbin/pfctl -q -t {BRUTEFORCE_TABLE} -T expire {BRUTEFORCE_EXPIRY_SECONDS}\n"
    )


def render_hostname_egress(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> str:
    own = addresses[host.name]
    network = site.network
    return render_template(
        "hostname.egress.j2",
        addressing=network.addressing,
        ipv4=own.ipv4,
        ipv4_prefix_length=network.ipv4_prefix_length,
        ipv6=own.ipv6,
        ipv6_prefix_length=network.ipv6_prefix_length,
    )


def _lines(header: str, lines: list[str]) -> str:
    # The templates' guard for the files made of plain lines too (resolv.conf, smtpd's tables,
    # authorized_keys): a value never writes a line of its own.
    return f"# {header} Rendered by mailsite: change the stack, not this file.\n" + "".join(f"{_one_line(line)}\n" for line in lines)


def render_tables(site: Site, host: Host) -> dict[str, str]:
    """smtpd's tables: domains, aliases, and recipients (backup) or virtuals (primary)."""
    postmaster = f"postmaster@{site.domains[0]}"
    tables = {
        "etc/mail/domains": _lines("Domains this site receives mail for.", site.domains),
        "etc/mail/aliases": _lines(
            "The host's own accounts; their mail goes to the site's postmaster.",
            [f"root: {postmaster}", "daemon: root", "MAILER-DAEMON: root", "postmaster: root"],
        ),
        "etc/mail/nospamd": _lines("Senders that skip spamd, besides the site's own MXes (pf <nospamd>).", []),
    }
    if host.is_primary:
        recipients = site.recipients
        virtuals = [f"{user}@{domain} {user}" for domain in site.domains for user in recipients.users]
        virtuals += [f"{part}@{domain} {target}" for domain in site.domains for part, target in recipients.aliases.items()]
        tables["etc/mail/virtuals"] = _lines("Addresses of the site and the mailbox each one reaches.", virtuals)
    else:
        tables["etc/mail/recipients"] = _lines(
            "The only recipients this backup accepts mail for; everyone else is refused.", site.valid_recipients()
        )
    return tables


def render_host(
    site: Site,
    host: Host,
    addresses: Mapping[str, HostAddresses],
    secrets: HostSecrets,
    linux: LinuxDifferences = OPENBSD,
) -> HostTree:
    """Every file a host's image carries, by path below /."""
    tree: HostTree = {
        "etc/myname": RenderedFile(f"{host.mx_name}\n"),
        f"etc/hostname.{host.egress_interface}": RenderedFile(render_hostname_egress(site, host, addresses), 0o640),
        "etc/hostname.pflog1": RenderedFile(render_template("hostname.pflog1.j2"), 0o640),
        "etc/pf.conf": RenderedFile(render_pf_conf(site, host, addresses), 0o600),
        "etc/rc.conf.local": RenderedFile(render_rc_conf_local(site, host, addresses, linux)),
        "etc/bgpd.conf": RenderedFile(render_bgpd_conf(site, host, addresses, linux), 0o600),
        "etc/mail/smtpd.conf": RenderedFile(render_smtpd_conf(site, host, linux)),
        "etc/mail/queue-key.conf": RenderedFile(render_queue_key_conf(host, secrets), 0o600, secret=True),
        "etc/mail/spamd.conf": RenderedFile(render_spamd_conf()),
        "etc/mail/spamd.key": RenderedFile(secrets.spamd_sync_key.get_secret_value() + "\n", 0o600, secret=True),
        UPDATE_JOB: RenderedFile(render_bgp_spamd_update(site), 0o755),
        "etc/mailsite/crontab": RenderedFile(render_crontab(site)),
        # Which keys the image carries, by version, never by value: rotation checks it on the host.
        "etc/mailsite/key-versions": RenderedFile(
            f"queue-key {secrets.queue_key_version}\nspamd-sync-key {secrets.spamd_sync_key_version}\n"
        ),
        "root/.ssh/authorized_keys": RenderedFile(_lines("Administrators' keys (adminSshKeys).", site.admin_ssh_keys), 0o600),
    }
    if site.network.addressing == "static":
        gateways = [g for g in (site.network.ipv4_gateway, site.network.ipv6_gateway) if g]
        tree["etc/mygate"] = RenderedFile(render_template("mygate.j2", gateways=gateways))
        tree["etc/resolv.conf"] = RenderedFile(_lines("Resolvers (network.nameservers).", [f"nameserver {ns}" for ns in site.network.nameservers] + ["lookup file bind"]))
    for path, text in render_tables(site, host).items():
        tree[path] = RenderedFile(text)
    return dict(sorted(tree.items()))
