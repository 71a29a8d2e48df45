"""doctor's blocklist checks against a real name server: the daemon root's dnsmasq on loopback,
serving each test's blocklist zones as the lists (or a resolver in front of them) answer. No
query leaves the machine: dnsmasq has no upstream, and a zone it is not told of is refused."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import dns.exception
import dns.resolver
import dns.reversename
import pytest

from mailsite.daemonroot import daemon_root
from mailsite.doctor import blocklists
from mailsite.doctor.blocklists import checks, query_name, shown_zone
from mailsite.doctor.core import run_checks
from mailsite.doctor.view import SiteView
from mailsite.results import Status
from tests.sites import example_settings, site_of
from tests.test_dns import serving_lab_dns

ZEN, SPAMCOP, BARRACUDA, PSBL = "zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "psbl.surriel.com"


@pytest.fixture(scope="module")
def site():
    return site_of(example_settings())


def _free_port() -> int:
    """A port free on 127.0.0.1 for UDP and TCP (dnsmasq binds both) as it is asked."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on loopback")


def working_list(zone: str) -> list[str]:
    """A list that holds no address but its test entry (RFC 5782), as dnsmasq serves it."""
    return [f"local=/{zone}/", f"host-record=2.0.0.127.{zone},127.0.0.2"]


def listing(address, zone: str, *codes: str, text: str = "") -> list[str]:
    name = query_name(ipaddress.ip_address(address), zone)
    lines = [f"host-record={name},{code}" for code in codes]
    return lines + ([f'txt-record={name},"{text}"'] if text else [])


@contextlib.contextmanager
def name_server(site, tmp_path: Path, lines: list[str]):
    """dnsmasq on 127.0.0.1 answering the site's MX names and `lines` while the block runs, and
    a resolver that asks it; dnsmasq stops with the block, or by itself after a minute."""
    records = [f"host-record={h.mx_name},{h.ipv4},{h.ipv6}" for h in site.hosts]
    conf = "\n".join(["no-resolv", "no-hosts", "no-poll", "listen-address=127.0.0.1", "bind-interfaces",
                      "log-queries", *[f"local=/{d}/" for d in site.domains], *records, *lines]) + "\n"
    log = tmp_path / "dnsmasq.log"
    # The port found free may be taken again before dnsmasq binds it (other test workers, the
    # resolvers' own source ports): then dnsmasq says so at once, and another port is tried.
    for _ in range(5):
        port = _free_port()
        argv = ["timeout", "60", "chroot", str(daemon_root().path), "dnsmasq", "--keep-in-foreground", "--conf-file=-",
                f"--port={port}", "--pid-file=", "--log-facility=-"]
        with open(log, "w") as out:
            server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out, text=True)
        server.stdin.write(conf)
        server.stdin.close()
        resolver = _resolver(port)
        for _ in range(100):
            with contextlib.suppress(dns.exception.DNSException):
                resolver.resolve(site.hosts[0].mx_name, "A", lifetime=0.1)
                break
            if server.poll() is not None:
                break
            time.sleep(0.05)
        if server.poll() is None or "Address already in use" not in log.read_text():
            break
    try:
        assert server.poll() is None, log.read_text()
        yield resolver
    finally:
        server.terminate()
        server.wait(timeout=10)


def _resolver(port: int) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], port
    return resolver


def _no_control(host):
    raise AssertionError("blocklist checks never reach into a host")


def _no_store():
    raise AssertionError("blocklist checks read no secret")


def doctor(site, resolver, timeout: float = 2.0) -> dict[str, object]:
    """The blocklist checks run as doctor runs them: results by name."""
    view = SiteView(site=site, stack="example", resolver=resolver, control=_no_control, store=_no_store, cafile=None,
                    now=datetime.now(timezone.utc), timeout=timeout)
    made = checks(view)
    assert all(check.area == "blocklists" for check in made)
    return {result.name: result for result in run_checks(made, timeout=4 * timeout)}


def result(results, host, zone):
    return results[f"{host.mx_name}: not listed by {zone}"]


def every_list_working() -> list[str]:
    return [line for zone in (ZEN, SPAMCOP, BARRACUDA, PSBL) for line in working_list(zone)]


def test_mx_addresses_no_list_holds_pass_as_not_listed(site, tmp_path):
    with name_server(site, tmp_path, every_list_working()) as resolver:
        results = doctor(site, resolver)
    assert len(results) == len(site.hosts) * 4
    for host in site.hosts:
        for zone in (ZEN, SPAMCOP, BARRACUDA, PSBL):
            found = result(results, host, zone)
            assert found.status is Status.PASS, found
            assert found.seen == f"{host.ipv4}, {host.ipv6} not listed"


def test_a_listed_address_fails_naming_the_list_and_where_to_ask_for_removal(site, tmp_path):
    mx1, mx2, mx3 = site.hosts
    lines = every_list_working() + listing(mx1.ipv4, ZEN, "127.0.0.2", text="Listed by SBL, see https://check.spamhaus.org/sbl/query/SBL123") \
        + listing(mx2.ipv4, ZEN, "127.0.0.10") + listing(mx3.ipv4, PSBL, "127.0.0.2")
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    sbl = result(results, mx1, ZEN)
    assert sbl.status is Status.FAIL
    assert sbl.seen.startswith(f"{mx1.ipv4} listed by Spamhaus (127.0.0.2): SBL")
    assert 'its TXT record: "Listed by SBL, see https://check.spamhaus.org/sbl/query/SBL123"' in sbl.seen
    assert sbl.seen.endswith(f"; {mx1.ipv6} not listed")
    assert "https://check.spamhaus.org/" in sbl.fix
    # PBL: the address's range is end-user or dynamic; the fix is the provider's reverse name.
    pbl = result(results, mx2, ZEN)
    assert pbl.status is Status.FAIL and "PBL (its provider marks the address end-user or dynamic" in pbl.seen
    assert f"static reverse name ({mx2.mx_name})" in pbl.fix
    psbl = result(results, mx3, PSBL)
    assert psbl.status is Status.FAIL and "listed by PSBL" in psbl.seen
    assert f"https://psbl.org/listing?ip={mx3.ipv4}" in psbl.fix
    # Every other list, and every other host on these lists, still passes.
    assert [r.name for r in results.values() if r.status is not Status.PASS] == [sbl.name, pbl.name, psbl.name]


def test_spamhaus_refusing_a_public_resolver_is_cannot_tell_never_listed(site, tmp_path):
    # Spamhaus answers every query from a public or cloud resolver with this code, its own test
    # entry's included: it is not a listing.
    lines = every_list_working()[2:] + [f"address=/{ZEN}/127.255.255.254"]
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    for host in site.hosts:
        found = result(results, host, ZEN)
        assert found.status is Status.WARN, found
        assert "cannot tell: Spamhaus answers 127.255.255.254: it refuses this resolver" in found.seen
        assert "listed by" not in found.seen
        assert "--nameserver" in found.fix and "DQS key" in found.fix
        assert result(results, host, SPAMCOP).status is Status.PASS


def test_excessive_queries_and_a_mistyped_zone_are_cannot_tell(site, tmp_path):
    mx1, mx2, _ = site.hosts
    lines = every_list_working() + listing(mx1.ipv4, ZEN, "127.255.255.255") + listing(mx2.ipv4, ZEN, "127.255.255.252")
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    busy, typo = result(results, mx1, ZEN), result(results, mx2, ZEN)
    assert busy.status is Status.WARN and "more queries than its free use allows" in busy.seen
    assert typo.status is Status.WARN and "mistyped" in typo.seen and f"correct {ZEN} in doctor.blocklists" in typo.fix


def test_a_resolver_that_rewrites_nxdomain_is_cannot_tell(site, tmp_path):
    # Some ISPs' resolvers answer a name that does not exist with their own web server's address.
    lines = [line for zone in (ZEN, BARRACUDA, PSBL) for line in working_list(zone)] + [f"address=/{SPAMCOP}/198.51.100.99"]
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    found = result(results, site.hosts[0], SPAMCOP)
    assert found.status is Status.WARN
    assert "cannot tell: the resolver answered 198.51.100.99, outside 127.0.0.0/8" in found.seen
    assert "--nameserver" in found.fix


def test_barracuda_refusing_an_unregistered_resolver_is_cannot_tell(site, tmp_path):
    # dnsmasq refuses a zone it is not told of, as Barracuda's servers refuse an unregistered resolver.
    lines = [line for zone in (ZEN, SPAMCOP, PSBL) for line in working_list(zone)]
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    found = result(results, site.hosts[0], BARRACUDA)
    assert found.status is Status.WARN
    assert found.seen == f"{site.hosts[0].ipv4}, {site.hosts[0].ipv6} cannot tell: the resolver answered REFUSED"
    assert "https://www.barracudacentral.org/account/register" in found.fix


def test_no_answer_is_cannot_tell_within_the_timeout(site):
    # A name server that does not answer at all: a port nothing listens on.
    started = time.monotonic()
    results = doctor(site, _resolver(_free_port()), timeout=0.5)
    assert time.monotonic() - started < 3
    for found in results.values():
        assert found.status is Status.WARN, found
        assert "cannot tell" in found.seen
    # Not even the MX names resolve there: nothing to look up, said so.
    assert "has no A or AAAA record" in next(iter(results.values())).seen


def test_a_list_that_does_not_answer_in_time_is_cannot_tell(site, tmp_path):
    # The MX names resolve; the list's servers are out of reach (dnsmasq forwards its zone to a
    # port nothing listens on, and waits).
    lines = [line for zone in (ZEN, BARRACUDA, PSBL) for line in working_list(zone)] + [f"server=/{SPAMCOP}/127.0.0.1#{_free_port()}"]
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver, timeout=0.5)
    found = result(results, site.hosts[0], SPAMCOP)
    assert found.status is Status.WARN, found
    assert "cannot tell:" in found.seen and ("no answer within 0.5 s" in found.seen or "answered" in found.seen)
    assert result(results, site.hosts[0], ZEN).status is Status.PASS


def test_a_list_that_lists_every_address_is_cannot_tell(site, tmp_path):
    # How some lists answer once they shut down: everything listed, 127.0.0.1 too.
    lines = [line for zone in (ZEN, SPAMCOP, BARRACUDA) for line in working_list(zone)] + [f"address=/{PSBL}/127.0.0.2"]
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    found = result(results, site.hosts[0], PSBL)
    assert found.status is Status.WARN
    assert f"{PSBL} lists 127.0.0.1 too" in found.seen
    assert f"take {PSBL} out of doctor.blocklists" in found.fix


def test_a_list_that_lists_not_even_its_test_entry_is_cannot_tell(site, tmp_path):
    # NXDOMAIN for everything: a list gone, or one that does not answer this resolver that way.
    lines = [line for zone in (ZEN, BARRACUDA, PSBL) for line in working_list(zone)] + [f"local=/{SPAMCOP}/"]
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    found = result(results, site.hosts[0], SPAMCOP)
    assert found.status is Status.WARN
    assert f"{SPAMCOP} does not list its test entry 127.0.0.2" in found.seen


def test_ipv6_addresses_are_asked_by_their_reversed_nibbles(site, tmp_path):
    address = ipaddress.IPv6Address("2001:db8::10")
    reverse = dns.reversename.from_address(str(address)).to_text().removesuffix(".ip6.arpa.")
    assert query_name(address, ZEN) == f"{reverse}.{ZEN}"
    assert query_name(ipaddress.IPv4Address("192.0.2.10"), ZEN) == f"10.2.0.192.{ZEN}"
    # And a list's IPv6 listing, served by that name, is read as one.
    mx1 = site.hosts[0]
    with name_server(site, tmp_path, every_list_working() + listing(mx1.ipv6, SPAMCOP, "127.0.0.2")) as resolver:
        results = doctor(site, resolver)
    found = result(results, mx1, SPAMCOP)
    assert found.status is Status.FAIL
    assert found.seen.startswith(f"{mx1.ipv4} not listed; {mx1.ipv6} listed by SpamCop (127.0.0.2)")
    assert f"https://www.spamcop.net/bl.shtml?{mx1.ipv6}" in found.fix


def test_a_listings_text_is_shown_printable_and_short(site, tmp_path):
    mx1 = site.hosts[0]
    # A list's text could hold ESC, which a terminal obeys: a report shows it, escaped.
    lines = every_list_working() + listing(mx1.ipv4, PSBL, "127.0.0.2", text="\x1b[2Jlisted " + "x" * 400)
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    found = result(results, mx1, PSBL)
    assert found.status is Status.FAIL
    assert "\x1b" not in found.seen and '"\\x1b[2Jlisted xxx' in found.seen
    assert "x" * 180 in found.seen and "x" * 300 not in found.seen


def test_the_stacks_own_lists_are_asked_and_a_dqs_key_never_shown(tmp_path):
    # A Spamhaus DQS zone's first label is the account's key: names and reports leave it out.
    key = "abcdefghijklmnopqrstuvwxyz"
    dqs, other = f"{key}.zen.dq.spamhaus.net", "dnsbl.example.net"
    settings = example_settings()
    settings["doctor"] = {"blocklists": [dqs, other]}
    site = site_of(settings)
    mx1, mx2, _ = site.hosts
    lines = working_list(dqs) + working_list(other) + listing(mx1.ipv4, dqs, "127.255.255.252") \
        + listing(mx2.ipv4, other, "127.0.0.3")
    with name_server(site, tmp_path, lines) as resolver:
        results = doctor(site, resolver)
    assert len(results) == len(site.hosts) * 2
    typo = result(results, mx1, "<DQS key>.zen.dq.spamhaus.net")
    assert typo.status is Status.WARN and "correct <DQS key>.zen.dq.spamhaus.net in doctor.blocklists" in typo.fix
    # A list doctor knows nothing of: any answer in 127.0.0.0/8 but its test and error codes lists.
    listed = result(results, mx2, other)
    assert listed.status is Status.FAIL and listed.seen.startswith(f"{mx2.ipv4} listed by {other} (127.0.0.3)")
    assert f"look {mx2.ipv4} up on the web site of {other}" in listed.fix
    assert not [r for r in results.values() if key in r.name + r.seen + r.fix]
    assert shown_zone(ZEN) == ZEN


def test_no_blocklists_no_checks(site):
    settings = example_settings()
    settings["doctor"] = {"blocklists": []}
    assert doctor(site_of(settings), _resolver(_free_port())) == {}


def test_the_lab_dns_answers_every_mx_not_listed(site, tmp_path):
    # The lab's own dnsmasq.conf: every blocklist zone answered there, none leaving the lab.
    with serving_lab_dns(site, tmp_path) as (plan, resolver):
        results = doctor(plan.site, resolver)
    assert len(results) == len(plan.site.hosts) * len(blocklists.blocklist_zones(plan.site))
    for found in results.values():
        assert found.status is Status.PASS, found
        assert found.seen.endswith("not listed")


# -- found in review (issue 17) ------------------------------------------------------------------

def test_a_spamhaus_bcl_listing_fails_as_a_listing(site, tmp_path):
    # ZEN answers 127.0.0.30 for the Botnet Controller List, part of the SBL (Spamhaus's zone
    # documentation, "Available Zones"): a listing, not an answer doctor cannot read.
    mx1 = site.hosts[0]
    with name_server(site, tmp_path, every_list_working() + listing(mx1.ipv4, ZEN, "127.0.0.30")) as resolver:
        results = doctor(site, resolver)
    found = result(results, mx1, ZEN)
    assert found.status is Status.FAIL, found
    assert found.seen.startswith(f"{mx1.ipv4} listed by Spamhaus (127.0.0.30): BCL")
    assert "https://check.spamhaus.org/" in found.fix


@pytest.mark.parametrize("code, why", [("127.255.255.250", "the key is disabled"), ("127.255.255.251", "the key is not valid")])
def test_a_dqs_key_spamhaus_refuses_is_cannot_tell_saying_so_without_the_key(tmp_path, code, why):
    # Every query with a disabled or unknown DQS key answers this code, the test entry's too.
    key = "zyxwvutsrqponmlkjihgfedcba"
    dqs = f"{key}.zen.dq.spamhaus.net"
    settings = example_settings()
    settings["doctor"] = {"blocklists": [dqs]}
    site = site_of(settings)
    with name_server(site, tmp_path, [f"address=/{dqs}/{code}"]) as resolver:
        results = doctor(site, resolver)
    for host in site.hosts:
        found = result(results, host, "<DQS key>.zen.dq.spamhaus.net")
        assert found.status is Status.WARN, found
        assert f"Spamhaus answers {code}: it does not accept the DQS key of <DQS key>.zen.dq.spamhaus.net ({why})" in found.seen
        assert "DQS account" in found.fix
    assert not [r for r in results.values() if key in r.name + r.seen + r.fix]


def test_a_list_whose_test_entry_answers_a_code_doctor_does_not_know_still_works(site, tmp_path):
    # ZEN's test entry answers one code per list it is in (SBL, XBL, PBL); a list that adds a code
    # to it still answers: every MX it does not list is not listed, not cannot tell.
    lines = every_list_working()[2:] + [f"local=/{ZEN}/"] + [f"host-record=2.0.0.127.{ZEN},{code}"
                                                             for code in ("127.0.0.2", "127.0.0.4", "127.0.0.10", "127.0.0.42")]
    with name_server(site, tmp_path, lines) as resolver:
        assert {r.address for r in resolver.resolve(f"2.0.0.127.{ZEN}", "A")} == {"127.0.0.2", "127.0.0.4", "127.0.0.10", "127.0.0.42"}
        results = doctor(site, resolver)
    for host in site.hosts:
        found = result(results, host, ZEN)
        assert found.status is Status.PASS, found
        assert found.seen == f"{host.ipv4}, {host.ipv6} not listed"


def test_an_abusix_zones_api_key_is_never_shown(tmp_path):
    # Abusix Mail Intelligence is asked as <API key>.combined.mail.abusix.zone: its first label
    # is the account's key, as a Spamhaus DQS zone's is.
    key = "0123456789abcdef0123456789abcdef"
    abusix = f"{key}.combined.mail.abusix.zone"
    settings = example_settings()
    settings["doctor"] = {"blocklists": [abusix]}
    site = site_of(settings)
    mx1 = site.hosts[0]
    with name_server(site, tmp_path, working_list(abusix) + listing(mx1.ipv4, abusix, "127.0.0.2")) as resolver:
        results = doctor(site, resolver)
    listed = result(results, mx1, "<API key>.combined.mail.abusix.zone")
    assert listed.status is Status.FAIL and "listed by" in listed.seen
    assert not [r for r in results.values() if key in r.name + r.seen + r.fix]


def test_a_resolver_answering_127_0_0_2_for_every_name_lists_no_mx(site, tmp_path):
    # A broken or hostile resolver: every name it does not hold, every list's, is 127.0.0.2. Each
    # list then lists 127.0.0.1 too, which no working list does: cannot tell, never listed.
    with name_server(site, tmp_path, ["address=/#/127.0.0.2"]) as resolver:
        results = doctor(site, resolver)
    assert results and all(r.status is Status.WARN for r in results.values()), results
    assert all("lists 127.0.0.1 too" in r.seen and "listed by" not in r.seen for r in results.values())
