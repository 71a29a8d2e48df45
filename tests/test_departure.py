"""Which MX a deleted VM is, and why it goes, from what the engine hands the drain hook."""

from __future__ import annotations

import pytest

from mailsite.departure import DECOMMISSION, DepartureRefused, departing


def test_departing_host_is_found_by_its_vm_hostname_on_both_targets(example_site):
    vultr = departing(example_site, "prod", {"hostname": "mx2.example.org", "label": "mx2.example.org (backup MX)"}, None, None)
    libvirt = departing(example_site, "prod", {"name": "mx2.example.org", "memory": 1024}, {"name": "mx2.example.org"}, None)
    assert vultr == libvirt
    assert (vultr.name, vultr.mx_name, vultr.reason) == ("mx2", "mx2.example.org", "replacement")


def test_vm_of_a_host_gone_from_the_stack_file_is_a_removal(example_site):
    gone = departing(example_site, "prod", {"name": "mx4.example.org"}, None, None)
    assert (gone.name, gone.mx_name, gone.reason) == ("mx4.example.org", "mx4.example.org", "removal")


def test_decommission_is_the_operators_word_for_this_stack_only(example_site):
    assert departing(example_site, "prod", {"name": "mx1.example.org"}, None, "prod").reason == "decommission"
    with pytest.raises(DepartureRefused, match=f"{DECOMMISSION}=staging does not name this stack \\(prod\\)"):
        departing(example_site, "prod", {"name": "mx1.example.org"}, None, "staging")


def test_vm_state_naming_no_host_is_not_deleted_undrained(example_site):
    with pytest.raises(DepartureRefused, match="names no host"):
        departing(example_site, "prod", {"memory": 1024}, {}, None)
