"""Relayed mail is scored on its sender only when it reaches the primary from an address rspamd
believes (issue 16.1, found in review): on Vultr a backup's IPv6 is the instance's own (autoconf),
known to no render of the primary, so its relay to the primary must leave from an address that is."""

from __future__ import annotations

import ipaddress
import re

from mailsite.model import HostAddresses
from mailsite.render import render_host
from tests.sites import example_settings, fake_secrets, site_of

RELAY = "etc/rspamd/local.d/external_relay.conf"


def test_a_backup_with_a_provider_allocated_ipv6_relays_to_the_primary_from_an_address_rspamd_believes():
    settings = example_settings()
    settings.update(target="vultr", network={"addressing": "autoconf"})
    for host in settings["hosts"]:
        # Vultr: the IPv6 is the instance's v6_main_ip, made with the instance, after every bake.
        host.update(ipv4="allocate", ipv6="allocate", egressInterface="vio0")
    site = site_of(settings)
    secrets = fake_secrets(site)
    # What a render through pulumi up has on Vultr: the reserved IPv4 alone (components/vultr/addresses.py).
    known = {h.name: HostAddresses(ipaddress.IPv4Address(f"192.0.2.{10 * (i + 1)}")) for i, h in enumerate(site.hosts)}
    primary = render_host(site, site.primary, known, secrets[site.primary.name])
    believed = re.findall(r'"([^"]+)"', re.search(r"ip_map = \[(.*)\];", primary[RELAY].text)[1])
    for backup in site.backups:
        smtpd = render_host(site, backup, known, secrets[backup.name])["etc/mail/smtpd.conf"].text
        [action] = [line for line in smtpd.splitlines() if line.startswith('action "relay_backup"')]
        # Without a source address smtpd connects to the primary's AAAA from the autoconf address too,
        # and rspamd scores the backup itself (SPF of the sender fails, the backup's reputation).
        sources = re.findall(r' src "?([^" ]+)"?', action)
        assert sources == [str(known[backup.name].ipv4)], action
        assert sources[0] in believed, (sources, believed)


def test_a_reject_score_at_or_below_the_default_junk_score_is_one_line_naming_junk_score():
    # rejectScore 5 alone left junkScore at its default 6: rspamd got add_header above reject, and
    # nothing was ever filed in Junk. The refusal names the setting left out and its value.
    from tests.sites import refusal_lines
    settings = example_settings()
    settings["spam"] = {"rejectScore": 5}
    lines = refusal_lines(settings)
    assert len(lines) == 1 and lines[0].startswith("mailsite:spam.junkScore = 6: not below rejectScore (5)"), lines
    assert "like 6" not in lines[0], lines  # a fix the user can take: not the refused value itself
