"""rotate-dkim-key: a domain's key rotated with overlapping selectors, one step per run, against the
file backend and a real Secrets Manager endpoint (moto_server). Between runs, `up` stands for
`pulumi up`: DNS serves the records the program would publish (over the DNS protocol, on loopback)
and the primary's image is the one the program would render now (its key-versions file says which
key it signs with). The clock is the test's: no test waits."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import dkim
import pytest
import yaml

from mailsite.config import load_site
from mailsite.dkim import PUBLISHED, RETIRING, SIGNING, dkim_records, signing_hosts
from mailsite.dkim_rotation import dns_lookup, rotate_domain
from mailsite.facts import parse_key_versions
from mailsite.render import render_host
from mailsite.secrets import dkim_keys_id, domain_keys, host_store, init_secrets, site_dkim_keys, site_secrets
from tests.dkim_dns import TxtServer
from tests.sites import ROOT, addresses, example_settings

DOMAIN = "example.org"
T0 = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["file", "aws-secretsmanager"])
def backend(request, tmp_path, moto_endpoint):
    settings = example_settings()
    if request.param == "file":
        settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    else:
        settings["secrets"] = {"backend": "aws-secretsmanager", "region": "eu-central-1", "endpointUrl": moto_endpoint}
    return load_site(settings), f"t{os.urandom(4).hex()}"


@pytest.fixture
def dns_server():
    server = TxtServer()
    yield server
    server.close()


class Deployed:
    """The deployed site as `pulumi up` leaves it: DNS and the primary's image, from the backend."""

    def __init__(self, site, stack, server):
        self.site, self.stack, self.server = site, stack, server
        init_secrets(site, stack, ROOT)
        self.store = host_store(site, ROOT)
        self.lookup = dns_lookup(server.address, server.port, timeout=2)
        self.up()

    def up(self, only=None):
        """DNS published; every host's image (or those named in `only`) rendered anew."""
        self.server.publish(dkim_records(site_dkim_keys(self.site, self.stack, ROOT).values()))
        secrets = site_secrets(self.site, self.stack, ROOT)
        self.images = getattr(self, "images", {})
        for host in self.site.hosts:
            if only is None or host.name in only:
                tree = render_host(self.site, host, addresses(self.site), secrets[host.name])
                self.images[host.name] = parse_key_versions(tree["etc/mailsite/key-versions"].text)

    def run(self, now, hurry=False):
        return rotate_domain(self.site, self.stack, self.store, DOMAIN, now, self.lookup,
                             lambda host, domain: self.images[host.name].get(f"dkim-{domain}"), hurry)

    def keys(self):
        return domain_keys(self.store, self.stack, DOMAIN)[0]

    def published(self):
        return sorted(name.split(".")[0] for name in self.server.records if name.endswith(f"._domainkey.{DOMAIN}"))


@pytest.fixture
def deployed(backend, dns_server):
    return Deployed(*backend, dns_server)


MESSAGE = b"From: alice@example.org\r\nTo: someone@outside.test\r\nSubject: rotation\r\n\r\nHello.\r\n"


def _signed(keys, selector):
    return dkim.sign(MESSAGE, selector.name.encode(), DOMAIN.encode(), selector.private_key.get_secret_value().encode(),
                     include_headers=[b"from", b"to", b"subject"]) + MESSAGE


def _verifies(deployed, message):
    def dnsfunc(name, timeout=5):
        texts = deployed.lookup(name.decode().rstrip("."))
        return texts[0].encode() if texts else b""
    return dkim.verify(message, dnsfunc=dnsfunc)


def test_rotation_publishes_signs_then_retires_and_mail_signed_before_and_after_verifies(deployed):
    first = deployed.keys().signing
    before = _signed(deployed.keys(), first)

    step = deployed.run(T0)
    assert step.outcome == "advanced" and "pulumi up" in step.message
    new = deployed.keys().in_state(PUBLISHED)
    assert new is not None and new.name == "mailsite20261126" + ("b" if first.name == "mailsite20261126" else "")
    assert deployed.keys().signing.name == first.name, "the new key does not sign yet"

    # Not in DNS until an up publishes it: the command says so and changes nothing.
    step = deployed.run(T0 + timedelta(minutes=5))
    assert step.outcome == "waiting" and "not in DNS yet" in step.message and deployed.keys().in_state(PUBLISHED).live is None
    deployed.up()
    assert deployed.published() == sorted([first.name, new.name])

    seen = T0 + timedelta(minutes=10)
    step = deployed.run(seen)
    assert step.outcome == "waiting" and "10:10 UTC" in step.message, step.message  # seen + dns.ttl (3600 s)
    assert deployed.run(seen + timedelta(seconds=3599)).outcome == "waiting", "never faster than the record's TTL"
    assert deployed.keys().signing.name == first.name

    step = deployed.run(seen + timedelta(seconds=3600))
    assert step.outcome == "advanced" and f"replaces the hosts that sign {DOMAIN} (mx1, mx2, mx3) alone" in step.message
    assert deployed.keys().signing.name == new.name and deployed.keys().in_state(RETIRING).name == first.name

    # The primary still runs the old image: nothing is withdrawn on faith.
    step = deployed.run(seen + timedelta(days=30))
    assert step.outcome == "waiting" and f"still signs with {first.name}" in step.message
    deployed.up()
    after = _signed(deployed.keys(), deployed.keys().signing)
    assert _verifies(deployed, before) and _verifies(deployed, after), "both selectors verify during the overlap"

    confirmed = seen + timedelta(days=31)
    step = deployed.run(confirmed)
    assert step.outcome == "waiting" and "2027-01-03" in step.message  # confirmed + dkim.retireAfterDays (7)
    assert deployed.run(confirmed + timedelta(days=7) - timedelta(seconds=1)).outcome == "waiting"
    step = deployed.run(confirmed + timedelta(days=7))
    assert step.outcome == "advanced" and f"{first.name} retired" in step.message
    keys = deployed.keys()
    assert [s.name for s in keys.selectors] == [new.name] and keys.signing.name == new.name and first.name in keys.retired
    deployed.up()
    assert deployed.published() == [new.name]
    assert _verifies(deployed, after) and not _verifies(deployed, before), "the retired key verifies nothing"


def test_the_old_key_stays_published_while_a_backup_still_signs_its_own_mail_with_it(deployed):
    """A backup signs its bounces and cron mail with the key of the site domain its MX name lies
    in: withdrawing the old key before its image carries the new one would fail them."""
    first = deployed.keys().signing
    assert [h.name for h in signing_hosts(deployed.site, DOMAIN)] == ["mx1", "mx2", "mx3"]
    deployed.run(T0, hurry=True)
    deployed.up()
    assert deployed.run(T0, hurry=True).outcome == "advanced"  # the new key signs from the next up
    deployed.up(only={"mx1", "mx3"})  # mx2 not replaced yet
    step = deployed.run(T0 + timedelta(days=30), hurry=True)
    assert step.outcome == "waiting" and f"mx2 still signs with {first.name}" in step.message, step.message
    assert deployed.keys().in_state(RETIRING).confirmed is None
    deployed.up(only={"mx2"})
    assert deployed.run(T0 + timedelta(days=30), hurry=True).outcome == "advanced"
    assert [s.state for s in deployed.keys().selectors] == [SIGNING]


def test_now_skips_the_waits_but_not_dns_or_the_primary(deployed):
    first = deployed.keys().signing
    deployed.run(T0, hurry=True)
    assert deployed.run(T0, hurry=True).outcome == "waiting", "--now still needs the record in DNS"
    deployed.up()
    step = deployed.run(T0, hurry=True)
    assert step.outcome == "advanced" and deployed.keys().in_state(RETIRING).name == first.name
    assert deployed.run(T0, hurry=True).outcome == "waiting", "--now never withdraws the key the primary signs with"
    deployed.up()
    assert deployed.run(T0, hurry=True).outcome == "advanced"
    assert [s.state for s in deployed.keys().selectors] == [SIGNING]


def test_a_step_whose_write_fails_is_not_half_done(deployed):
    """Each step is one new version of the domain's secret: a failed write leaves the step undone,
    and the next run makes it."""
    class Failing:
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def put_current(self, secret_id, value):
            raise OSError("disk full")

    stored = domain_keys(deployed.store, deployed.stack, DOMAIN)[1]
    with pytest.raises(OSError):
        rotate_domain(deployed.site, deployed.stack, Failing(deployed.store), DOMAIN, T0, deployed.lookup, lambda h, d: None)
    assert domain_keys(deployed.store, deployed.stack, DOMAIN)[1].version == stored.version
    assert deployed.run(T0).outcome == "advanced" and deployed.keys().in_state(PUBLISHED) is not None


def _stack_file(tmp_path):
    document = yaml.safe_load((ROOT / "Pulumi.example.yaml").read_text())
    document["config"]["mailsite:secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    config = tmp_path / "Pulumi.dkimtest.yaml"
    config.write_text(yaml.safe_dump(document))
    settings = example_settings()
    settings["secrets"] = document["config"]["mailsite:secrets"]
    return config, settings


def test_cli_refuses_a_domain_the_site_lacks_in_one_line(tmp_path):
    config, settings = _stack_file(tmp_path)
    for option, value in (("--domain", "example.com"), ("--nameserver", "ns1.example.org")):
        result = subprocess.run([sys.executable, "-m", "mailsite", "rotate-dkim-key", "--config", str(config), option, value],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: {option}") and value in result.stderr


def test_cli_first_run_makes_the_new_key_and_says_to_up(tmp_path, dns_server):
    config, settings = _stack_file(tmp_path)
    init_secrets(load_site(settings), "dkimtest", tmp_path)
    result = subprocess.run([sys.executable, "-m", "mailsite", "rotate-dkim-key", "--config", str(config), "--domain", DOMAIN,
                             "--nameserver", dns_server.address], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{DOMAIN}: new key ") and "Run `pulumi up --stack dkimtest`" in result.stdout
    stored = domain_keys(host_store(load_site(settings), tmp_path), "dkimtest", DOMAIN)[0]
    assert stored.in_state(PUBLISHED) is not None
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    assert dkim_keys_id("dkimtest", DOMAIN) not in result.stderr


def test_only_the_switch_replaces_the_signing_hosts_and_dns_publishes_every_selector(tmp_path):
    """Through the program (under mocks): publishing or retiring a key changes DNS alone; the
    switch to the new key changes the images of the hosts that sign the domain alone (the primary,
    and the backups whose MX names lie in it)."""
    from tests.test_program import evaluate, vultr_settings

    settings = vultr_settings(example_settings())
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    site = load_site(settings)
    init_secrets(site, "test", ROOT)
    store = host_store(site, ROOT)

    def deployed():
        recorded = evaluate(settings)
        identities = {name: host["imageIdentity"] for name, host in recorded.outputs["hosts"].items()}
        dkim_txt = sorted(r.inputs["name"] for r in recorded.of("vultr:index/dnsRecord:DnsRecord")
                          if r.inputs.get("type") == "TXT" and "._domainkey" in r.inputs["name"] and r.inputs["domain"] == DOMAIN)
        return identities, dkim_txt

    first = domain_keys(store, "test", DOMAIN)[0].signing.name
    before, txt = deployed()
    assert txt == [f"{first}._domainkey"]
    lookup = lambda name: [r.value for r in dkim_records(site_dkim_keys(site, "test", ROOT).values()) if r.name == name]
    rotate_domain(site, "test", store, DOMAIN, T0, lookup, lambda h, d: None)
    new = domain_keys(store, "test", DOMAIN)[0].in_state(PUBLISHED).name
    published, txt = deployed()
    assert published == before and txt == sorted([f"{first}._domainkey", f"{new}._domainkey"])
    assert rotate_domain(site, "test", store, DOMAIN, T0 + timedelta(hours=2), lookup, lambda h, d: None).outcome == "waiting"
    assert rotate_domain(site, "test", store, DOMAIN, T0 + timedelta(hours=3), lookup, lambda h, d: None).outcome == "advanced"
    switched, txt = deployed()
    assert {h for h in before if switched[h] != before[h]} == {h.name for h in signing_hosts(site, DOMAIN)} and len(txt) == 2
