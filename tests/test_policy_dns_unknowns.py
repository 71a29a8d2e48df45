"""The DNS policies on a preview where a TXT record's text is unknown, as the engine sends it: an
SPF or DMARC record that may be the one looked for is named (not-applicable), never reported
missing, as tests/test_analyzer.py asks of every unknown that decides a policy."""

from __future__ import annotations

import copy

import pytest

from tests.test_analyzer import UNKNOWN, _find, analyzer, vultr_image_change  # noqa: F401 (fixtures)

import mailsite_policies  # noqa: E402 (on the path test_analyzer puts the pack on)


@pytest.mark.parametrize("owner, policy", [("mx2", "mx-spf-covered"), ("", "mx-spf-covered"), ("_dmarc", "dmarc-published")],
                         ids=["helo-spf", "domain-spf", "dmarc"])
def test_a_txt_record_whose_text_is_unknown_is_named_not_reported_missing(analyzer, vultr_image_change, owner, policy):  # noqa: F811
    broken = copy.deepcopy(vultr_image_change)
    record = _find(broken, mailsite_policies.DNS_RECORD,
                   lambda r: r.inputs.get("type") == "TXT" and r.inputs.get("name") == owner and r.inputs.get("domain") == "example.org")
    record.set("data", UNKNOWN)
    findings = analyzer.preview(broken)
    assert findings.diagnostics == []
    assert policy in [p for p, _ in findings.not_applicable]
    assert any(record.name in reason for p, reason in findings.not_applicable if p == policy)
