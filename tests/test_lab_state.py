"""What the lab records about itself, read back strictly, and the lock that keeps two runs from
building or tearing down one lab at once. Pure: no namespace is made here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mailsite.errors import UserError
from mailsite.lab.net import is_lab_namespace
from mailsite.lab.state import ALREADY_UP, LabState, UnreadableState, lab_lock, lock_file, read_state

RECORD = {
    "config": "/srv/Pulumi.example.yaml", "stack": "example", "owner": None, "blacklist": [], "bypass": [],
    "namespaces": ["mslab", "mslab-dns", "mslab-internet", "mslab-rs1", "mslab-mx1"], "processes": {},
    "cleaned_before": None, "up_seconds": 1.2,
}


def test_a_record_with_the_lab_namespaces_reads_back_whole():
    state = LabState.from_json(RECORD)
    assert state.namespaces == RECORD["namespaces"] and LabState.from_json(state.to_json()) == state


@pytest.mark.parametrize("name", [
    "revE-test",  # another program's namespace: `down` would stop its processes and delete it
    "../netns/x", "../../proc/self/ns/net",  # paths out of /run/netns: this machine's own namespace
    "mslab-../x", "mslab-", "mslab-mx1/..", "mslabx", "mslab-MX1", "", "mslab-mx1\n",
])
def test_state_naming_a_namespace_the_lab_does_not_make_is_unreadable(tmp_path, name):
    (tmp_path / "state.json").write_text(json.dumps({**RECORD, "namespaces": ["mslab", name]}))
    with pytest.raises(UnreadableState, match="among the namespaces, not a lab's"):
        read_state(tmp_path)
    assert not is_lab_namespace(name)


def test_up_refuses_while_another_process_holds_the_lab(tmp_path):
    state_dir = tmp_path / "lab"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock_file(state_dir))!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError) as refused:
            with lab_lock(state_dir):
                pytest.fail("took a lab another process holds")
        assert str(refused.value) == ALREADY_UP == "a lab is already up or coming up; run lab down"
    finally:
        holder.kill()
        holder.wait()
    with lab_lock(state_dir):  # its holder gone, the lock is free: a killed run leaves none
        with lab_lock(state_dir, wait=1):  # and the holder's own teardown takes it again
            pass
