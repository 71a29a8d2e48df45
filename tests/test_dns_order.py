"""When the engine changes the MTA-STS id (the resource graph, under mocks: its shape is the test)."""

from __future__ import annotations

from tests.test_program import _vms, site_on


def test_the_mta_sts_id_changes_only_after_the_primary_that_serves_the_new_policy_is_up():
    # The policy is in the primary's image: a change to it replaces the primary (a bake and a
    # boot, minutes). The _mta-sts records wait for its VM; MX and address records do not.
    recorded = site_on("vultr")
    registered = recorded.registered
    primary = registered.urns[_vms(recorded)["mx1"]]
    ids = [name for name in registered.urns if "_mta-sts." in name]
    assert len(ids) == 2
    assert all(primary in registered.dependencies[name] for name in ids)
    assert primary not in registered.dependencies[next(n for n in registered.urns if n.endswith("-mx2-a"))]
