"""Settings a review of issue 13 found crashing the tool or costing it without bound: a /32 site
network, numbers of thousands of digits, whole numbers written true/false, and sites of thousands
of hosts. Each is refused in one line naming the setting, with the fix."""

from __future__ import annotations

import pytest

from tests.sites import example_settings, refusal_lines, site_of, sized_settings



def _refused(settings: dict, setting: str, *words: str) -> str:
    lines = refusal_lines(settings)
    found = [line for line in lines if line.startswith(f"{setting} = ")]
    assert len(found) == 1, (setting, lines)
    assert len(found[0]) < 300 and found[0].isprintable(), found[0][:300]
    for word in words:
        assert word in found[0], found[0]
    return found[0]


@pytest.mark.parametrize("length", [31, 32])
def test_a_site_network_too_small_for_hosts_and_gateway_is_one_line(length):
    settings = example_settings()
    settings["network"]["ipv4PrefixLength"] = length
    _refused(settings, "mailsite:network.ipv4PrefixLength", "30 or less")


LONG = "9" * 5000


@pytest.mark.parametrize("where,setting,words", [
    (lambda s: s["images"].update(diskSize=LONG + "G"), "mailsite:images.diskSize", ("like 8G",)),
    (lambda s: s["images"].update(queueSpace=LONG + "G"), "mailsite:images.queueSpace", ("like 3G",)),
    (lambda s: s.setdefault("queue", {}).update(ttl=LONG + "d"), "mailsite:queue.ttl", ("like 7d",)),
    (lambda s: s.update(maxMessageSize=LONG + "M"), "mailsite:maxMessageSize", ("like 50M",)),
], ids=["diskSize", "queueSpace", "ttl", "maxMessageSize"])
def test_a_size_or_duration_of_thousands_of_digits_is_one_line(where, setting, words):
    settings = example_settings()
    where(settings)
    line = _refused(settings, setting, *words)
    assert "4300" not in line and "Exceeds" not in line


@pytest.mark.parametrize("where,setting", [
    (lambda s: s["bgpSpamd"].update(updateMinutes=True), "mailsite:bgpSpamd.updateMinutes"),
    (lambda s: s["images"].update(queueMessages=False), "mailsite:images.queueMessages"),
    (lambda s: s["hosts"][1].update(preference=True), "mailsite:hosts[1].preference"),
], ids=["updateMinutes", "queueMessages", "preference"])
def test_a_whole_number_written_true_or_false_is_refused(where, setting):
    settings = example_settings()
    where(settings)
    _refused(settings, setting, "must be a whole number; write digits only")


def test_fifty_hosts_are_a_site_and_more_are_refused_in_one_line():
    assert len(site_of(sized_settings(50)).hosts) == 50
    _refused(sized_settings(51), "mailsite:hosts", "at most 50")


@pytest.mark.parametrize("where,setting", [
    (lambda s, n: s.update(domains=[f"d{i}.example" for i in range(n)]), "mailsite:domains"),
    (lambda s, n: s["recipients"].update(users=[f"u{i}" for i in range(n)]), "mailsite:recipients.users"),
    (lambda s, n: s["recipients"]["aliases"].update({f"a{i}": "postmaster@example.net" for i in range(n)}),
     "mailsite:recipients.aliases"),
], ids=["domains", "users", "aliases"])
def test_domains_users_and_aliases_have_room_for_a_small_organisation_and_a_bound(where, setting):
    from mailsite.model import Recipients, Site

    bound = {"mailsite:domains": Site.model_fields["domains"],
             "mailsite:recipients.users": Recipients.model_fields["accounts"],
             "mailsite:recipients.aliases": Recipients.model_fields["aliases"]}[setting]
    at_most = next(m.max_length for m in bound.metadata if getattr(m, "max_length", None))
    assert at_most >= 1000  # a real small organisation: a thousand names fit
    settings = example_settings()
    where(settings, at_most + 1)
    _refused(settings, setting, f"at most {at_most}")


def test_a_site_whose_recipient_tables_would_take_minutes_to_render_is_one_line():
    """Each bound alone fits a small organisation; their product is every MX's table size."""
    settings = example_settings()
    settings["domains"] = [f"d{n}.example" for n in range(1000)]
    settings["recipients"]["users"] = [f"u{n}" for n in range(1000)]
    _refused(settings, "mailsite:recipients", "in 1000 domains", "100000 or less")


def test_descriptions_say_what_the_tool_does():
    from mailsite.commands import COMMANDS  # noqa: F401  (the commands a description may name)
    from mailsite.model import Host, Queue, Secrets, Site

    drain = Queue.model_fields["drain_minutes"].description or ""
    assert "rotate-queue-key" in drain and "secrets rotate" not in drain
    settings = example_settings()
    settings["maxMessageSize"] = "1048576"  # a plain byte count, as the description says
    assert site_of(settings).max_message_size == "1048576" and "bytes" in (Site.model_fields["max_message_size"].description or "")
    assert "Required" in (Host.model_fields["ipv4"].description or "")
    assert "stack file's directory" in (Secrets.model_fields["path"].description or "")
