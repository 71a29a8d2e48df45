"""The primary's mail volume in the resource graph (Pulumi's mocks: the graph's shape, the options
the engine acts on), and the boot script that mounts it on the primary.

What the engine does with these options is Pulumi's documented behaviour, not re-proved here:
protect makes any step that would delete the resource (a replacement, its removal from the
program, a destroy) fail; retain_on_delete makes a delete only forget it; a resource is replaced
only for a change in an input its provider marks as forcing a new one (libvirt: every input of a
volume, so size is ignored; Vultr block storage: region and block_type), or for replaceOnChanges.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailsite.config import load_site
from mailsite.keys import new_key
from mailsite.secrets import FileStore, init_secrets, queue_key_id
from tests.sites import ROOT, example_settings, refusal_lines, site_of
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


# -- the boot script: /etc/rc.securelevel on the primary ----------------------------------------
#
# These tests run the rendered script under mksh (the kin of OpenBSD's ksh, which is its /bin/sh)
# with a PATH of small stand-ins for the OpenBSD commands it calls, each recording how it was
# called. They test the script's decisions: which disk it takes, when it labels and formats, what
# it mounts and how, what it leaves alone. What the OpenBSD commands themselves do is from their
# manual pages, not proved here (no OpenBSD machine): sysctl(8) hw.disknames prints name:duid per
# disk, the duid empty for a disk without a label UID (sys/kern/kern_sysctl.c); disklabel(8) -w
# -A -T writes an automatic allocation from a template (as install.sub does) and gives the label
# a UID, -E reads editor commands from standard input, `i` setting the UID (sbin/disklabel/
# editor.c); newfs(8), fsck_ffs(8) -p, mount(8) -o, logger(1) -s -t.

DUID = site_of(example_settings()).mail_volume_duid  # the example site's
MIB = 1 << 20
STAND_INS = {
    # sysctl -n hw.disknames: the disks of $FAKE/disks in name order, each with its label UID.
    "sysctl": r'''
[ "$*" = "-n hw.disknames" ] || { echo "sysctl $*: not stood in for" >&2; exit 1; }
out=
for disk in $(ls "$FAKE/disks"); do
    out="$out${out:+,}$disk:$(cat "$FAKE/duid-$disk" 2>/dev/null)"
done
echo "$out,cd0:"
''',
    # disklabel -w ... DISK gives the disk a label with a UID of the kernel's; -E DISK takes `i`
    # and the UID on its standard input.
    "disklabel": r'''
eval "disk=\${$#}"
input=$(cat)
echo "disklabel $* <<< $(echo "$input" | tr '\n' ' ')" >> "$FAKE/calls"
case " $* " in
*" -w "*) echo 0123456789abcdef > "$FAKE/duid-$disk" ;;
*" -E "*) echo "$input" | sed -n '/^i$/{n;p;}' > "$FAKE/duid-$disk.new" && mv "$FAKE/duid-$disk.new" "$FAKE/duid-$disk" ;;
esac
''',
    # newfs -N /dev/rDISKa: where the copies of the superblock would go, in 512-byte sectors, the
    # way newfs prints them (mkfs.c): here one at the start of each 16 MB.
    "newfs": r'''
echo "newfs $*" >> "$FAKE/calls"
[ "$1" = -N ] || exit 0
echo "$2: 64.0MB in 131072 sectors of 512 bytes"
echo "4 cylinder groups of 16.00MB, 1024 blocks, 2048 inodes each"
echo "super-block backups (for fsck -b #) at:"
echo " 160, 32928, 65696,"
echo " 98464,"
''',
    "fsck_ffs": 'echo "fsck_ffs $*" >> "$FAKE/calls"\nexit "$(cat "$FAKE/fsck-exit" 2>/dev/null || echo 0)"\n',
    # mount with no arguments lists what is mounted; with them, mounts (records it).
    "mount": r'''
if [ $# -eq 0 ]; then cat "$FAKE/mounted"; exit 0; fi
echo "mount $*" >> "$FAKE/calls"
eval "point=\${$#}"
echo "/dev/sd1a on $point type ffs (local)" >> "$FAKE/mounted"
''',
    # dd if=/dev/rDISKP bs= skip= count=: GNU dd on the disk's content (partitions a and c both
    # start at the disk's first sector here); OpenBSD's 1m is GNU's 1M.
    "dd": r'''
args=
for arg; do
    case $arg in
    if=/dev/r*) disk=${arg#if=/dev/r}; args="$args if=$FAKE/disks/${disk%?}" ;;
    *) args="$args $(echo "$arg" | sed 's/m$/M/')" ;;
    esac
done
echo "dd $*" >> "$FAKE/calls"
# shellcheck disable=SC2086
exec /bin/dd $args status=none
''',
    "logger": 'eval "message=\\${$#}"\necho "$message" >> "$FAKE/log"\necho "$message" >&2\n',
    "chown": 'echo "chown $*" >> "$FAKE/calls"\n',
}


def _script(tmp_path: Path) -> Path:
    from mailsite.daemons.mail_volume import render_rc_securelevel

    site = site_of(example_settings())
    script = tmp_path / "rc.securelevel"
    script.write_text(render_rc_securelevel(site, site.primary))
    return script


class Boot:
    """A primary's disks and what one boot of rc.securelevel did with them."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.fake, self.root, self.bin = tmp_path / "fake", tmp_path / "root", tmp_path / "bin"
        for directory in (self.fake / "disks", self.root / "var/db", self.bin):
            directory.mkdir(parents=True, exist_ok=True)
        for name, body in STAND_INS.items():
            (self.bin / name).write_text("#!/bin/sh\n" + body)
            (self.bin / name).chmod(0o755)
        self.script = _script(tmp_path)
        self.disk("sd0", "feedfacecafef00d", data=True)  # the boot disk, labelled by the installer

    def disk(self, name: str, duid: str | None, data: bool, at: int = 5 * MIB) -> None:
        content = self.fake / "disks" / name
        with content.open("wb") as f:
            f.truncate(64 * MIB)  # zeros, as a new volume reads
            if data:
                f.seek(at)
                f.write(b"\x19\x01\x54\x19 an ffs superblock, say")
        if duid is not None:
            (self.fake / f"duid-{name}").write_text(duid + "\n")

    def run(self) -> subprocess.CompletedProcess:
        """One boot: nothing is mounted yet (a reboot forgets the mounts)."""
        (self.fake / "mounted").write_text("/dev/sd0a on / type ffs (local)\n")  # the boot disk's root
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "FAKE": str(self.fake), "MAILSITE_ROOT": str(self.root)}
        result = subprocess.run(["mksh", str(self.script)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    def calls(self, command: str) -> list[str]:
        calls = self.fake / "calls"
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [line for line in lines if line.split()[0] == command]

    @property
    def log(self) -> str:
        log = self.fake / "log"
        return log.read_text() if log.exists() else ""

    @property
    def mount_point(self) -> Path:
        return self.root / "var/mailsite"


def test_blank_disk_is_labelled_with_the_site_uid_and_formatted_once(tmp_path):
    boot = Boot(tmp_path)
    boot.disk("sd1", None, data=False)
    boot.run()
    labels = boot.calls("disklabel")
    assert labels[0].startswith("disklabel -w -A -T - sd1 <<< /var/mailsite *")
    assert labels[1] == f"disklabel -E sd1 <<< i {DUID} w q "
    # newfs -N first: where its superblock copies go is all zeros, as on a new disk.
    assert boot.calls("newfs") == ["newfs -N /dev/rsd1a", "newfs /dev/rsd1a"]
    assert boot.calls("mount") == ["mount -o nodev,nosuid,noexec /dev/sd1a " + str(boot.mount_point)]
    assert boot.calls("chown") == [f"chown 2000:2000 {boot.mount_point}/mail"]
    assert (boot.mount_point / "mail").stat().st_mode & 0o777 == 0o700
    assert os.readlink(boot.root / "var/db/spamd") == "/var/mailsite/spamd/spamd"
    # The next boot finds the volume by its UID: checked and mounted, never formatted again.
    boot.run()
    assert len(boot.calls("newfs")) == 2 and len(boot.calls("disklabel")) == 2
    assert len(boot.calls("fsck_ffs")) == 2 and len(boot.calls("mount")) == 2


def test_disk_with_the_site_uid_is_checked_and_mounted_never_formatted(tmp_path):
    boot = Boot(tmp_path)
    boot.disk("sd1", DUID, data=True)
    (boot.mount_point / "mail").mkdir(parents=True)  # the volume's mailboxes, as mounted
    boot.run()
    assert boot.calls("disklabel") == [] and boot.calls("newfs") == [] and boot.calls("dd") == []
    assert boot.calls("fsck_ffs") == ["fsck_ffs -p /dev/rsd1a"]
    assert boot.calls("mount") == ["mount -o nodev,nosuid,noexec /dev/sd1a " + str(boot.mount_point)]
    assert boot.calls("chown") == [], "existing mailboxes keep their owner"


def test_volume_that_fails_its_check_is_not_mounted(tmp_path):
    boot = Boot(tmp_path)
    boot.disk("sd1", DUID, data=True)
    (boot.fake / "fsck-exit").write_text("8\n")
    boot.run()
    assert boot.calls("newfs") == [] and boot.calls("mount") == []
    assert boot.mount_point.stat().st_mode & 0o777 == 0
    assert "needs checking by hand: fsck_ffs /dev/rsd1a" in boot.log


@pytest.mark.parametrize("duid", [None, "0badc0ffee0ddf00"], ids=["unlabelled-with-data", "another-label"])
def test_foreign_disk_is_left_alone_and_nothing_is_mounted(tmp_path, duid):
    boot = Boot(tmp_path)
    boot.disk("sd1", duid, data=True)
    (boot.root / "var/db/spamd").symlink_to("/var/mailsite/spamd/spamd")  # from a boot with the volume
    boot.run()
    assert boot.calls("disklabel") == [] and boot.calls("newfs") == [] and boot.calls("fsck_ffs") == []
    assert boot.calls("mount") == []
    # Dovecot cannot write onto the VM's disk; spamd keeps a database of its own on it meanwhile.
    assert boot.mount_point.stat().st_mode & 0o777 == 0 and list(boot.mount_point.iterdir()) == []
    assert not (boot.root / "var/db/spamd").exists() and not (boot.root / "var/db/spamd").is_symlink()
    assert ("sd1 has no label UID but holds data: left as it is" in boot.log) == (duid is None)
    assert "nothing mounted at /var/mailsite" in boot.log


def test_volume_whose_start_was_wiped_is_labelled_never_formatted(tmp_path):
    """A volume of the site whose first 16 MB were zeroed (its label and first superblock gone)
    still holds its mail, and a copy of its superblock where newfs puts one (the stand-in's
    newfs -N: at sector 32928, 16 MB and 80 KB in). newfs would overwrite every copy; instead the
    disk keeps its file system and the log names the copy for fsck_ffs -b."""
    boot = Boot(tmp_path)
    boot.disk("sd1", None, data=True, at=32928 * 512)
    boot.run()
    assert boot.calls("newfs") == ["newfs -N /dev/rsd1a"], "formatted over a file system"
    assert boot.calls("fsck_ffs") == [] and boot.calls("mount") == []
    assert boot.mount_point.stat().st_mode & 0o777 == 0
    assert "recover it with fsck_ffs -b 32928 /dev/rsd1a" in boot.log


def test_disk_in_use_with_the_site_uid_is_never_checked_or_mounted(tmp_path):
    """mailVolume.duid copied from the boot disk's line of hw.disknames: that disk holds the root
    file system, mounted read-write; fsck_ffs -p on it would repair a live file system."""
    boot = Boot(tmp_path)
    boot.disk("sd0", DUID, data=True)
    boot.disk("sd1", None, data=False)
    boot.run()
    assert boot.calls("fsck_ffs") == [] and boot.calls("mount") == [] and boot.calls("newfs") == []
    assert boot.mount_point.stat().st_mode & 0o777 == 0
    assert "sd0 has the mail volume's label UID" in boot.log and "mounted already (/dev/sd0a on /)" in boot.log


def test_two_disks_with_the_site_uid_are_not_chosen_between(tmp_path):
    """A copy of the volume attached beside it (a clone kept as a backup) has the same UID."""
    boot = Boot(tmp_path)
    boot.disk("sd1", DUID, data=True)
    boot.disk("sd2", DUID, data=True)
    boot.run()
    assert boot.calls("fsck_ffs") == [] and boot.calls("mount") == []
    assert "several disks have the mail volume's label UID" in boot.log


def test_without_a_second_disk_nothing_happens(tmp_path):
    boot = Boot(tmp_path)
    boot.run()
    assert boot.calls("disklabel") == [] and boot.calls("newfs") == [] and boot.calls("mount") == []
    assert boot.mount_point.stat().st_mode & 0o777 == 0
    assert "none is unlabelled" in boot.log


def test_two_blank_disks_are_not_chosen_between(tmp_path):
    boot = Boot(tmp_path)
    boot.disk("sd1", None, data=False)
    boot.disk("sd2", None, data=False)
    boot.run()
    assert boot.calls("disklabel") == [] and boot.calls("newfs") == [] and boot.calls("mount") == []


def test_greylist_learnt_before_the_volume_came_moves_onto_a_new_volume(tmp_path):
    """On Vultr the new primary's first boot has no volume: spamd learns on the VM's disk. With
    the volume, that database moves onto it if the volume has none yet."""
    boot = Boot(tmp_path)
    boot.disk("sd1", None, data=False)
    (boot.root / "var/db/spamd").write_text("greylist")
    boot.run()
    assert (boot.mount_point / "spamd/spamd").read_text() == "greylist"
    assert (boot.root / "var/db/spamd").is_symlink()


def test_greylist_link_left_from_another_volume_gets_its_directory(tmp_path):
    """The VM booted before with a volume (the link is there) and now meets a new, blank one:
    spamd creates its database through the link, so the directory it points into must exist."""
    boot = Boot(tmp_path)
    boot.disk("sd1", None, data=False)
    (boot.root / "var/db/spamd").symlink_to("/var/mailsite/spamd/spamd")
    boot.run()
    assert (boot.mount_point / "spamd").is_dir(), "spamd would not start: its database's directory is missing"


# Dovecot 2.3 (the dovecot daemon root: Debian 12 backports' 2.3.21.1, OpenBSD 7.8's version) in
# a mount and network namespace of its own, the root laid under an overlay so it stays unaltered:
# a user's home on the mount point, the mail user's uid, LMTP on loopback. What the test proves
# is Dovecot's side of the shut mount point; the mount point itself is what rc.securelevel left.
LMTP_BOOT = r"""
set -e
mount -t overlay overlay -o "lowerdir=$DAEMON_ROOT,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/merged"
M=$WORK/merged
mount -t proc proc "$M/proc"
ip link set lo up
echo "$MAIL_USER:x:$MAIL_UID:$MAIL_UID::$MAILBOXES:/usr/sbin/nologin" >> "$M/etc/passwd"
echo "$MAIL_USER:x:$MAIL_UID:" >> "$M/etc/group"
mkdir -p "$M$STATE_MOUNT" "$M/etc/mailsite-test"
# The mount point as the boot script left it (copied, owner and mode).
chmod "$(stat -c %a "$SHUT_MOUNT_POINT")" "$M$STATE_MOUNT"
[ -z "$MOUNTED" ] || { chmod 0755 "$M$STATE_MOUNT"; install -d -o "$MAIL_UID" -g "$MAIL_UID" -m 0700 "$M$MAILBOXES"; }
echo "alice::$MAIL_UID:$MAIL_UID::$MAILBOXES/alice" > "$M/etc/mailsite-test/users"
cat > "$M/etc/mailsite-test/dovecot.conf" <<CONF
protocols = lmtp
base_dir = /var/run/dovecot-test
log_path = /dev/stderr
ssl = no
auth_username_format = %Ln
passdb {
  driver = passwd-file
  args = /etc/mailsite-test/users
}
userdb {
  driver = passwd-file
  args = /etc/mailsite-test/users
}
first_valid_uid = $MAIL_UID
last_valid_uid = $MAIL_UID
mail_location = maildir:~/Maildir
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = 24
  }
}
CONF
chroot "$M" /usr/sbin/dovecot -F -c /etc/mailsite-test/dovecot.conf </dev/null >"$WORK/dovecot.log" 2>&1 &
dovecot=$!
trap 'kill $dovecot; wait $dovecot' EXIT
"$PYTHON" - <<PY
import smtplib, time
for _ in range(100):
    try:
        lmtp = smtplib.LMTP("127.0.0.1", 24)
        break
    except OSError:
        time.sleep(0.1)
lmtp.ehlo("mx1")
lmtp.mail("someone@example.net")
lmtp.rcpt("alice@example.org")
print("DATA", *lmtp.data(b"Subject: while the volume is away\r\n\r\nhello\r\n"))
lmtp.quit()
PY
find "$M$STATE_MOUNT" -mindepth 1 | sed "s|^$M||" | sed 's/^/WROTE /'
"""


def _deliver_to_dovecot(tmp_path: Path, boot: Boot, mounted: bool) -> tuple[str, str]:
    from mailsite.daemonroot import daemon_root
    from mailsite.model import MAIL_UID, MAIL_USER, MAILBOXES, STATE_MOUNT

    work = tmp_path / ("mounted" if mounted else "shut")
    for directory in ("upper", "work", "merged"):
        (work / directory).mkdir(parents=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DAEMON_ROOT": str(daemon_root("dovecot").path), "WORK": str(work),
           "PYTHON": sys.executable, "MAIL_USER": MAIL_USER, "MAIL_UID": str(MAIL_UID), "MAILBOXES": MAILBOXES,
           "STATE_MOUNT": STATE_MOUNT, "SHUT_MOUNT_POINT": str(boot.mount_point), "MOUNTED": "1" if mounted else ""}
    result = subprocess.run(["unshare", "-m", "-n", "--fork", "bash", "-c", LMTP_BOOT], env=env,
                            capture_output=True, text=True, timeout=120)
    log = (work / "dovecot.log").read_text() if (work / "dovecot.log").exists() else ""
    assert result.returncode == 0, result.stderr + log
    return result.stdout, log


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mount and network namespaces, an overlay")
def test_dovecot_defers_delivery_while_the_mail_volume_is_away(tmp_path):
    """Vultr's first boot of a new primary, without its volume: Dovecot's LMTP (root, delivering
    as the mail user) cannot enter the mode-0 mount point the boot script left, answers 4xx
    (smtpd keeps the message queued) and writes nothing onto the VM's own disk. The same
    delivery onto the mounted volume (mode 0755, the mailboxes directory the script makes) is
    saved: the refusal comes from the mount point, not from the test's Dovecot."""
    boot = Boot(tmp_path)
    boot.run()  # no second disk: the mount point is shut
    assert boot.mount_point.stat().st_mode & 0o777 == 0
    shut, log = _deliver_to_dovecot(tmp_path, boot, mounted=False)
    assert "DATA 451" in shut, shut + log
    assert "WROTE" not in shut, f"mail written onto the VM's disk: {shut}"
    assert "missing +x perm: /var/mailsite" in log
    mounted, log = _deliver_to_dovecot(tmp_path, boot, mounted=True)
    assert "DATA 250" in mounted, mounted + log
    assert "WROTE /var/mailsite/mail/alice/Maildir/new" in mounted


def test_boot_script_passes_sh_n_and_shellcheck(tmp_path):
    script = _script(tmp_path)
    for check in (["sh", "-n"], ["mksh", "-n"], ["shellcheck", "-s", "sh"]):
        result = subprocess.run([*check, str(script)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{check[0]}: {result.stdout}{result.stderr}"


def test_only_the_primary_mounts_the_mail_volume(example_site):
    from tests.test_render import render_site

    trees = render_site(example_site)
    assert [host for host, tree in trees.items() if "etc/rc.securelevel" in tree] == [example_site.primary.name]


@pytest.mark.parametrize("volume, line", [
    ({"size": "5 gigs"}, "mailsite:mailVolume.size = 5 gigs: not a size in G; write a whole number of gigabytes, like 20G"),
    ({"size": "500M"}, "mailsite:mailVolume.size = 500M: not a size in G; write a whole number of gigabytes, like 20G"),
    ({"size": "20000G"}, "mailsite:mailVolume.size = 20000G: out of range; choose between 1G and 10000G, like 20G"),
    ({"duid": "0000000000000000"}, "mailsite:mailVolume.duid = 0000000000000000: not a disklabel UID; write 16 hex digits "
                                   "(0-9, a-f), not all zero, like 3f2a9c0d7e1b4a55"),
], ids=["words", "megabytes", "too-large", "zero-uid"])
def test_bad_mail_volume_setting_is_one_line(volume, line):
    settings = example_settings()
    settings["mailVolume"] = volume
    assert refusal_lines(settings) == [line]


def test_the_uid_stays_with_the_site_and_can_be_kept_through_a_domain_rename():
    settings = example_settings()
    before = site_of(settings).mail_volume_duid
    assert before == site_of(example_settings()).mail_volume_duid and len(before) == 16
    settings["domains"] = ["example.com", *settings["domains"]]  # a new first domain
    assert site_of(settings).mail_volume_duid != before, "another site, another volume"
    settings["mailVolume"] = {"duid": before}
    assert site_of(settings).mail_volume_duid == before
