"""bgp-spamd-update: root's cron job that turns bgpd's RIB into spamd's bgp-spamd lists and loads
them with spamd-setup(8). Not a daemon, but a unit like one: a file, a crontab line, a check."""

from __future__ import annotations

from ..model import Site
from ..templates import RenderedFile, render_template
from .base import ConfigTest, Daemon, HostContext
from .bgpd import ROUTE_SERVER_GROUP

# The lists the job writes and spamd.conf names (spamd-setup reads them from there).
BLACK_LIST_FILE = "/etc/mail/bgp-spamd.black"
BYPASS_LIST_FILE = "/etc/mail/bgp-spamd.bypass"
UPDATE_JOB = "usr/local/sbin/bgp-spamd-update"


def render_bgp_spamd_update(site: Site) -> str:
    bgp = site.bgp_spamd
    return render_template(
        "bgp-spamd-update/bgp-spamd-update.j2",
        route_server_group=ROUTE_SERVER_GROUP,
        blacklist_community=bgp.blacklist_community,
        bypass_community=bgp.bypass_community,
        black_list_file=BLACK_LIST_FILE,
        bypass_list_file=BYPASS_LIST_FILE,
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    return {UPDATE_JOB: RenderedFile(render_bgp_spamd_update(context.site), 0o755)}


def crontab(context: HostContext) -> str:
    return render_template("bgp-spamd-update/crontab.j2", minutes=context.site.bgp_spamd.update_minutes, job=UPDATE_JOB)


# The lab runs it on demand against a host's live bgpd (mailsite.lab.bgp), not as a daemon.
bgp_spamd_update = Daemon(
    "bgp-spamd-update",
    files=files,
    crontab=crontab,
    configtests=(ConfigTest("sh -n", UPDATE_JOB),),
)
