"""doctor's DNS checks against a real name server: the daemon root's dnsmasq on loopback, serving
the lab's own configuration for the example site (what `lab doctor` asks) and, beside it, one
zone per fault, each a copy of the site's records with one thing wrong. One dnsmasq for the
module (a second, for the zone's own name server, in the test of a resolver behind); both stop
with the module, or by themselves after two minutes."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.resolver
import pytest
from pydantic import SecretStr

from mailsite.daemonroot import daemon_root
from mailsite.dkim import PUBLISHED, SIGNING, DkimSelector, DomainKeys, dkim_records, new_private_key, serialize_domain_keys
from mailsite.dns import DnsRecord, ReverseRecord, dns_records, dnsmasq_options, reverse_records
from mailsite.doctor.core import run_checks
from mailsite.doctor.dns import checks
from mailsite.doctor.view import SiteView
from mailsite.lab.site import lab_plan, render_dnsmasq_conf
from mailsite.model import HostAddresses, Site
from mailsite.mta_sts import policy_id
from mailsite.results import Result, Status
from mailsite.secrets import FileStore, dkim_keys_id, init_secrets
from tests.sites import example_settings, site_of

STACK = "doctor-dns"
SELECTOR = "mailsite20261126"
# The zone's own name server in the test of a resolver behind it: its address in the resolver's
# NS answer; asked on the resolver's port, as doctor asks name servers on the resolver's (53).
ZONE_SERVER = "127.0.53.1"
# A name server that never answers, named by the NS records of the zone dead-ns.example.
SILENT_SERVER = "127.0.53.2"
# The TTL dnsmasq gives its records: a resolver behind says how long it may keep an old answer.
TTL = 300


def _free_port() -> int:
    """A UDP and TCP port free on 127.0.0.1 and on ZONE_SERVER."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with contextlib.ExitStack() as stack:
            try:
                for address in ("127.0.0.1", ZONE_SERVER, SILENT_SERVER):
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        stack.enter_context(socket.socket(socket.AF_INET, kind)).bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on loopback")


@contextlib.contextmanager
def _dnsmasq(conf: str, address: str, port: int, log: Path, ask: str) -> Iterator[None]:
    argv = ["timeout", "120", "chroot", str(daemon_root().path), "dnsmasq", "--keep-in-foreground", "--conf-file=-",
            f"--port={port}", "--pid-file=", "--log-facility=-"]
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out, text=True)
    assert server.stdin is not None
    server.stdin.write(conf)
    server.stdin.close()
    try:
        resolver = _resolver(address, port)
        for _ in range(100):
            with contextlib.suppress(dns.exception.DNSException):
                resolver.resolve(ask, "MX", lifetime=0.1)
                break
            assert server.poll() is None, log.read_text()
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def _resolver(address: str, port: int) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [address], port, 2.0
    return resolver


# -- the zones served ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Zone:
    """A site and what the name server serves of it."""

    site: Site
    records: list[DnsRecord]
    reverse: list[ReverseRecord]
    store: Path

    def lines(self) -> list[str]:
        # dnsmasq's host-record answers the address's PTR too: an address whose PTR does not
        # name it is served by address=, which answers A/AAAA alone.
        pointed = {(r.address, r.name) for r in self.reverse}
        bare = [r for r in self.records if r.type in ("A", "AAAA") and (r.value, r.name) not in pointed]
        return [*(f"local=/{domain}/" for domain in self.site.domains),
                *dnsmasq_options([r for r in self.records if r not in bare]),
                *(f"address=/{r.name}/{r.value}" for r in bare),
                *(f"ptr-record={_pointer(r.address)},{r.name}" for r in self.reverse)]


def _pointer(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


Fault = Callable[[Site, list[DnsRecord], list[ReverseRecord]], tuple[list[DnsRecord], list[ReverseRecord]]]


def _without(predicate: Callable[[DnsRecord], bool]) -> Fault:
    return lambda site, records, reverse: ([r for r in records if not predicate(r)], reverse)


def _changed(predicate: Callable[[DnsRecord], bool], change: Callable[[DnsRecord], DnsRecord]) -> Fault:
    return lambda site, records, reverse: ([change(r) if predicate(r) else r for r in records], reverse)


def _is(name: str, rdtype: str, start: str = "") -> Callable[[DnsRecord], bool]:
    return lambda r: r.name == name and r.type == rdtype and r.value.startswith(start)


@functools.cache
def _other_key() -> str:
    # Made when the module's server starts, not at import: every test worker imports the module.
    return new_private_key(2048)


# Each fault's zone is <fault>.example, the example site's hosts at addresses of its own.
FAULTS: dict[str, Fault] = {
    "fine": lambda site, records, reverse: (records, reverse),
    # The same records written otherwise: mechanisms and tags in another order, blanks, case.
    "rewritten": lambda site, records, reverse: ([replace(r, value=_rewritten(r.value)) if r.type in ("TXT", "CAA") else r
                                                  for r in records], reverse),
    "missing-mx": _without(_is("missing-mx.example", "MX", "mx2.")),
    "wrong-preference": _changed(_is("wrong-preference.example", "MX", "mx2."), lambda r: replace(r, priority=25)),
    "missing-spf": _without(_is("missing-spf.example", "TXT", "v=spf1")),
    "two-spf": lambda site, records, reverse: (
        records + [DnsRecord("two-spf.example", "TXT", "v=spf1 a:mx9.two-spf.example -all")], reverse),
    "wrong-dkim": _changed(_is(f"{SELECTOR}._domainkey.wrong-dkim.example", "TXT"),
                           lambda r: replace(r, value=dkim_records([_keys(r.name.split("._domainkey.")[1], _other_key())])[0].value)),
    "missing-dmarc": _without(_is("_dmarc.missing-dmarc.example", "TXT")),
    "old-sts-id": _changed(_is("_mta-sts.old-sts-id.example", "TXT"), lambda r: replace(r, value="v=STSv1; id=20250101old")),
    "missing-ptr": lambda site, records, reverse: (records, [r for r in reverse if r.name != f"mx2.{site.domains[0]}"]),
    # (its reverse DNS right: only the address is wrong)
    # mx3's IPv4 answers the hoster's name for it, as a VPS's address does until its PTR is set.
    "hosters-ptr": lambda site, records, reverse: (records, [
        replace(r, name="vps-10-12-0-3.hoster.example") if r.name == "mx3.hosters-ptr.example" and "." in r.address else r
        for r in reverse]),
    "wrong-address": lambda site, records, reverse: (
        _changed(_is("mx3.wrong-address.example", "A"), lambda r: replace(r, value="10.99.0.3"))(site, records, reverse)[0],
        [*reverse, ReverseRecord("10.99.0.3", "mx3.wrong-address.example")]),
    "wrong-caa": _changed(_is("mx1.wrong-caa.example", "CAA"), lambda r: replace(r, value='0 issue "ca.attacker.example"')),
    # The stack's mechanisms, but `-all` first: a receiver tests nothing after it (RFC 7208 5.1).
    "spf-all-first": _changed(_is("spf-all-first.example", "TXT", "v=spf1"),
                              lambda r: replace(r, value=" ".join(["v=spf1", "-all", *r.value.split()[1:-1]]))),
    # The key right, the version tag last (RFC 6376 3.6.1: first, or the record is not a key).
    "dkim-version-last": _changed(_is(f"{SELECTOR}._domainkey.dkim-version-last.example", "TXT"),
                                  lambda r: replace(r, value=r.value.removeprefix("v=DKIM1; ") + "; v=DKIM1")),
    # ... or not DKIM1 to the letter: "any other value MUST be discarded".
    "dkim-version-case": _changed(_is(f"{SELECTOR}._domainkey.dkim-version-case.example", "TXT"),
                                  lambda r: replace(r, value=r.value.replace("v=DKIM1", "v=dkim1"))),
    # mx2's name an alias (CNAME, served beside, ALIASED) of the VM's own name, which holds every record mx2's should.
    "hostile-txt": lambda site, records, reverse: (records, reverse),  # and HOSTILE_SPF
    # The key alone: v= and k= left to their defaults, DKIM1 and rsa (RFC 6376 3.6.1).
    "dkim-defaults": _changed(_is(f"{SELECTOR}._domainkey.dkim-defaults.example", "TXT"),
                              lambda r: replace(r, value=r.value.replace("v=DKIM1; k=rsa; ", ""))),
    # DMARC's defaults written out (RFC 7489 6.3): the same policy.
    "dmarc-defaults": _changed(_is("_dmarc.dmarc-defaults.example", "TXT"),
                               lambda r: replace(r, value=r.value + "; adkim=r; aspf=r; pct=100; fo=0; rf=afrf; ri=86400")),
    # mx2's HELO record naming mx2 itself (a:mx2.<domain>), which means what the stack's `a` does.
    "helo-own-name": _changed(_is("mx2.helo-own-name.example", "TXT", "v=spf1"),
                              lambda r: replace(r, value="v=spf1 a:MX2.helo-own-name.example. -all")),
    # What a receiver acts on, each a record beside or instead of the stack's (see HELD).
    "spf-softfail": _changed(_is("spf-softfail.example", "TXT", "v=spf1"), lambda r: replace(r, value=r.value.replace("-all", "~all"))),
    "spf-pass-all": _changed(_is("spf-pass-all.example", "TXT", "v=spf1"), lambda r: replace(r, value=r.value.replace("-all", "+all"))),
    "dmarc-none": _changed(_is("_dmarc.dmarc-none.example", "TXT"), lambda r: replace(r, value=r.value.replace("p=quarantine", "p=none"))),
    "two-sts": lambda site, records, reverse: (
        records + [DnsRecord("_mta-sts.two-sts.example", "TXT", "v=STSv1; id=20250101old")], reverse),
    "second-ca": lambda site, records, reverse: (
        records + [DnsRecord("mx1.second-ca.example", "CAA", '0 issue "ca.attacker.example"')], reverse),
    "ptr-elsewhere": lambda site, records, reverse: (records + [DnsRecord("mx1.elsewhere.example", "A", "10.99.0.9")], [
        replace(r, name="mx1.elsewhere.example") if r.name == "mx3.ptr-elsewhere.example" and "." in r.address else r
        for r in reverse]),
    "mx-cname": lambda site, records, reverse: (
        [replace(r, name=_ALIASED[1]) if r.name == _ALIASED[0] and r.type != "MX" else r for r in records],
        [replace(r, name=_ALIASED[1]) if r.name == _ALIASED[0] else r for r in reverse]),
}
_ALIASED = ("mx2.mx-cname.example", "vm2.mx-cname.example")
# A second SPF record at hostile-txt.example, served beside the stack's as raw TXT: a terminal's
# escape sequence, quotes and a backslash, non-ASCII, a NUL, in strings to be joined.
HOSTILE_SPF = [b"v=spf1 a:mx1.hostile-txt.example ", b'\x1b[2J"x"\\ \xc3\xa9\x00 ', b"z" * 255, b" -all"]
# Not served at all: the resolver refuses it (dnsmasq asks no upstream).
UNSERVED = "unserved"
# Served old by the resolver (an MTA-STS id from before a change), new by the zone's own name server.
BEHIND = "behind"


def _rewritten(text: str) -> str:
    """`text` as someone else might write it, meaning the same to a receiver."""
    if text.startswith("0 issue "):  # the tag and the CA's name, without case
        return f'0 ISSUE "{text.removeprefix("0 issue ").strip(chr(34)).title()}"'
    if text.startswith("v=spf1 "):
        *mechanisms, closing = text.split(" ")[1:]
        # ... and each domain with its final dot (RFC 7208 7.1 allows it).
        return " ".join(["v=spf1", *(f"+{m.upper()}{'.' if ':' in m else ''}" for m in reversed(mechanisms)), closing])
    version, *tags = text.split("; ")
    return ";".join([version, *(f"  {tag} " for tag in reversed(tags))]).replace("quarantine", "Quarantine")


def _keys(domain: str, pem: str, new_pem: str | None = None) -> DomainKeys:
    """The domain's key signing, and with `new_pem` a new one published to sign next (a rotation)."""
    now = datetime.now(timezone.utc)
    signing = DkimSelector(SELECTOR, SecretStr(pem), now, SIGNING, since=now)
    if new_pem is None:
        return DomainKeys(domain, (signing,))
    return DomainKeys(domain, (signing, DkimSelector(f"{SELECTOR}b", SecretStr(new_pem), now, PUBLISHED)))


def _fault_site(name: str, index: int, secrets: Path, vultr: bool = False) -> Site:
    settings = example_settings()
    settings["domains"] = [f"{name}.example"]
    settings["recipients"].pop("catchAll", None)
    settings["secrets"] = {"backend": "file", "path": str(secrets)}
    if vultr:  # addresses the provider allocates: the stack knows none of them
        settings.update(target="vultr")
        settings["network"]["addressing"] = "autoconf"
        settings["hosts"] = [{"name": f"mx{n}", "role": "primary" if n == 1 else "backup", "ipv4": "allocate",
                              "ipv6": "allocate", "egressInterface": "vio0"} for n in (1, 2, 3)]
        return site_of(settings)
    settings["hosts"] = [{"name": f"mx{n}", "role": "primary" if n == 1 else "backup",
                          "ipv4": f"10.{index}.0.{n}", "ipv6": f"2001:db8:{index}::{n}"} for n in (1, 2, 3)]
    settings["network"].update(ipv4Gateway=f"10.{index}.0.254", ipv6Gateway=f"2001:db8:{index}::ffff")
    return site_of(settings)


def _zone(name: str, index: int, secrets: Path, key: str, fault: Fault, *, vultr: bool = False,
          new_key: str | None = None, stored: bool = True) -> Zone:
    """The zone <name>.example as `fault` leaves it; `stored`: its DKIM keys in the secrets backend."""
    site = _fault_site(name, index, secrets, vultr)
    domain = site.domains[0]
    keys = _keys(domain, key, new_key)
    if stored:
        FileStore(secrets).create(dkim_keys_id(STACK, domain), serialize_domain_keys(keys))
    allocated = {host.name: HostAddresses(ipaddress.IPv4Address(f"10.{index}.0.{n}"), ipaddress.IPv6Address(f"2001:db8:{index}::{n}"))
                 for n, host in enumerate(site.hosts, start=1)}
    records, reverse = fault(site, dns_records(site, allocated, dkim_records([keys])), reverse_records(site, allocated))
    return Zone(site, records, reverse, secrets)


@dataclass(frozen=True)
class Served:
    port: int
    lab: Zone  # the example site as the lab's dnsmasq.conf serves it
    zones: dict[str, Zone]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("doctor-dns")
    lab_secrets, secrets = directory / "lab-secrets", directory / "secrets"
    secrets.mkdir(mode=0o700)
    plan = lab_plan(site_of(example_settings()), lab_secrets)
    init_secrets(plan.site, STACK, directory)
    lab_dkim = dkim_records([_domain_keys(plan.site, lab_secrets, d) for d in plan.site.domains])
    lab = Zone(plan.site, [], [], lab_secrets)
    key = new_private_key(2048)
    zones = {name: _zone(name, index + 1, secrets, key, fault) for index, (name, fault) in enumerate(FAULTS.items())}
    zones[UNSERVED] = _zone(UNSERVED, 90, secrets, key, FAULTS["fine"])
    zones["new-key-unpublished"] = _zone("new-key-unpublished", 92, secrets, key, _without(
        _is(f"{SELECTOR}b._domainkey.new-key-unpublished.example", "TXT")), new_key=_other_key())
    # Every SRV record gone, and the zone's name server silent.
    zones["dead-ns"] = _zone("dead-ns", 95, secrets, key, _without(lambda r: r.type == "SRV"))
    zones["no-dkim-keys"] = _zone("no-dkim-keys", 93, secrets, key, FAULTS["fine"], stored=False)
    # On Vultr: mx3's A record gone, mx2's reverse DNS unset.
    zones["on-vultr"] = _zone("on-vultr", 94, secrets, key, lambda site, records, reverse: (
        [r for r in records if not _is("mx3.on-vultr.example", "A")(r)],
        [r for r in reverse if r.name != "mx2.on-vultr.example"]), vultr=True)
    zones[BEHIND] = _zone(BEHIND, 91, secrets, key, FAULTS["fine"])
    # On Vultr (addresses allocated, so not in the stack): mx2's A record typed by hand as loopback.
    zones["loopback-a"] = _zone("loopback-a", 96, secrets, key, lambda site, records, reverse: (
        [replace(r, value="127.0.0.1") if _is("mx2.loopback-a.example", "A")(r) else r for r in records],
        [r for r in reverse if not (r.name == "mx2.loopback-a.example" and ipaddress.ip_address(r.address).version == 4)]),
        vultr=True)
    behind = zones[BEHIND]
    old = [replace(r, value="v=STSv1; id=20250101old") if r.name == f"_mta-sts.{BEHIND}.example" else r for r in behind.records]
    port = _free_port()
    resolver_conf = "\n".join([
        render_dnsmasq_conf(plan, listen="127.0.0.1", dkim=lab_dkim),
        f"local-ttl={TTL}",
        # A PTR the server does not hold is answered NXDOMAIN, as the internet's reverse zones do.
        "local=/in-addr.arpa/", "local=/ip6.arpa/",
        *(line for name, zone in zones.items() if name not in (UNSERVED, BEHIND) for line in zone.lines()),
        *Zone(behind.site, old, behind.reverse, secrets).lines(),
        f"dns-rr={BEHIND}.example,2,{_wire(f'ns1.{BEHIND}.example')}",
        f"host-record=ns1.{BEHIND}.example,{ZONE_SERVER}",
        f"dns-rr=dead-ns.example,2,{_wire('ns1.dead-ns.example')}",
        f"cname={_ALIASED[0]},{_ALIASED[1]}",
        f"dns-rr=hostile-txt.example,16,{b''.join(bytes([len(part)]) + part for part in HOSTILE_SPF).hex()}",
        f"host-record=ns1.dead-ns.example,{SILENT_SERVER}",
    ]) + "\n"
    zone_conf = "\n".join(["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={ZONE_SERVER}",
                           *behind.lines()]) + "\n"
    with _dnsmasq(resolver_conf, "127.0.0.1", port, directory / "dnsmasq.log", plan.site.domains[0]), \
            _dnsmasq(zone_conf, ZONE_SERVER, port, directory / "zone-server.log", behind.site.domains[0]):
        yield Served(port, lab, zones)


def _wire(name: str) -> str:
    wire = dns.name.from_text(name).to_wire()
    assert wire is not None
    return wire.hex()


def _domain_keys(site: Site, secrets: Path, domain: str) -> DomainKeys:
    from mailsite.secrets import domain_keys
    found = domain_keys(FileStore(secrets), STACK, domain)
    assert found is not None
    return found[0]


def _doctor(served: Served, zone: Zone, port: int | None = None, timeout: float = 2.0,
            deadline: float = 20.0) -> dict[str, Result]:
    """Every DNS check of `zone`'s site, asking the module's dnsmasq (or what listens on `port`),
    each query within `timeout`, each check within `deadline`."""
    view = SiteView(zone.site, STACK, _resolver("127.0.0.1", port or served.port), control=lambda host: None,  # type: ignore[arg-type,return-value]
                    store=lambda: FileStore(zone.store), cafile=None, now=datetime.now(timezone.utc), timeout=timeout)
    found = checks(view)
    assert {check.area for check in found} == {"dns"}
    return {result.name: result for result in run_checks(found, timeout=deadline)}


def _failed_only(results: dict[str, Result], name: str) -> Result:
    """The one check that failed, named `name`; every other one passed."""
    others = {n: (r.status, r.seen) for n, r in results.items() if n != name and r.status is not Status.PASS}
    assert others == {}
    result = results[name]
    assert result.status is Status.FAIL, result
    return result


# -- what the admin relies on --------------------------------------------------------------------

def test_the_lab_dns_passes_every_dns_check(served):
    results = _doctor(served, served.lab)
    assert {n: (r.status, r.seen, r.fix) for n, r in results.items() if r.status is not Status.PASS} == {}
    names = "\n".join(results)
    for what in ("MX records", "SPF record", "DKIM records", "DMARC record", "MTA-STS record", "TLS-RPT record",
                 "mail client SRV records", "CAA record", "A/AAAA records", "reverse DNS"):
        assert what in names
    assert all(f"{host.mx_name}: reverse DNS names it (forward-confirmed)" in results for host in served.lab.site.hosts)


def test_a_dkim_record_leaving_v_and_k_to_their_defaults_passes(served):
    zone = served.zones["dkim-defaults"]
    assert [r.value[:4] for r in zone.records if r.name.endswith("._domainkey.dkim-defaults.example")] == ["p=MI"]
    results = _doctor(served, zone)
    assert {n: (r.status, r.seen) for n, r in results.items() if r.status is not Status.PASS} == {}


def test_a_dmarc_record_writing_out_its_defaults_passes(served):
    results = _doctor(served, served.zones["dmarc-defaults"])
    assert {n: (r.status, r.seen) for n, r in results.items() if r.status is not Status.PASS} == {}


def test_a_helo_spf_record_naming_its_own_name_passes(served):
    zone = served.zones["helo-own-name"]
    assert 'txt-record=mx2.helo-own-name.example,"v=spf1 a:MX2.helo-own-name.example. -all"' in zone.lines()
    results = _doctor(served, zone)
    assert {n: (r.status, r.seen) for n, r in results.items() if r.status is not Status.PASS} == {}


def test_records_written_otherwise_but_meaning_the_same_pass(served):
    zone = served.zones["rewritten"]
    assert 'txt-record=rewritten.example,"v=spf1 +A:MX1.REWRITTEN.EXAMPLE. -all"' in zone.lines()
    assert '0 ISSUE "Letsencrypt.Org"' in [r.value for r in zone.records if r.type == "CAA"]
    results = _doctor(served, zone)
    assert {n: (r.status, r.seen) for n, r in results.items() if r.status is not Status.PASS} == {}


def test_a_missing_mx_fails_naming_the_record_to_publish(served):
    result = _failed_only(_doctor(served, served.zones["missing-mx"]), "missing-mx.example: MX records (each MX and its preference)")
    assert "publish missing-mx.example. 3600 IN MX 20 mx2.missing-mx.example." in result.fix
    assert "zone file in libvirt.zoneDir" in result.fix  # where: the libvirt target writes it


def test_a_wrong_mx_preference_fails_naming_both_records(served):
    result = _failed_only(_doctor(served, served.zones["wrong-preference"]), "wrong-preference.example: MX records (each MX and its preference)")
    assert "publish wrong-preference.example. 3600 IN MX 20 mx2.wrong-preference.example." in result.fix
    assert "remove wrong-preference.example. IN MX 25 mx2.wrong-preference.example." in result.fix
    assert f"up to {TTL} s" in result.fix


def test_a_missing_spf_record_fails_naming_it(served):
    result = _failed_only(_doctor(served, served.zones["missing-spf"]), "missing-spf.example: SPF record")
    assert 'publish missing-spf.example. 3600 IN TXT "v=spf1 a:mx1.missing-spf.example -all"' in result.fix
    assert "none served" in result.seen


def test_a_second_spf_record_fails_asking_to_remove_it(served):
    result = _failed_only(_doctor(served, served.zones["two-spf"]), "two-spf.example: SPF record")
    assert 'remove two-spf.example. IN TXT "v=spf1 a:mx9.two-spf.example -all"' in result.fix


def test_a_wrong_dkim_key_fails_naming_the_selector_and_its_record(served):
    zone = served.zones["wrong-dkim"]
    result = _failed_only(_doctor(served, zone), "wrong-dkim.example: DKIM records of the keys in the secrets backend")
    right = dkim_records([_domain_keys(zone.site, zone.store, "wrong-dkim.example")])[0]
    assert f"selector {SELECTOR}" in result.seen and "receivers fail its signatures" in result.seen
    assert f"publish {SELECTOR}._domainkey.wrong-dkim.example. 3600 IN TXT" in result.fix
    assert right.value[-40:] in result.fix  # the key in the backend, not the one served
    assert "PRIVATE" not in result.seen + result.fix


def test_a_missing_dmarc_record_fails_naming_it(served):
    result = _failed_only(_doctor(served, served.zones["missing-dmarc"]), "missing-dmarc.example: DMARC record")
    assert ('publish _dmarc.missing-dmarc.example. 3600 IN TXT '
            '"v=DMARC1; p=quarantine; rua=mailto:postmaster@missing-dmarc.example"') in result.fix


def test_an_mta_sts_id_that_is_not_the_policys_fails_naming_the_right_one(served):
    zone = served.zones["old-sts-id"]
    result = _failed_only(_doctor(served, zone), "old-sts-id.example: MTA-STS record (the policy's id)")
    assert f'publish _mta-sts.old-sts-id.example. 3600 IN TXT "v=STSv1; id={policy_id(zone.site)}"' in result.fix
    assert 'remove _mta-sts.old-sts-id.example. IN TXT "v=STSv1; id=20250101old"' in result.fix


def test_a_missing_ptr_fails_naming_the_address_and_the_ptr_record(served):
    zone = served.zones["missing-ptr"]
    result = _failed_only(_doctor(served, zone), "mx2.missing-ptr.example: reverse DNS names it (forward-confirmed)")
    mx2 = zone.site.host("mx2")
    assert f"{mx2.ipv4} has no PTR record" in result.seen and f"{mx2.ipv6} has no PTR record" in result.seen
    assert "IN PTR mx2.missing-ptr.example." in result.fix
    assert "reverse zone" in result.fix


def test_an_mx_address_other_than_the_stacks_fails(served):
    result = _failed_only(_doctor(served, served.zones["wrong-address"]), "mx3.wrong-address.example: A/AAAA records")
    assert "publish mx3.wrong-address.example. 3600 IN A" in result.fix
    assert "remove mx3.wrong-address.example. IN A 10.99.0.3" in result.fix


def test_a_caa_record_naming_another_ca_fails(served):
    result = _failed_only(_doctor(served, served.zones["wrong-caa"]), "mx1.wrong-caa.example: CAA record")
    assert 'publish mx1.wrong-caa.example. 3600 IN CAA 0 issue "letsencrypt.org"' in result.fix


def test_a_resolver_that_refuses_is_cannot_tell_never_pass(served):
    results = _doctor(served, served.zones[UNSERVED])
    assert results and {r.status for r in results.values()} == {Status.WARN}
    assert all(r.seen.startswith("cannot tell") for r in results.values()), [r.seen for r in results.values()]


def test_a_resolver_behind_the_zones_name_servers_warns_with_its_ttl(served):
    results = _doctor(served, served.zones[BEHIND])
    result = results[f"{BEHIND}.example: MTA-STS record (the policy's id)"]
    assert result.status is Status.WARN, result
    assert "already serve the stack's" in result.seen and f"up to {TTL} s" in result.fix
    assert {n for n, r in results.items() if r.status is not Status.PASS} == {result.name}



def test_a_resolver_that_does_not_answer_is_cannot_tell_before_the_checks_deadline(served):
    # Six names in one check (mx1's A/AAAA and its MTA-STS hosts'): asked one after another, each
    # waiting out its timeout, the check would pass its deadline and say nothing but "no answer".
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        results = _doctor(served, served.zones["fine"], port=silent.getsockname()[1], timeout=0.3, deadline=1.5)
    assert {r.status for r in results.values()} == {Status.WARN}, [(r.name, r.seen) for r in results.values()]
    assert all(r.seen.startswith("cannot tell") and "no answer within 0.3 s" in r.seen for r in results.values())
    assert all("--nameserver" in r.fix for r in results.values())


def test_a_new_key_not_yet_in_dns_warns_that_the_rotation_waits(served):
    results = _doctor(served, served.zones["new-key-unpublished"])
    result = results["new-key-unpublished.example: DKIM records of the keys in the secrets backend"]
    assert result.status is Status.WARN, result
    assert f"selector {SELECTOR}b" in result.seen and "not signing yet" in result.seen
    assert f"publish {SELECTOR}b._domainkey.new-key-unpublished.example. 3600 IN TXT" in result.fix
    assert {n for n, r in results.items() if r.status is not Status.PASS} == {result.name}


def test_a_domain_without_dkim_keys_in_the_backend_fails_saying_how_to_make_them(served):
    result = _failed_only(_doctor(served, served.zones["no-dkim-keys"]),
                          "no-dkim-keys.example: DKIM records of the keys in the secrets backend")
    assert "secrets init" in result.fix


def test_on_vultr_a_missing_a_record_and_reverse_dns_name_vultr_and_pulumi_up(served):
    results = _doctor(served, served.zones["on-vultr"])
    failed = {n: r for n, r in results.items() if r.status is not Status.PASS}
    assert set(failed) == {"mx3.on-vultr.example: A/AAAA records", "mx2.on-vultr.example: reverse DNS names it (forward-confirmed)"}, failed
    missing = failed["mx3.on-vultr.example: A/AAAA records"]
    assert missing.status is Status.FAIL and "no A record" in missing.seen and "pulumi up" in missing.fix
    assert "Vultr DNS" in missing.fix
    reverse = failed["mx2.on-vultr.example: reverse DNS names it (forward-confirmed)"]
    assert reverse.status is Status.FAIL and "10.94.0.2 has no PTR record" in reverse.seen
    assert "reverse DNS to mx2.on-vultr.example at Vultr" in reverse.fix


def test_an_mx_name_served_a_loopback_address_fails_naming_it(served):
    # Checked from outside, 127.0.0.1 would be the machine doctor runs on: a PASS there would be
    # a check of the wrong host.
    result = _doctor(served, served.zones["loopback-a"])["mx2.loopback-a.example: A/AAAA records"]
    assert result.status is Status.FAIL and "no sender can reach: 127.0.0.1" in result.seen and "Vultr DNS" in result.fix


def test_a_silent_name_server_of_the_zone_holds_no_check_past_its_deadline(served):
    # Six SRV names differ from the stack; the zone's one name server never answers. Asked once
    # per name, it would take six timeouts; doctor stops asking it after the first.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((SILENT_SERVER, served.port))
        results = _doctor(served, served.zones["dead-ns"], timeout=0.3, deadline=1.2)
    result = _failed_only(results, "dead-ns.example: mail client SRV records")
    assert "publish _submission._tcp.dead-ns.example. 3600 IN SRV 0 1 587 mx1.dead-ns.example." in result.fix


def test_a_ptr_naming_the_hosters_name_fails_asking_for_the_mx_name(served):
    zone = served.zones["hosters-ptr"]
    result = _failed_only(_doctor(served, zone), "mx3.hosters-ptr.example: reverse DNS names it (forward-confirmed)")
    mx3 = zone.site.host("mx3")
    assert f"{mx3.ipv4} answers vps-10-12-0-3.hoster.example (which does not even resolve back to it)" in result.seen
    assert f"{mx3.ipv4.reverse_pointer}. 3600 IN PTR mx3.hosters-ptr.example." in result.fix


# -- found in review (issue 17) ------------------------------------------------------------------

@contextlib.contextmanager
def _slow_resolver(port: int, delay: float) -> Iterator[int]:
    """A resolver on loopback that answers every query as the module's dnsmasq does, `delay`
    seconds late; yields its port. It stops with the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def answer(data: bytes, client) -> None:
        time.sleep(delay)
        with contextlib.suppress(dns.exception.DNSException, OSError):
            reply, _ = dns.query.udp_with_fallback(dns.message.from_wire(data), "127.0.0.1", timeout=2, port=port)
            sock.sendto(reply.to_wire(), client)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, client = sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=answer, args=(data, client), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        server.join(timeout=5)
        sock.close()


def test_a_resolver_that_answers_slowly_is_cannot_tell_before_each_checks_deadline(served):
    # Every answer 0.8 s late, each inside the 1 s timeout: a check of four names or more (mx1's
    # A/AAAA and its MTA-STS hosts', a reverse check) asking one after another would pass the 3 s
    # doctor gives it (three timeouts) and be cut off as a bare FAIL saying nothing it saw.
    with _slow_resolver(served.port, 0.8) as port:
        results = _doctor(served, served.zones["fine"], port=port, timeout=1.0, deadline=3.0)
    assert {n: r.seen for n, r in results.items() if r.status is Status.FAIL} == {}
    slow = [r for r in results.values() if r.status is Status.WARN]
    assert slow and all(r.seen.startswith("cannot tell") for r in slow), slow
    assert any("answers too slowly: the 2.5 s this check may ask for ran out" in r.seen for r in slow), slow
    assert all(r.status is Status.PASS for r in results.values() if r not in slow)


def test_an_spf_record_with_all_before_the_stacks_mechanisms_fails(served):
    # Every mechanism of the stack's record is there, but after `-all`, where no receiver looks:
    # the site's own mail fails SPF.
    result = _failed_only(_doctor(served, served.zones["spf-all-first"]), "spf-all-first.example: SPF record")
    assert 'remove spf-all-first.example. IN TXT "v=spf1 -all a:mx1.spf-all-first.example"' in result.fix
    assert 'publish spf-all-first.example. 3600 IN TXT "v=spf1 a:mx1.spf-all-first.example -all"' in result.fix


@pytest.mark.parametrize("zone", ["dkim-version-last", "dkim-version-case"])
def test_a_dkim_record_whose_version_tag_verifiers_discard_fails(served, zone):
    # The right key, but v= not first, or not "DKIM1" to the letter: verifiers discard the record
    # (RFC 6376 3.6.1) and every signature of the domain fails.
    result = _failed_only(_doctor(served, served.zones[zone]), f"{zone}.example: DKIM records of the keys in the secrets backend")
    assert f"selector {SELECTOR}" in result.seen and "receivers fail its signatures" in result.seen
    assert f'publish {SELECTOR}._domainkey.{zone}.example. 3600 IN TXT "v=DKIM1; k=rsa; p=' in result.fix


def test_an_mx_name_that_is_an_alias_fails_asking_for_its_own_records(served):
    # mx2.mx-cname.example CNAME vm2.mx-cname.example, which has mx2's addresses: a resolver that
    # follows the alias answers them, but an MX target must not be an alias (RFC 2181 10.3): MTAs
    # may refuse to deliver to it, and the name the MX greets with is not the one its PTR names.
    results = _doctor(served, served.zones["mx-cname"])
    result = results[f"{_ALIASED[0]}: A/AAAA records"]
    assert result.status is Status.FAIL, result
    assert f"{_ALIASED[0]} is an alias (CNAME) of {_ALIASED[1]}" in result.seen
    assert f"remove {_ALIASED[0]}. IN CNAME {_ALIASED[1]}." in result.fix
    assert f"publish {_ALIASED[0]}. 3600 IN A 10." in result.fix and f"publish {_ALIASED[0]}. 3600 IN AAAA 2001:db8:" in result.fix
    assert results["mx1.mx-cname.example: A/AAAA records"].status is Status.PASS


def test_the_lab_dns_answers_a_missing_ptr_as_missing_and_holds_no_other_reverse_zone(tmp_path):
    # The lab's own dnsmasq.conf with mx2's addresses served without their PTRs (address= answers
    # A/AAAA alone; a host-record would answer the PTR too): the lab's reverse zones say NXDOMAIN,
    # as a provider's do, and doctor FAILs naming the PTR to publish, where REFUSED was cannot tell.
    plan = lab_plan(site_of(example_settings()), tmp_path / "secrets")
    mx2 = plan.site.host("mx2")
    unpointed = {f"host-record={mx2.mx_name},{address}": f"address=/{mx2.mx_name}/{address}" for address in (mx2.ipv4, mx2.ipv6)}
    lines = render_dnsmasq_conf(plan, listen="127.0.0.1").splitlines()
    assert set(unpointed) <= set(lines)
    conf = "\n".join(unpointed.get(line, line) for line in lines if line != f"ptr-record={_pointer(str(mx2.ipv4))},{mx2.mx_name}"
                     and line != f"ptr-record={_pointer(str(mx2.ipv6))},{mx2.mx_name}") + "\n"
    port = _free_port()
    with _dnsmasq(conf, "127.0.0.1", port, tmp_path / "dnsmasq.log", plan.site.domains[0]):
        resolver = _resolver("127.0.0.1", port)
        view = SiteView(plan.site, STACK, resolver, control=lambda host: None,  # type: ignore[arg-type,return-value]
                        store=lambda: FileStore(tmp_path / "secrets"), cafile=None, now=datetime.now(timezone.utc), timeout=2.0)
        results = {r.name: r for r in run_checks(checks(view), timeout=20.0)}
        # Outside the lab's networks nothing is the lab's to answer: still refused.
        for outside in ("192.0.2.1", "10.78.0.1", "fd00:78::1"):
            with pytest.raises(dns.resolver.NoNameservers, match="REFUSED"):
                resolver.resolve(_pointer(outside), "PTR")
    missing = results[f"{mx2.mx_name}: reverse DNS names it (forward-confirmed)"]
    assert missing.status is Status.FAIL, missing
    assert f"{mx2.ipv4} has no PTR record" in missing.seen and f"{mx2.ipv6} has no PTR record" in missing.seen
    assert f"{_pointer(str(mx2.ipv4))}. 3600 IN PTR {mx2.mx_name}." in missing.fix
    assert results[f"{plan.site.host('mx1').mx_name}: reverse DNS names it (forward-confirmed)"].status is Status.PASS
    assert results[f"{mx2.mx_name}: A/AAAA records"].status is Status.PASS


def test_a_hostile_txt_record_is_named_escaped_as_a_zone_file_writes_it(served):
    # A second SPF record (a permerror) holding what a terminal obeys and what ends a zone file's
    # string: the fix names it to remove as a zone file line reads it, in printable ASCII.
    result = _failed_only(_doctor(served, served.zones["hostile-txt"]), "hostile-txt.example: SPF record")
    remove = next(fix for fix in result.fix.split("; ") if fix.startswith("remove "))
    assert remove == ('remove hostile-txt.example. IN TXT "v=spf1 a:mx1.hostile-txt.example \\027[2J\\"x\\"\\\\ '
                      '\\195\\169\\000 ' + "z" * 255 + ' -all"')
    text = result.name + result.seen + result.fix
    assert text.isascii() and text.isprintable(), text


def test_a_huge_record_is_named_for_removal_by_its_start_and_length():
    # A name server may serve a TXT record of up to 64 KB (over TCP): a fix line shows its start.
    from mailsite.doctor.dns import SPF, _removed
    removed = _removed(SPF, "v=spf1 " + "\x1b" * 65000)
    assert removed.startswith('"v=spf1 \\027\\027') and removed.endswith('..." (a record of 65007 characters)')
    assert len(removed) < 600



# Each a record that is wrong in a way a receiving MTA acts on, and the one check that FAILs it.
HELD = {
    "spf-softfail": "spf-softfail.example: SPF record",  # ~all: forged mail only marked
    "spf-pass-all": "spf-pass-all.example: SPF record",  # +all: anyone may send as the domain
    "dmarc-none": "dmarc-none.example: DMARC record",  # p=none where the stack quarantines
    "two-sts": "two-sts.example: MTA-STS record (the policy's id)",  # two: senders take no policy (RFC 8461 3.1)
    "second-ca": "mx1.second-ca.example: CAA record",  # another CA may issue for the MX too
    # mx3's IPv4 PTR names a name that resolves elsewhere: not forward-confirmed.
    "ptr-elsewhere": "mx3.ptr-elsewhere.example: reverse DNS names it (forward-confirmed)",
}


@pytest.mark.parametrize("zone", sorted(HELD))
def test_a_record_wrong_as_a_receiver_reads_it_fails_its_check_alone(served, zone):
    result = _failed_only(_doctor(served, served.zones[zone]), HELD[zone])
    assert result.fix
