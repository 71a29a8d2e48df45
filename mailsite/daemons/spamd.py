"""spamd(8): greylists new IPv4 senders in front of smtpd (pf diverts smtp to it), holds the
bgp-spamd listed ones, and shares its greylist with every other MX of the site (spamd-sync)."""

from __future__ import annotations

from typing import Mapping

from ..model import Host, HostAddresses, Site
from ..service import Service, host_cidr
from ..templates import RenderedFile, render_template
from .base import Daemon, HostContext
from .bgp_spamd_update import BLACK_LIST_FILE, BYPASS_LIST_FILE


def files(context: HostContext) -> dict[str, RenderedFile]:
    return {
        # Read by spamd-setup(8), which the update job runs.
        "etc/mail/spamd.conf": RenderedFile(
            render_template("spamd/spamd.conf.j2", black_list_file=BLACK_LIST_FILE, bypass_list_file=BYPASS_LIST_FILE)
        ),
        # Signs spamd's and spamlogd's sync messages: the same key on every MX.
        "etc/mail/spamd.key": RenderedFile(
            render_template("spamd/spamd.key.j2", key=context.secrets.spamd_sync_key.get_secret_value()), 0o600, secret=True
        ),
    }


def services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    peers = tuple(host_cidr(addresses[peer.name].ipv4) for peer in site.spamd_sync_peers(host))
    if not peers:
        return []
    return [Service("spamd-sync", "udp", 8025, peers, "spamd greylist sync between the site's MXes")]


def rc_conf_local(context: HostContext) -> str:
    site, host = context.site, context.host
    return render_template(
        "spamd/rc.conf.local.j2",
        mx_name=host.mx_name,
        greylist=site.greylist.spamd_g,
        sync_listen=context.own.ipv4,
        sync_peers=[context.addresses[peer.name].ipv4 for peer in site.spamd_sync_peers(host)],
        tls={"certificate": site.tls.certificate_for(host), "key": site.tls.key_for(host)},
    )


# No lab run: spamd needs pf's divert-to, which Linux does not have.
spamd = Daemon("spamd", files=files, services=services, rc_conf_local=rc_conf_local)
