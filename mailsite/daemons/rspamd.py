"""rspamd(8) on the primary: scores the mail smtpd takes (from the internet, through the backups,
and from the site's users) through filter-rspamd. smtpd refuses what scores rejectScore, and
delivers what scores junkScore marked for the user's Junk. Only local.d overrides are rendered:
the package's own /etc/rspamd holds the rest, so an rspamd update brings its rule fixes."""

from __future__ import annotations

from ..model import Host, Site
from ..templates import RenderedFile, render_template
from .base import ConfigTest, Daemon, HostContext, LabRun
from .dkim import LOOPBACK
from .redis import ADDRESS as REDIS_ADDRESS, PORT as REDIS_PORT

LOCAL_D = "etc/rspamd/local.d"
# What must replace a default rather than add to it (a list: local.d merges into rspamd's own).
OVERRIDE_D = "etc/rspamd/override.d"
SCANNER_PORT = 11333
SCANNER = f"127.0.0.1:{SCANNER_PORT}"  # the normal worker, which filter-rspamd asks
CONTROLLER = "127.0.0.1:11334"
# OpenBSD's opensmtpd-filter-rspamd installs it here (its PLIST); smtpd.conf names it whole.
FILTER = "/usr/local/libexec/smtpd/filter-rspamd"
FILTER_COMMAND = f"{FILTER} -url http://{SCANNER}"


def on_the_primary(site: Site, host: Host) -> bool:
    # The backups keep no mail: they relay to the primary, which scores it there.
    return host.is_primary


def score(value: float) -> str:
    """A score as rspamd reads one: 15, 6.5."""
    return f"{value:g}"


def backup_addresses(context: HostContext) -> list[str]:
    """Every address of every backup MX: the relays whose Received: headers are believed."""
    found = []
    for host in context.site.backups:
        addresses = context.addresses[host.name]
        found += [str(address) for address in (addresses.ipv4, addresses.ipv6) if address is not None]
    return found


def files(context: HostContext) -> dict[str, RenderedFile]:
    spam, name = context.site.spam, context.host.mx_name
    rendered = {
        "actions.conf": render_template("rspamd/actions.conf.j2", mx_name=name, reject_score=score(spam.reject_score),
                                        junk_score=score(spam.junk_score)),
        "external_relay.conf": render_template("rspamd/external_relay.conf.j2", mx_name=name,
                                               backups=backup_addresses(context)),
        "milter_headers.conf": render_template("rspamd/milter_headers.conf.j2", mx_name=name),
        "greylist.conf": render_template("rspamd/greylist.conf.j2", mx_name=name),
        "redis.conf": render_template("rspamd/redis.conf.j2", mx_name=name, redis=f"{REDIS_ADDRESS}:{REDIS_PORT}"),
        "worker-normal.inc": render_template("rspamd/worker-normal.inc.j2", mx_name=name, scanner=SCANNER),
        "worker-controller.inc": render_template("rspamd/worker-controller.inc.j2", mx_name=name, controller=CONTROLLER),
        "worker-proxy.inc": render_template("rspamd/worker-proxy.inc.j2", mx_name=name),
        "settings.conf": render_template("rspamd/settings.conf.j2", mx_name=name, loopback=LOOPBACK),
        # The package's rules read local.d/rspamd.lua last (rules/rspamd.lua).
        "rspamd.lua": render_template("rspamd/rspamd.lua.j2", mx_name=name),
    }
    tree = {f"{LOCAL_D}/{file}": RenderedFile(text) for file, text in rendered.items()}
    tree[f"{OVERRIDE_D}/options.inc"] = RenderedFile(render_template("rspamd/options.inc.j2", mx_name=name))
    return tree


rspamd = Daemon(
    "rspamd",
    package="rspamd",
    # smtpd's way to it: the filter is a program smtpd runs, no daemon of its own.
    packages=("opensmtpd-filter-rspamd",),
    runs_on=on_the_primary,
    files=files,
    # rspamadm configtest reads the package's rspamd.conf with the rendered local.d and override.d
    # laid over it.
    configtests=(ConfigTest("rspamadm configtest", f"{LOCAL_D}/actions.conf"),),
    # As rc.d/rspamd runs it (-u _rspamd -g _rspamd), in the foreground; its log is rspamd's own
    # file, /var/log/rspamd/rspamd.log, as on the host.
    # Its config is the package's rspamd.conf, which reads the tree's local.d and override.d.
    lab=LabRun(("rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd"), (SCANNER_PORT, "tcp")),
)
