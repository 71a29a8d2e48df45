"""bgpd(8): takes the bgp-spamd route servers' lists into pf tables (it announces nothing and
never touches the routing table); on a target with a BGP session of its own, also announces the
site's prefixes there."""

from __future__ import annotations

import re
from typing import Mapping

from ..model import Host, HostAddresses, Site
from ..service import Service, host_cidr
from ..templates import RenderedFile, render_template
from .base import ConfigTest, Daemon, HostContext, LabRun

# bgpd.conf's group of bgp-spamd route servers; the update job counts its sessions by this name.
ROUTE_SERVER_GROUP = "bgp-spamd"

# bgpd on Linux refuses exactly these lines ("pftable not supported"): Linux has no pf.
_PFTABLE = re.compile(r"\bset pftable\b")


def linux_bgpd_conf(text: str) -> str:
    """The file bgpd on Linux can parse: `set pftable` lines blanked, every other line intact."""
    return "".join("#\n" if _PFTABLE.search(line) else line for line in text.splitlines(keepends=True))


def render_bgpd_conf(context: HostContext) -> str:
    site, host = context.site, context.host
    bgp = site.bgp_spamd
    text = render_template(
        "bgpd/bgpd.conf.j2",
        mx_name=host.mx_name,
        local_as=bgp.local_as,
        router_id=context.own.ipv4,
        socket=context.linux.bgpd_socket,
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
        provider=site.provider_bgp,
    )
    return text if context.linux.pftable else linux_bgpd_conf(text)


def files(context: HostContext) -> dict[str, RenderedFile]:
    return {"etc/bgpd.conf": RenderedFile(render_bgpd_conf(context), 0o600)}


def services(site: Site, host: Host, addresses: Mapping[str, HostAddresses]) -> list[Service]:
    route_servers = tuple(host_cidr(server.address) for server in site.bgp_spamd.route_servers)
    opened = [Service("bgp", "tcp", 179, route_servers, "eBGP multihop from the bgp-spamd route servers")]
    if provider := site.provider_bgp:
        opened.append(Service("bgp", "tcp", 179, (f"{provider.neighbor}/32",),
                              "eBGP multihop with Vultr, announcing the site's own prefixes", label="vultr-bgp"))
    return opened


def rc_conf_local(context: HostContext) -> str:
    return render_template("bgpd/rc.conf.local.j2")


bgpd = Daemon(
    "bgpd",
    files=files,
    services=services,
    rc_conf_local=rc_conf_local,
    configtests=(ConfigTest("bgpd -n", "etc/bgpd.conf"),),
    lab=LabRun(("bgpd", "-d", "-f", "/etc/bgpd.conf"), (179, "tcp"), config="/etc/bgpd.conf"),
)
