import ipaddress

import pytest

from mailsite.dns import DnsRecord, ReverseRecord, render_reverse_zone, render_zone


def test_zone_file_holds_one_record_per_line():
    text = render_zone("example.org", [DnsRecord("example.org", "MX", "mx1.example.org", 10),
                                       DnsRecord("mx1.example.org", "AAAA", "2001:db8::10")], "ns1.example.org", 1)
    assert text.splitlines()[-2:] == ["@\tIN\tMX\t10\tmx1.example.org.", "mx1\tIN\tAAAA\t2001:db8::10"]


@pytest.mark.parametrize("value", [
    "2001:db8::20%x\n@\tIN\tMX\t0 mx.attacker.example.",  # an IPv6 zone id carrying a record of its own
    "2001:db8::20 ; comment", "mx1.example.org (", "",
])
def test_a_value_that_would_write_its_own_records_never_reaches_a_zone_file(value):
    with pytest.raises(ValueError):
        render_zone("example.org", [DnsRecord("mx2.example.org", "AAAA", value)], "ns1.example.org", 1)


def test_a_ptr_name_that_would_write_its_own_records_never_reaches_a_reverse_zone():
    with pytest.raises(ValueError):
        render_reverse_zone(ipaddress.ip_network("192.0.2.0/24"),
                            [ReverseRecord("192.0.2.10", "mx1.example.org.\n@\tIN\tNS\tns.attacker.example")], "ns1.example.org", 1)
