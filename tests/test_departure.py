"""Which MX a deleted VM is, and why it goes, from what the engine hands the drain hook."""

from __future__ import annotations

import pytest

from mailsite.departure import DECOMMISSION, DepartureRefused, departing, drain_departing
from mailsite.errors import MailsiteError, UserError
from mailsite.hosts import ControlError, HostControl
from mailsite.replacement import ReplacementRefused
from tests.sites import example_settings, site_of


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


@pytest.mark.parametrize("recorded", [
    {"hostname": "mx2.example.org", "tags": ["mailsite", "backup"]},
    {"name": "mx2.example.org", "description": "mailsite backup MX, preference 20"},
], ids=["vultr", "libvirt"])
def test_a_backup_made_the_primary_is_not_replaced_while_the_old_primary_holds_the_mail_volume(example_site, recorded):
    """mx2 becomes the primary in the stack file: the chain makes its new VM first, with the mail
    volume, while mx1's VM still runs with it. The hook of mx2's old VM, the first to go, refuses."""
    settings = example_settings()
    for host in settings["hosts"]:
        host["role"], host["preference"] = {"mx1": ("backup", 20), "mx2": ("primary", 10)}.get(host["name"], (host["role"], host["preference"]))
    swapped = site_of(settings)
    with pytest.raises(DepartureRefused, match="mx2's VM was a backup MX and the stack file makes it the primary"):
        departing(swapped, "prod", recorded, None, None)
    # The same VM under its own role is an ordinary replacement, and a destroy is not refused.
    assert departing(example_site, "prod", recorded, None, None).reason == "replacement"
    assert departing(swapped, "prod", recorded, None, "prod").reason == "decommission"


def test_vm_state_naming_no_host_is_not_deleted_undrained(example_site):
    with pytest.raises(DepartureRefused, match="names no host"):
        departing(example_site, "prod", {"memory": 1024}, {}, None)


class _Host:
    """One MX as the hook reaches it (a HostControl): its smtpd answers or not; its queue drains at once."""

    def __init__(self, answers: bool):
        self.answers, self.paused, self.forgotten = answers, False, False

    def run(self, *command: str) -> str:
        if not self.answers:
            raise ControlError(f"`{' '.join(command)}` failed: ssh: connect to host: Connection refused")
        if command == ("smtpctl", "show", "status"):
            return "SMTP paused\n" if self.paused else "SMTP running\n"
        if command == ("smtpctl", "pause", "smtp"):
            self.paused = True
        return ""

    def reachable(self) -> bool:
        return self.answers

    def replaced(self) -> None:
        self.forgotten = True


def test_renamed_host_is_replaced_as_itself_not_waited_for_as_a_peer(example_site):
    """A host's `fqdn` changed (mx2.example.org -> mx2.example.net) replaces its VM (the hostname
    forces a new one). The VM's old hostname names no host of the stack file any more, but the
    VM is still mx2's: the hook must drain mx2, not wait for "mx2.example.net" (its own new VM,
    which comes after this delete) as a peer that takes no mail."""
    settings = example_settings()
    next(h for h in settings["hosts"] if h["name"] == "mx2")["fqdn"] = "mx2.example.net"
    renamed = site_of(settings)
    departure = departing(renamed, "prod", {"name": "mx2.example.org"}, {"name": "mx2.example.org"}, None, vm="mail-mx2-vm")
    assert (departure.name, departure.mx_name, departure.reason) == ("mx2", "mx2.example.org", "replacement")
    hosts = {"mx1.example.org": _Host(True), "mx3.example.org": _Host(True), "mx2.example.org": _Host(True),
             "mx2.example.net": _Host(False)}
    drain_departing(renamed, departure, hosts.__getitem__, drain_timeout=5, peer_wait=1, poll=0.1)
    assert hosts["mx2.example.org"].paused and hosts["mx2.example.org"].forgotten


def test_hostname_changed_outside_pulumi_still_reaches_the_mx_by_its_name(example_site):
    """Someone renamed the VM in Vultr's console; a refresh put that hostname in the outputs.
    The MX is still reached (ssh) at the name the program gave it, which DNS answers."""
    departure = departing(example_site, "prod", {"hostname": "mx2.example.org"}, {"hostname": "vultr-guest"}, None,
                          vm="mail-mx2-vm")
    assert (departure.name, departure.mx_name, departure.reason) == ("mx2", "mx2.example.org", "replacement")


def test_a_refused_departure_or_replacement_is_an_operation_that_failed_not_a_setting_to_fix():
    """A peer out, a queue that did not drain, other changes pending: the same run goes through
    once the site is back, so these exit 1 (MailsiteError), as an unreachable host does, not 2."""
    for refused in (DepartureRefused, ReplacementRefused, ControlError):
        assert issubclass(refused, MailsiteError) and not issubclass(refused, UserError)
        assert refused("x").exit_code == 1


def test_drain_of_a_host_that_does_not_answer_refuses_with_one_line(example_site):
    departure = departing(example_site, "prod", {"name": "mx2.example.org"}, None, None)
    hosts = {"mx1.example.org": _Host(True), "mx3.example.org": _Host(True), "mx2.example.org": _Host(False)}
    assert all(isinstance(host, HostControl) for host in hosts.values())
    with pytest.raises(DepartureRefused) as refused:
        drain_departing(example_site, departure, hosts.__getitem__, drain_timeout=5, peer_wait=1, poll=0.1)
    assert str(refused.value).startswith("cannot drain mx2 (`smtpctl show status` failed: ssh: connect to host")
    assert "\n" not in str(refused.value)
