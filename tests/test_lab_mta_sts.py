"""What the lab's MTA-STS sender refuses in a fetched policy, pure: the fetch and the DNS are the
lab scenario mta_sts_policy_names_exactly_the_mxes (tests/test_lab.py)."""

from __future__ import annotations

from mailsite.dns import dns_records
from mailsite.lab.mta_sts import Fetched, policy_mx_problems
from mailsite.mta_sts import policy_text
from tests.sites import addresses, example_settings, site_of

MXES = ["mx1.example.org", "mx2.example.org", "mx3.example.org"]


def _policy(*mx: str) -> str:
    return "version: STSv1\r\nmode: enforce\r\n" + "".join(f"mx: {name}\r\n" for name in mx) + "max_age: 604800\r\n"


def test_a_policy_naming_exactly_the_mxes_passes_and_one_more_or_less_does_not():
    assert policy_mx_problems(Fetched(200, "text/plain", _policy(*MXES)), MXES) == []
    assert policy_mx_problems(Fetched(200, "text/plain; charset=utf-8", _policy(*reversed(MXES))), MXES) == []
    assert policy_mx_problems(Fetched(200, "text/plain", _policy(*MXES[:2])), MXES)
    assert policy_mx_problems(Fetched(200, "text/plain", _policy(*MXES, "mx4.example.org")), MXES)
    assert policy_mx_problems(Fetched(200, "text/plain", _policy("*.example.org")), MXES)


def test_a_sender_refuses_what_is_not_a_policy():
    assert policy_mx_problems(Fetched(404, "text/html", ""), MXES) == ["HTTP 404"]
    assert policy_mx_problems(Fetched(200, "text/html", _policy(*MXES)), MXES)
    assert policy_mx_problems(Fetched(200, "text/plain", "mode: enforce\r\n"), MXES)


def test_the_sites_policy_names_exactly_the_mx_records_the_dns_gets():
    site = site_of(example_settings())
    for domain in site.domains:
        mxes = [record.value for record in dns_records(site, addresses(site)) if record.type == "MX" and record.name == domain]
        assert mxes and policy_mx_problems(Fetched(200, "text/plain", policy_text(site)), mxes) == [], domain
