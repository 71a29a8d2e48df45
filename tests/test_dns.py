"""The site's DNS records as real name servers and real validators read them: zone files through
nsd's own zone parser (nsd-checkzone), the lab's dnsmasq answering on loopback, SPF evaluated by
pyspf and DMARC, TLS-RPT and MTA-STS parsed by checkdmarc from what that DNS serves."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.rdatatype
import dns.resolver
import dns.zone
import pytest
import spf

from mailsite.daemonroot import daemon_root
from mailsite.dns import (
    DnsRecord, ReverseRecord, dns_records, dnsmasq_options, presentation, render_reverse_zone, render_zone, reverse_records,
    reverse_zone_name, with_serial, zone_of,
)
from mailsite.lab.site import lab_plan, render_dnsmasq_conf
from mailsite.mta_sts import policy_id, policy_text
from tests.sites import addresses, example_settings, site_of

# A 2048-bit RSA key's DKIM record is about 410 bytes: more than one TXT string holds.
DKIM = DnsRecord("s1._domainkey.example.org", "TXT", "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9)


def _served(rdata) -> str:
    """A record's value as nsd or dnsmasq serves it, in DnsRecord's form."""
    kind = dns.rdatatype.to_text(rdata.rdtype)
    if kind == "TXT":
        return b"".join(rdata.strings).decode()
    if kind == "MX":
        return rdata.exchange.to_text().rstrip(".")
    if kind == "SRV":
        target = rdata.target.to_text()
        return f"{rdata.priority} {rdata.weight} {rdata.port} {target if target == '.' else target.rstrip('.')}"
    if kind == "CAA":
        return f'{rdata.flags} {rdata.tag.decode()} "{rdata.value.decode()}"'
    if kind == "PTR":
        return rdata.target.to_text().rstrip(".")
    return rdata.to_text()


def _zone_as_nsd_reads_it(tmp_path: Path, zone: str, text: str) -> set[tuple[str, str, str]]:
    path = tmp_path / f"{zone}.check"
    path.write_text(text)
    checked = subprocess.run(["nsd-checkzone", "-p", zone, str(path)], capture_output=True, text=True, timeout=20)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    parsed = dns.zone.from_text(checked.stdout, origin=zone + ".", relativize=False, check_origin=False)
    return {(name.to_text().rstrip("."), dns.rdatatype.to_text(rdataset.rdtype), _served(rdata))
            for name, rdataset in parsed.iterate_rdatasets() for rdata in rdataset}


def _expected(records: list[DnsRecord], zone: str) -> set[tuple[str, str, str]]:
    return {(r.name, r.type, r.value) for r in records if zone_of(r.name, [zone]) == zone}


@pytest.fixture(scope="module")
def site():
    return site_of(example_settings())


@pytest.fixture(scope="module")
def records(site):
    return dns_records(site, addresses(site), dkim=[DKIM])


@pytest.fixture(autouse=True, scope="module")
def _nsd_checkzone():
    if shutil.which("nsd-checkzone") is None:
        pytest.fail("nsd-checkzone is missing: make deps installs Debian's nsd")


def test_include_files_load_into_the_users_own_zone_as_nsd_reads_them(site, records, tmp_path):
    # The user's zone keeps its SOA, NS and other names; the site's file is $INCLUDEd in the middle,
    # and what follows it is still read with the user's own origin and TTL.
    for domain in site.domains:
        include = tmp_path / f"{domain}.zone"
        include.write_text(render_zone(domain, records, site.dns.ttl))
        users = (f"$ORIGIN {domain}.\n$TTL 300\n@ IN SOA ns1.example.com. hostmaster.{domain}. ( 7 3600 900 1209600 300 )\n"
                 f"@ IN NS ns1.example.com.\n$INCLUDE {include}\nwww IN A 198.51.100.80\n")
        served = _zone_as_nsd_reads_it(tmp_path, domain, users)
        own = {(domain, "SOA", f"ns1.example.com. hostmaster.{domain}. 7 3600 900 1209600 300"),
               (domain, "NS", "ns1.example.com."), (f"www.{domain}", "A", "198.51.100.80")}
        assert served == _expected(records, domain) | own


def test_a_dkim_key_longer_than_one_txt_string_is_served_whole(records, tmp_path):
    text = with_serial(render_zone("example.org", records, 3600, ["ns1.example.com"], "postmaster@example.org"), 1)
    assert max(len(s) for line in text.splitlines() if "_domainkey" in line for s in line.split('"')) <= 255
    assert (DKIM.name, "TXT", DKIM.value) in _zone_as_nsd_reads_it(tmp_path, "example.org", text)


def test_complete_zones_carry_the_nameservers_setting_and_a_serial(site, records, tmp_path):
    nameservers = ["ns1.example.com", "ns2.example.net"]
    for domain in site.domains:
        text = with_serial(render_zone(domain, records, site.dns.ttl, nameservers, "postmaster@example.org"), 1764140000)
        served = _zone_as_nsd_reads_it(tmp_path, domain, text)
        assert {v for name, kind, v in served if kind == "NS"} == {f"{ns}." for ns in nameservers}
        assert {v for name, kind, v in served if kind == "SOA"} == {"ns1.example.com. postmaster.example.org. 1764140000 3600 900 1209600 300"}
        assert {r for r in served if r[1] not in ("SOA", "NS")} == _expected(records, domain)


def _later(serial: int, than: int) -> bool:
    """RFC 1982 serial arithmetic, as a secondary compares the SOA serials it sees."""
    return serial != than and (serial - than) % 2**32 < 2**31


def test_a_complete_zone_that_replaces_the_users_own_has_a_greater_serial_than_its_dated_one(site, records, tmp_path):
    # A user who served example.org with the usual YYYYMMDDnn serial (RFC 1912 2.2; yesterday's
    # last, 2026112599 say) and now serves the file `up` writes: unless the new serial is greater,
    # the secondaries keep the old zone for good. Written as the engine writes it: the zone
    # file's provider in `python -m pulumi.dynamic`.
    from pulumi.dynamic.dynamic import serialize_provider
    from pulumi.runtime.proto import provider_pb2
    from google.protobuf import struct_pb2
    from components.zone_file import _ZoneFileProvider
    from tests.dynamic_engine import provider_process

    path = tmp_path / "example.org.zone"
    props = struct_pb2.Struct()
    props.update({"__provider": serialize_provider(_ZoneFileProvider()), "path": str(path),
                  "text": render_zone("example.org", records, 3600, ["ns1.example.com"], "postmaster@example.org")})
    with provider_process({}) as provider:
        provider.configure({"mailsite:target": "libvirt"})
        provider.stub.Create(provider_pb2.CreateRequest(urn="urn:pulumi:test::mailsite::pulumi-python:dynamic:Resource::zone",
                                                        properties=props))
    (serial,) = {int(v.split()[2]) for _, kind, v in _zone_as_nsd_reads_it(tmp_path, "example.org", path.read_text()) if kind == "SOA"}
    yesterday = time.gmtime(time.time() - 86400)
    assert _later(serial, int(time.strftime("%Y%m%d", yesterday)) * 100 + 99), serial


@pytest.mark.parametrize("complete", [False, True], ids=["include", "complete"])
def test_reverse_zones_answer_each_address_with_its_mx_name(site, tmp_path, complete):
    pointers = reverse_records(site, addresses(site))
    for network in (site.ipv4_network(), site.ipv6_network()):
        zone = reverse_zone_name(network)
        text = with_serial(render_reverse_zone(network, pointers, 3600, ["ns1.example.com"] if complete else (),
                                               "postmaster@example.org"), 1)
        if not complete:
            (tmp_path / "reverse.zone").write_text(text)
            text = (f"$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns1.example.com. hostmaster.example.org. ( 1 3600 900 1209600 300 )\n"
                    f"@ IN NS ns1.example.com.\n$INCLUDE {tmp_path / 'reverse.zone'}\n")
        served = {(name, value) for name, kind, value in _zone_as_nsd_reads_it(tmp_path, zone, text) if kind == "PTR"}
        assert served == {(ipaddress.ip_address(p.address).reverse_pointer, p.name) for p in pointers
                          if ipaddress.ip_address(p.address) in network}


def test_an_mx_named_by_its_domain_puts_no_caa_on_the_domain(tmp_path):
    # CAA at example.org binds every name below it without its own (www, the user's web host's
    # certificate) to the site's CA: an MX named example.org gets none, the other mail names do.
    settings = example_settings()
    settings["hosts"][0]["fqdn"] = "example.org"
    site = site_of(settings)
    zone = render_zone("example.org", dns_records(site, addresses(site)), 3600, ["ns1.example.com"], "postmaster@example.org")
    served = _zone_as_nsd_reads_it(tmp_path, "example.org", with_serial(zone, 1))
    caa = {name for name, kind, _ in served if kind == "CAA"}
    assert "example.org" not in caa and {"mx2.example.org", "mta-sts.example.org"} <= caa


def test_zone_file_holds_one_record_per_line():
    text = render_zone("example.org", [DnsRecord("example.org", "MX", "mx1.example.org", 10),
                                       DnsRecord("mx1.example.org", "AAAA", "2001:db8::10")], 3600)
    assert text.splitlines()[-2:] == ["@\t3600\tIN\tMX\t10\tmx1.example.org.", "mx1\t3600\tIN\tAAAA\t2001:db8::10"]


@pytest.mark.parametrize("value", [
    "2001:db8::20%x\n@\tIN\tMX\t0 mx.attacker.example.",  # an IPv6 zone id carrying a record of its own
    "2001:db8::20 ; comment", "mx1.example.org (", "",
])
def test_a_value_that_would_write_its_own_records_never_reaches_a_zone_file(value):
    with pytest.raises(ValueError):
        render_zone("example.org", [DnsRecord("mx2.example.org", "AAAA", value)], 3600)


@pytest.mark.parametrize("text", ['v=spf1 a -all"\n@ IN NS ns.attacker.example. ; "', "v=DKIM1\\", "caf\u00e9"])
def test_txt_text_that_would_leave_its_quotes_never_reaches_a_zone_file_or_dnsmasq(text):
    record = DnsRecord("example.org", "TXT", text)
    with pytest.raises(ValueError):
        render_zone("example.org", [record], 3600)
    with pytest.raises(ValueError):
        dnsmasq_options([record])


def test_a_ptr_name_that_would_write_its_own_records_never_reaches_a_reverse_zone():
    with pytest.raises(ValueError):
        render_reverse_zone(ipaddress.ip_network("192.0.2.0/24"),
                            [ReverseRecord("192.0.2.10", "mx1.example.org.\n@\tIN\tNS\tns.attacker.example")], 3600)


# -- the lab's dnsmasq, on loopback --------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def lab_dns(site, tmp_path_factory):
    """The lab's dnsmasq.conf, served by the daemon root's dnsmasq on 127.0.0.1; a resolver that
    asks it. dnsmasq stops with the module, or by itself after two minutes."""
    with serving_lab_dns(site, tmp_path_factory.mktemp("lab-dns")) as served:
        yield served


@contextlib.contextmanager
def serving_lab_dns(site, directory: Path):
    """`site`'s lab DNS (dnsmasq on 127.0.0.1) while the block runs: its plan and a resolver."""
    (directory / "secrets").mkdir()
    plan = lab_plan(site, directory / "secrets")
    port = _free_port()
    argv = ["timeout", "120", "chroot", str(daemon_root().path), "dnsmasq", "--keep-in-foreground", "--conf-file=-",
            f"--port={port}", "--pid-file=", "--log-facility=-"]
    log = directory / "dnsmasq.log"
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out, text=True)
    server.stdin.write(render_dnsmasq_conf(plan, listen="127.0.0.1"))
    server.stdin.close()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 2.0
    try:
        for _ in range(100):
            with contextlib.suppress(dns.exception.DNSException):
                resolver.resolve(site.domains[0], "MX", lifetime=0.1)
                break
            assert server.poll() is None, log.read_text()
            time.sleep(0.05)
        yield plan, resolver
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def spf_asks_lab_dns(lab_dns, monkeypatch):
    # pyspf asks dnspython's default resolver.
    monkeypatch.setattr(dns.resolver, "default_resolver", lab_dns[1])
    return lab_dns[0]


def test_spf_passes_mail_from_the_primary_and_fails_any_other_sender(spf_asks_lab_dns):
    plan = spf_asks_lab_dns
    primary, backups = plan.site.primary, plan.site.backups
    for domain in plan.site.domains:
        for address in (primary.ipv4, primary.ipv6):
            assert spf.check2(i=str(address), s=f"alice@{domain}", h=primary.mx_name)[0] == "pass"
        # A backup relays only to the primary and sends nothing out as the site's users.
        assert spf.check2(i=str(backups[0].ipv4), s=f"alice@{domain}", h=backups[0].mx_name)[0] == "fail"
        assert spf.check2(i="198.51.100.7", s=f"alice@{domain}", h="mail.attacker.example")[0] == "fail"


def test_spf_passes_each_mx_by_its_helo_name_for_its_bounces(spf_asks_lab_dns):
    # A bounce has an empty MAIL FROM: SPF checks postmaster@<the HELO name>, each MX's own name.
    plan = spf_asks_lab_dns
    for host in plan.site.hosts:
        for address in (host.ipv4, host.ipv6):
            assert spf.check2(i=str(address), s="", h=host.mx_name)[0] == "pass", host.name
        other = next(h for h in plan.site.hosts if h.name != host.name)
        assert spf.check2(i=str(other.ipv4), s="", h=host.mx_name)[0] == "fail", host.name


@contextlib.contextmanager
def _finally(cleanup):
    try:
        yield
    finally:
        cleanup()


@pytest.fixture(scope="module")
def checkdmarc():
    # Imported here, not at the top: it takes a second, which every test worker would pay at collection.
    import checkdmarc.dmarc
    import checkdmarc.mta_sts
    import checkdmarc.smtp_tls_reporting
    import checkdmarc.utils
    return checkdmarc


def test_dmarc_and_tls_reporting_records_parse_as_served(lab_dns, checkdmarc):
    plan, resolver = lab_dns
    for domain in plan.site.domains:
        found = checkdmarc.dmarc.query_dmarc_record(domain, resolver=resolver)
        # checkdmarc checks that the report address's domain takes this domain's reports
        # (RFC 7489 7.1): example.net's go to postmaster@example.org.
        parsed = checkdmarc.dmarc.parse_dmarc_record(found["record"], domain, resolver=resolver)
        assert parsed["tags"]["p"]["value"] == "quarantine"
        assert [uri["address"] for uri in parsed["tags"]["rua"]["value"]] == ["postmaster@example.org"]
        assert parsed["warnings"] == []
        tls = checkdmarc.smtp_tls_reporting.query_smtp_tls_reporting_record(domain, resolver=resolver)
        rua = checkdmarc.smtp_tls_reporting.parse_smtp_tls_reporting_record(tls["record"])["tags"]["rua"]["value"]
        assert rua == ["mailto:postmaster@example.org"]


def test_dmarc_reports_to_a_name_inside_a_site_domain_are_authorized_for_every_other_domain(checkdmarc, tmp_path):
    # reports.example.org is no site domain but lies in example.org's zone, which the site writes:
    # example.net's reports go there only if that zone says it takes them (RFC 7489 7.1), and
    # nobody else can publish that record in a zone the site owns (Vultr DNS).
    settings = example_settings()
    settings["dns"] = {"dmarcReports": "dmarc@reports.example.org"}
    # checkdmarc keeps answers by name whatever the resolver: none from the module's lab DNS here,
    # and none of this one's left for the tests after.
    checkdmarc.utils.DNS_CACHE.clear()
    with serving_lab_dns(site_of(settings), tmp_path) as (plan, resolver), _finally(checkdmarc.utils.DNS_CACHE.clear):
        for domain in plan.site.domains:
            record = checkdmarc.dmarc.query_dmarc_record(domain, resolver=resolver)["record"]
            parsed = checkdmarc.dmarc.parse_dmarc_record(record, domain, resolver=resolver)
            assert [uri["address"] for uri in parsed["tags"]["rua"]["value"]] == ["dmarc@reports.example.org"]
            assert not [w for w in parsed["warnings"] if "accepts DMARC reports" in w], (domain, parsed["warnings"])


def test_mta_sts_id_is_the_served_policys_and_the_policy_names_exactly_the_mxes(lab_dns, checkdmarc):
    plan, resolver = lab_dns
    policy = checkdmarc.mta_sts.parse_mta_sts_policy(policy_text(plan.site))["policy"]
    assert policy["mode"] == "enforce" and policy["max_age"] == 604800
    for domain in plan.site.domains:
        record = checkdmarc.mta_sts.query_mta_sts_record(domain, resolver=resolver)["record"]
        assert checkdmarc.mta_sts.parse_mta_sts_record(record)["tags"]["id"] == policy_id(plan.site)
        assert sorted(policy["mx"]) == sorted(_served(r) for r in resolver.resolve(domain, "MX"))
        # The policy host is the primary, whose httpd serves it.
        host = f"mta-sts.{domain}"
        assert {_served(r) for r in resolver.resolve(host, "A")} == {str(plan.site.primary.ipv4)}
        assert {_served(r) for r in resolver.resolve(host, "CAA")} == {'0 issue "letsencrypt.org"'}


def test_a_policy_change_changes_its_id():
    site = site_of(example_settings())
    testing = site.model_copy(update={"dns": site.dns.model_copy(update={"mta_sts_mode": "testing"})})
    assert policy_text(testing) != policy_text(site) and policy_id(testing) != policy_id(site)
    assert policy_id(site).isalnum() and 1 <= len(policy_id(site)) <= 32


def test_mail_clients_find_submission_and_imaps_at_the_primary_and_no_plain_imap_or_pop(lab_dns):
    plan, resolver = lab_dns
    primary = plan.site.primary.mx_name
    for domain in plan.site.domains:
        srv = {service: {_served(r) for r in resolver.resolve(f"_{service}._tcp.{domain}", "SRV")}
               for service in ("submissions", "submission", "imaps", "imap", "pop3", "pop3s")}
        assert srv["submissions"] == {f"0 1 465 {primary}"} and srv["submission"] == {f"0 1 587 {primary}"}
        assert srv["imaps"] == {f"0 1 993 {primary}"}
        assert srv["imap"] == srv["pop3"] == srv["pop3s"] == {"0 0 0 ."}


def test_the_primarys_address_still_points_back_at_its_mx_name_only(lab_dns):
    # mta-sts.<domain> carries the primary's address too; its PTR must stay the MX name (FCrDNS).
    plan, resolver = lab_dns
    for address in (plan.site.primary.ipv4, plan.site.primary.ipv6):
        answer = resolver.resolve(ipaddress.ip_address(address).reverse_pointer, "PTR")
        assert {_served(r) for r in answer} == {plan.site.primary.mx_name}


def test_the_lab_dns_answers_exactly_the_computed_records_as_the_dns_scenario_reads_them(lab_dns):
    # The lab's dns scenario compares `dig +short` with presentation(); dig prints what dnspython does.
    plan, resolver = lab_dns
    want: dict[tuple[str, str], set[str]] = {}
    for record in dns_records(plan.site, plan.addresses()):
        want.setdefault((record.name, record.type), set()).add(presentation(record))
    got = {key: {r.to_text() for r in resolver.resolve(key[0], key[1])} for key in want}
    assert got == want
