"""The host itself: its name, its network (egress interface, gateways, resolvers), which keys
its image carries, and the two files every daemon adds its lines to: rc.conf.local and root's
crontab. The daemons' lines come in registry order after a header of the host's own."""

from __future__ import annotations

from ..model import HostSecrets
from ..templates import RenderedFile, render_template
from .base import ConfigTest, Daemon, HostContext

# Every host has its name: configtest knows a rendered host's tree by it.
MYNAME = "etc/myname"
# Which key versions the image carries (rotation and doctor read it on the host: mailsite.facts).
KEY_VERSIONS = "etc/mailsite/key-versions"
# The package mirror and the packages the bake installs (finish.sh reads it before anything else).
PACKAGES = "etc/mailsite/packages"


def render_hostname_egress(context: HostContext) -> str:
    network = context.site.network
    return render_template(
        "basics/hostname.egress.j2",
        addressing=network.addressing,
        ipv4=context.own.ipv4,
        ipv4_prefix_length=network.ipv4_prefix_length,
        ipv6=context.own.ipv6,
        ipv6_prefix_length=network.ipv6_prefix_length,
    )


def render_rc_conf_local(context: HostContext) -> str:
    # One pkg_scripts line for every package daemon on the host: two would overwrite each other.
    packaged = [daemon.name for daemon in context.daemons if daemon.package]
    header = render_template("basics/rc.conf.local.j2", mx_name=context.host.mx_name, pkg_scripts=packaged)
    return header + "".join(daemon.rc_conf_local(context) for daemon in context.daemons)


def render_crontab(context: HostContext) -> str:
    return render_template("basics/crontab.j2") + "".join(daemon.crontab(context) for daemon in context.daemons)


def render_key_versions(secrets: HostSecrets) -> str:
    """Which keys an image carries, by version (doctor compares a host's file with this render of
    the backend's versions now)."""
    return render_template(
        "basics/key-versions.j2",
        queue_key_version=secrets.queue_key_version,
        spamd_sync_key_version=secrets.spamd_sync_key_version,
        dkim_keys=secrets.dkim_keys,
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    site, host, secrets = context.site, context.host, context.secrets
    tree = {
        MYNAME: RenderedFile(render_template("basics/myname.j2", mx_name=host.mx_name)),
        f"etc/hostname.{host.egress_interface}": RenderedFile(render_hostname_egress(context), 0o640),
        "etc/rc.conf.local": RenderedFile(render_rc_conf_local(context)),
        # Installed by the image's install.site.
        "etc/mailsite/crontab": RenderedFile(render_crontab(context)),
        # The mirror (the image's /etc/installurl: pkg_add's and syspatch's) and the packages' exact versions.
        PACKAGES: RenderedFile(render_template("basics/packages.j2", mirror=site.images.packages.mirror, packages=list(
            dict.fromkeys(site.images.packages.pinned(package) for daemon in context.daemons
                          for package in ((daemon.package,) if daemon.package else ()) + daemon.packages)))),
        # Which keys the image carries, by version, never by value: rotation checks it on the host.
        KEY_VERSIONS: RenderedFile(render_key_versions(secrets)),
    }
    network = site.network
    if network.addressing == "static":  # autoconf: the gateways and resolvers come from DHCP/SLAAC
        gateways = [g for g in (network.ipv4_gateway, network.ipv6_gateway) if g]
        tree["etc/mygate"] = RenderedFile(render_template("basics/mygate.j2", gateways=gateways))
        tree["etc/resolv.conf"] = RenderedFile(render_template("basics/resolv.conf.j2", nameservers=network.nameservers))
    return tree


basics = Daemon(
    "basics",
    files=files,
    # /etc/rc sources it as root: a slip there stops every daemon from starting.
    configtests=(ConfigTest("sh -n", "etc/rc.conf.local"),),
)
