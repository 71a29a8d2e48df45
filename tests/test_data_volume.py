"""The primary's mail volume in the resource graph (Pulumi's mocks: the graph's shape, the options
the engine acts on), and the boot script that mounts it on the primary.

What the engine does with these options is Pulumi's documented behaviour, not re-proved here:
protect makes any step that would delete the resource (a replacement, its removal from the
program, a destroy) fail; retain_on_delete makes a delete only forget it; a resource is replaced
only for a change in an input its provider marks as forcing a new one (libvirt: every input of a
volume, so size is ignored; Vultr block storage: region and block_type), or for replaceOnChanges.
"""

from __future__ import annotations

import pytest

from mailsite.config import load_site
from mailsite.keys import new_key
from mailsite.secrets import FileStore, init_secrets, queue_key_id
from tests.sites import ROOT, example_settings
from tests.test_program import Recorded, evaluate, inline_secrets, site_on, vultr_settings

DATA_VOLUME = "mailsite:index:DataVolume"
LIBVIRT_VOLUME = "libvirt:index/volume:Volume"
BLOCK_STORAGE = "vultr:index/blockStorage:BlockStorage"
VOLUME = {"libvirt": LIBVIRT_VOLUME, "vultr": BLOCK_STORAGE}
# Inputs whose change makes the provider replace the volume (terraform-provider-libvirt 0.8.1:
# every field of a volume is ForceNew; terraform-provider-vultr: region and block_type).
FORCES_NEW = {"libvirt": {"pool", "size", "format", "name", "source"}, "vultr": {"region", "blockType"}}


def _mail_volumes(recorded: Recorded, target: str) -> list:
    parent = recorded.registered.urns["mail-primary-data"]
    return [r for r in recorded.of(VOLUME[target]) if recorded.registered.parents[r.name] == parent]


def _vm(recorded: Recorded, host: str, target: str):
    suffix = {"libvirt": "vm", "vultr": "instance"}[target]
    return next(r for r in recorded.resources if r.name == f"mail-{host}-{suffix}")


@pytest.mark.parametrize("target", ["libvirt", "vultr"])
def test_one_mail_volume_kept_through_every_delete(target):
    recorded = site_on(target)
    registered = recorded.registered
    assert [r.name for r in recorded.of(DATA_VOLUME)] == ["mail-primary-data"], "one volume, named by role, not by host"
    volumes = _mail_volumes(recorded, target)
    assert [v.name for v in volumes] == ["mail-primary-data-volume"]
    assert len(recorded.of(VOLUME[target])) == {"libvirt": 4, "vultr": 1}[target], "3 boot disks and the mail volume on libvirt"
    for name in ("mail-primary-data", "mail-primary-data-volume"):
        assert registered.protect[name], f"{name}: a replacement or a destroy could delete the mail"
        assert registered.retain_on_delete[name], f"{name}: an unprotected delete would delete the mail"
    assert not registered.delete_before_replace["mail-primary-data-volume"]


def test_libvirt_primary_boots_with_the_mail_volume_as_its_second_disk():
    recorded = site_on("libvirt")
    volume_id = "mail-primary-data-volume-id"
    disks = {host: [d["volumeId"] for d in _vm(recorded, host, "libvirt").inputs["disks"]] for host in ("mx1", "mx2", "mx3")}
    assert disks["mx1"] == ["mail-mx1-disk-id", volume_id]
    assert disks["mx2"] == ["mail-mx2-disk-id"] and disks["mx3"] == ["mail-mx3-disk-id"], "backups have no mail volume"
    (volume,) = _mail_volumes(recorded, "libvirt")
    assert volume.inputs["size"] == 20 << 30 and volume.inputs["format"] == "qcow2" and "source" not in volume.inputs, "blank"
    # A larger mailVolume.size must not be a new, empty volume: it is grown by hand.
    assert recorded.registered.ignore_changes["mail-primary-data-volume"] == ["size"]


def test_vultr_mail_volume_attached_to_the_primary_with_a_restart():
    recorded = site_on("vultr")
    (volume,) = _mail_volumes(recorded, "vultr")
    inputs = volume.inputs
    assert inputs["attachedToInstance"] == "mail-mx1-instance-id"
    assert inputs["region"] == "ams" and inputs["blockType"] == "high_perf" and inputs["sizeGb"] == 20
    assert inputs["live"] is False
    # The workaround for terraform-provider-vultr#660: the label names the instance it is attached to.
    assert "mail-mx1-instance-id" in inputs["label"]
    instance_urn = recorded.registered.urns["mail-mx1-instance"]
    assert instance_urn in recorded.registered.property_dependencies["mail-primary-data-volume"]


@pytest.mark.parametrize("target", ["libvirt", "vultr"])
def test_new_queue_key_replaces_the_primary_vm_but_not_its_mail_volume(target, tmp_path):
    """A rotation of mx1's key: its image changes, so its VM is replaced (replaceOnChanges on the
    image), while the volume's inputs that force a new volume stay as they were: the engine
    updates (Vultr: attaches to the new instance) and never replaces it."""
    settings = {"libvirt": lambda s: s, "vultr": vultr_settings}[target](example_settings())
    settings["secrets"] = {"backend": "file", "path": str(tmp_path / "keys")}
    init_secrets(load_site(settings), "test", ROOT)
    before = evaluate(settings)
    # The rotation under way: the pending key is what mx1's new image carries.
    FileStore(tmp_path / "keys").put_pending(queue_key_id("test", "mx1"), new_key())
    after = evaluate(settings)
    assert before.outputs["hosts"]["mx1"]["imageIdentity"] != after.outputs["hosts"]["mx1"]["imageIdentity"]
    (old,), (new,) = _mail_volumes(before, target), _mail_volumes(after, target)
    changed = {key for key in set(old.inputs) | set(new.inputs) if old.inputs.get(key) != new.inputs.get(key)}
    assert not changed & FORCES_NEW[target], f"a new volume: {changed}"
    assert after.registered.protect["mail-primary-data-volume"]
    # Nothing of the image reaches the volume: its inputs come from no bake, no snapshot.
    images = {urn for name, urn in after.registered.urns.items() if name.startswith("mail-mx1-image")}
    assert not after.registered.property_dependencies["mail-primary-data-volume"] & images
    vm = _vm(after, "mx1", target)
    assert after.registered.delete_before_replace[vm.name], "the old primary goes first, then the volume follows the new one"


def test_a_libvirt_stack_keeps_its_mail_volume_when_the_primary_is_renamed():
    settings = inline_secrets(example_settings())
    for host in settings["hosts"]:
        if host["name"] == "mx1":
            host["name"] = "mail1"
    settings["secrets"]["queueKeys"]["mail1"] = settings["secrets"]["queueKeys"].pop("mx1")
    recorded = evaluate(settings)
    assert [v.name for v in _mail_volumes(recorded, "libvirt")] == ["mail-primary-data-volume"]
    disks = [d["volumeId"] for d in _vm(recorded, "mail1", "libvirt").inputs["disks"]]
    assert disks[1] == "mail-primary-data-volume-id"
