"""pf(4): the host's own firewall, made from the services every other daemon declares; the
<bruteforce> table for sources that break a rate limit, and root's cron job that empties it."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import BRUTEFORCE_TABLE
from ..service import Service
from ..templates import RenderedFile, render_template
from .base import Daemon, HostContext

# pf's table of sources that broke a rate limit (pass ... overload <bruteforce>). An entry shuts
# its source out of the rate-limited services only, never smtp, and lasts this long: an office
# behind one NAT address that mistypes a password is locked out for an hour, not for good.
# (Its name, BRUTEFORCE_TABLE, is the model's: no bgp table may take it.)
BRUTEFORCE_EXPIRY_SECONDS = 3600
# How often root's crontab expires <bruteforce> entries: an entry lives up to expiry + this.
BRUTEFORCE_EXPIRE_EVERY_MINUTES = 10


@dataclass(frozen=True)
class PfRule:
    service: Service
    macro: str | None  # the pf macro that names its sources, None when from anywhere


def rate_limited_ports(services: list[Service]) -> dict[str, list[str]]:
    """protocol -> the port names whose rules feed <bruteforce>: exactly what an entry blocks."""
    ports: dict[str, list[str]] = {}
    for service in services:
        if service.rate_limited and service.name not in ports.get(service.protocol, []):
            ports.setdefault(service.protocol, []).append(service.name)
    return ports


def render_pf_conf(context: HostContext) -> str:
    site, services = context.site, context.services
    # Greylisted smtp has rules of its own in the template (spamd's divert-to).
    rules = [
        PfRule(service, None if service.from_anywhere else service.sources_name)
        for service in services
        if not service.greylisted
    ]
    tables = site.bgp_spamd.pf_tables
    return render_template(
        "pf/pf.conf.j2",
        host=context.host,
        pf_rules=rules,
        table_entries=site.bgp_spamd.table_entries,
        site_addresses=[str(a.ipv4) for a in context.addresses.values()],
        blacklist_table=tables.blacklist,
        bypass_table=tables.bypass,
        bruteforce_table=BRUTEFORCE_TABLE,
        bruteforce_ports=rate_limited_ports(services),
        bruteforce_minutes=BRUTEFORCE_EXPIRY_SECONDS // 60,
    )


def files(context: HostContext) -> dict[str, RenderedFile]:
    return {
        "etc/pf.conf": RenderedFile(render_pf_conf(context), 0o600),
        # pf.conf's <nospamd> reads it; smtpd's other tables sit beside it in /etc/mail.
        "etc/mail/nospamd": RenderedFile(render_template("pf/nospamd.j2")),
    }


def crontab(context: HostContext) -> str:
    return render_template(
        "pf/crontab.j2",
        table=BRUTEFORCE_TABLE,
        every_minutes=BRUTEFORCE_EXPIRE_EVERY_MINUTES,
        expiry_seconds=BRUTEFORCE_EXPIRY_SECONDS,
    )


# No lab run: Linux has no pf. It needs no service of its own: its rule set is the others'.
pf = Daemon("pf", files=files, crontab=crontab)
