"""The lab from the command line, and its teardown after `down`, a crashed daemon, Ctrl-C and a
killed run: nothing left behind, and the next `up` works.

These need root (network namespaces, mounts); CI runs as root and never skips them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mailsite.daemons
import mailsite.lab.lab
import mailsite.lab.net
from mailsite.daemons import Daemon, LabRun
from mailsite.lab.lab import STATE_DIR, TOOLS, Lab, is_up, leftovers, teardown
from mailsite.lab.procs import NETNS_DIR, LabError, ProcessRecord, alive, record_of, wait_until
from tests.sites import EXAMPLE, ROOT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for network namespaces (CI runs it as root)"
)

LAB = [sys.executable, "-m", "mailsite", "lab"]


def lab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LAB + list(args), capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def started(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(LAB + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def state() -> dict:
    try:
        return json.loads((STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(autouse=True)
def no_lab_before_or_after():
    if is_up():
        pytest.fail("a lab is up: run python -m mailsite lab down")
    teardown()  # what a killed run left
    yield
    teardown()  # a failed test must not leave a lab for the next one


def test_up_status_send_and_down_from_the_command_line():
    up = lab("up", "--config", str(EXAMPLE))
    assert up.returncode == 0, up.stderr
    assert "mx2" in up.stdout and "lab up in" in up.stdout
    # Queue keys of three MXes, the spamd sync key, the password hashes, a DKIM key of each domain.
    assert _lab_secrets_held_by(up.stdout + up.stderr) == (7, 2, []), "a key, hash or password was printed"

    again = lab("up", "--config", str(EXAMPLE))
    assert (again.returncode, again.stderr) == (2, "error: a lab is already up or coming up; run lab down\n")

    sent = lab("send", "--via", "mx2", "--to", "alice@example.org")
    assert sent.returncode == 0 and "mx2: accepted" in sent.stdout, sent.stdout + sent.stderr
    refused = lab("send", "--via", "mx3", "--to", "someone@foreign.test")
    assert refused.returncode == 1 and "not accepted" in refused.stdout
    unknown = lab("send", "--via", "mx9", "--to", "alice@example.org")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: --via mx9: not an MX")

    status = lab("status")
    mx_lines = [line for line in status.stdout.splitlines() if " MX " in line]
    assert status.returncode == 0 and len(mx_lines) == 3, status.stdout
    assert all("smtpd up" in line and "bgpd up" in line for line in mx_lines), status.stdout

    records = [ProcessRecord.from_json(data) for data in state()["processes"].values()]
    os.kill(state()["processes"]["mx2/smtpd"]["pid"], signal.SIGKILL)  # a daemon crashes
    assert wait_until(lambda: "smtpd DOWN" in lab("status").stdout, 10)
    assert lab("status").returncode == 1

    down = lab("down")
    assert down.returncode == 0 and "no namespace, process, mount or state left" in down.stdout, down.stdout
    assert leftovers() == [] and not any(alive(record) for record in records)
    assert lab("status").stderr == "error: no lab is up; run lab up\n"


def _lab_secrets_held_by(text: str) -> tuple[int, int, list[str]]:
    """How many secrets (queue keys, the spamd sync key, the users' password hashes) and passwords
    the lab has, and which of them `text` holds (named, never shown): a test keeps them out of its
    own locals, which a failure's report (pytest -l) prints."""
    secrets = {f"key {path.relative_to(STATE_DIR)}": path.read_text().strip() for path in (STATE_DIR / "secrets").rglob("versions/*")}
    keys = len(secrets)
    hashes = next(json.loads(value) for name, value in secrets.items() if "password-hashes" in name)
    secrets |= {f"password hash of {user}": hashed for user, hashed in hashes.items()}
    # A DKIM secret is a JSON record: each private key inside it is looked for on its own, by its body.
    secrets |= {f"DKIM key {entry['selector']}": "".join(entry["privateKey"].splitlines()[1:-1])[:64]
                for name, value in secrets.items() if "/dkim/" in name for entry in json.loads(value)["selectors"]}
    passwords = json.loads((STATE_DIR / "passwords.json").read_text())
    secrets |= {f"password of {user}": password for user, password in passwords.items()}
    return keys, len(passwords), [name for name, secret in secrets.items() if secret in text]


def test_status_says_a_nodes_holder_is_gone_while_its_daemons_still_run():
    """With mx1's holder killed its smtpd, bgpd and Dovecot (held by a tree of its own) still run
    (in its namespaces): status says so, not that mx1 is not running, and down still stops them."""
    assert lab("up", "--config", str(EXAMPLE)).returncode == 0
    holder = ProcessRecord.from_json(state()["processes"]["mx1/host"])
    daemons = [ProcessRecord.from_json(state()["processes"][f"mx1/{daemon}"]) for daemon in ("smtpd", "bgpd", "dovecot", "redis", "rspamd")]
    os.kill(holder.pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(holder), 5)
    status = lab("status")
    assert status.returncode != 0 and status.stderr == (
        f"error: mx1's holder (pid {holder.pid}) is gone while its bgpd, redis, rspamd, dovecot, smtpd still run: no command can enter mx1;"
        " run lab down\n"), status.stderr
    assert all(alive(daemon) for daemon in daemons)
    down = lab("down")
    assert down.returncode == 0 and "no namespace, process, mount or state left" in down.stdout, down.stdout
    assert leftovers() == [] and not any(alive(daemon) for daemon in daemons)


def test_down_cleans_a_run_killed_while_starting():
    starting = started("up", "--config", str(EXAMPLE))
    assert wait_until(lambda: "mx1/host" in state().get("processes", {}), 30), starting.stderr
    starting.kill()
    starting.communicate(timeout=10)
    assert leftovers() != []
    down = lab("down")
    assert down.returncode == 0, down.stdout
    assert leftovers() == []


def test_up_after_a_killed_demo_cleans_it_and_works():
    demo = started("demo", "--config", str(EXAMPLE))
    assert wait_until(lambda: state().get("up_seconds") is not None, 30)
    killed = state()["owner"]["pid"]
    demo.kill()  # SIGKILL: no cleanup at all, every daemon left running
    demo.communicate(timeout=10)
    left = [ProcessRecord.from_json(data) for data in state()["processes"].values()]
    assert any(alive(record) for record in left)
    status = lab("status")  # its daemons still answer, but nobody runs it any more
    assert (status.returncode, status.stdout) == (2, "")
    assert status.stderr == f"error: the lab of stack example was left by a killed run (pid {killed}); run lab down\n"

    up = lab("up", "--config", str(EXAMPLE))
    assert up.returncode == 0, up.stderr
    assert f"cleaned up a lab left by a killed run (pid {killed})" in up.stdout
    assert not any(alive(record) for record in left)
    assert lab("down").returncode == 0 and leftovers() == []


def test_ctrl_c_during_the_demo_takes_the_lab_down():
    demo = started("demo", "--config", str(EXAMPLE))
    assert wait_until(lambda: state().get("up_seconds") is not None, 30)
    records = [ProcessRecord.from_json(data) for data in state()["processes"].values()]
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 130, out + err
    assert "interrupted; the lab was taken down" in err
    assert leftovers() == [] and not any(alive(record) for record in records)


def test_down_cleans_by_namespace_names_when_the_state_is_not_a_record():
    """A state.json cut short, or not a lab's record at all (an older version's): status says to
    run down, and down still finds every namespace and process by the lab's names."""
    for broken in ('{"config": "/x", "processes": {"mx1/sm', '[1, 2]', '{"config": 5}'):
        assert lab("up", "--config", str(EXAMPLE)).returncode == 0
        records = [ProcessRecord.from_json(data) for data in state()["processes"].values()]
        (STATE_DIR / "state.json").write_text(broken)
        status = lab("status")
        assert status.returncode == 2 and status.stderr.startswith("error: state.json ") and status.stderr.endswith(
            "; run lab down\n"), status.stderr
        down = lab("down")
        assert down.returncode == 0 and "no namespace, process, mount or state left" in down.stdout, down.stdout + down.stderr
        assert leftovers() == [] and not any(alive(record) for record in records)


def test_lab_starts_each_daemon_the_registry_gives_a_host_and_waits_for_it(monkeypatch):
    """A daemon module added to mailsite.daemons runs in the lab on the hosts it names, started
    by its LabRun and waited for on its port: the lab names no site daemon itself."""
    # Perl, as the daemon root has it (swaks's): a daemon runs from the root, not this machine.
    serve = "my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0:8025', Listen => 5, ReuseAddr => 1) or die $!; sleep 600"
    listener = Daemon("listener", runs_on=lambda site, host: host.is_primary,
                      lab=LabRun(("perl", "-MIO::Socket::INET", "-e", serve), (8025, "tcp")))
    monkeypatch.setattr(mailsite.daemons, "DAEMONS", (*mailsite.daemons.DAEMONS, listener))
    running = Lab.up(EXAMPLE)
    try:
        daemons = running.daemons()
        assert daemons.get("mx1/listener") is True and "mx2/listener" not in daemons, daemons
        assert running.listening("mx1", "listener")  # up() returned only once it listened
        assert {"mx1/smtpd", "mx1/bgpd", "mx2/smtpd", "mx2/bgpd"} <= set(daemons)
    finally:
        assert running.down() == []


def test_down_stops_what_a_daemon_forks_as_it_is_told_to_stop(monkeypatch):
    """A daemon that starts one more process as SIGTERM reaches it (a worker replaced, a delivery
    begun) leaves nothing behind: down stops what appeared in a lab namespace meanwhile too."""
    # Perl, as the daemon root has it: on TERM it forks a child that outlives it, then exits.
    serve = ("my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0:8025', Listen => 5, ReuseAddr => 1) or die $!; "
             "$SIG{TERM} = sub { if (!fork) { $SIG{TERM} = 'DEFAULT'; sleep 600; exit } exit }; sleep 600")
    forker = Daemon("forker", runs_on=lambda site, host: host.is_primary,
                    lab=LabRun(("perl", "-MIO::Socket::INET", "-e", serve), (8025, "tcp")))
    monkeypatch.setattr(mailsite.daemons, "DAEMONS", (*mailsite.daemons.DAEMONS, forker))
    running = Lab.up(EXAMPLE)
    assert running.down() == []
    assert leftovers() == []


def _network_of(process: subprocess.Popen) -> int | None:
    try:
        return os.stat(f"/proc/{process.pid}/ns/net").st_ino
    except OSError:
        return None


def test_down_neither_names_nor_stops_what_runs_in_a_namespace_made_as_it_deletes_the_labs(monkeypatch):
    """Another program's network namespace made while down deletes the lab's (a test's `unshare
    -n`, a container) may be given the inode number of a lab namespace already freed: what runs
    in it is not the lab's, and down says nothing is left and leaves it running."""
    running = Lab.up(EXAMPLE)
    names = set(mailsite.lab.net.lab_namespaces())
    numbers = {mailsite.lab.net.namespace_inode(name) for name in names}
    ours = os.stat("/proc/self/ns/net").st_ino
    others: list[subprocess.Popen] = []
    delete = mailsite.lab.net.delete_namespace

    def delete_then_others_make_namespaces(name: str) -> None:
        delete(name)
        names.discard(name)
        if names:
            return
        # The kernel gives a freed number again, lowest first: new namespaces, one after another,
        # until one has a number a lab namespace had, or 3 s pass.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(_network_of(other) in numbers for other in others):
            others.append(subprocess.Popen(["unshare", "--net", "sleep", "600"]))
            wait_until(lambda: _network_of(others[-1]) not in (None, ours), 5)
            time.sleep(0.05)
    monkeypatch.setattr(mailsite.lab.net, "delete_namespace", delete_then_others_make_namespaces)
    try:
        assert running.down() == []
        assert others and all(other.poll() is None for other in others), "down stopped another program's process"
    finally:
        for other in others:
            other.kill()
            other.wait()
    assert leftovers() == []


def test_down_leaves_alone_a_namespace_state_json_names_that_the_lab_does_not_make():
    """state.json naming another program's namespace is not the lab's record: down cleans by the
    lab's own names and neither stops what runs there nor deletes it."""
    other = "revE-test"
    subprocess.run(["ip", "netns", "add", other], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", other, "sleep", "600"])
    try:
        assert lab("up", "--config", str(EXAMPLE)).returncode == 0
        records = [ProcessRecord.from_json(data) for data in state()["processes"].values()]
        record = state()
        record["namespaces"].append(other)
        (STATE_DIR / "state.json").write_text(json.dumps(record))
        status = lab("status")
        assert status.returncode == 2 and "revE-test among the namespaces, not a lab's; run lab down" in status.stderr
        down = lab("down")
        assert down.returncode == 0 and "no namespace, process, mount or state left" in down.stdout, down.stdout
        assert leftovers() == [] and not any(alive(record) for record in records)
        assert sleeper.poll() is None and (NETNS_DIR / other).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "del", other])


def test_a_recorded_process_outside_the_lab_is_neither_stopped_nor_entered():
    """A pid state.json records that lives in this machine's own namespaces (a record not the
    lab's, a pid reused) is not the lab's: down leaves it running, and no command runs through it."""
    outsider = subprocess.Popen(["sleep", "600"])
    try:
        running = Lab.up(EXAMPLE)
        try:
            record = record_of(outsider.pid)
            assert record is not None
            running.state.processes["mx2/host"] = record  # what nsenter would join
            running.state.processes["mx1/stray"] = record
            running._save()
            with pytest.raises(LabError, match="mx2 is not running"):
                running.run_in("mx2", ["hostname"])
        finally:
            assert running.down() == []
        assert outsider.poll() is None, "down stopped a process outside the lab"
    finally:
        outsider.kill()
        outsider.wait()


def test_two_ups_at_once_one_refuses_and_leaves_the_other_up(monkeypatch):
    """The second `up` arrives while the first is between its claim and its first record: it says
    so and touches nothing, and the first comes up whole."""
    reached, release = threading.Event(), threading.Event()
    plan = mailsite.lab.lab.lab_plan

    def slow_plan(*args):
        reached.set()
        release.wait(60)
        return plan(*args)
    monkeypatch.setattr(mailsite.lab.lab, "lab_plan", slow_plan)
    outcome: dict = {}

    def first() -> None:
        try:
            outcome["lab"] = Lab.up(EXAMPLE)
        except BaseException as error:
            outcome["error"] = error
    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert reached.wait(30)
        second = lab("up", "--config", str(EXAMPLE))  # another process, as a second user's would be
    finally:
        release.set()
        thread.join(90)
    running = outcome.get("lab")
    assert running is not None, f"the first up failed: {outcome.get('error')!r}; the second said {second.stdout + second.stderr}"
    try:
        assert (second.returncode, second.stdout, second.stderr) == (
            2, "", "error: a lab is already up or coming up; run lab down\n")
        assert all(running.daemons().values()) and running.smtpd_listening("mx1")
    finally:
        assert running.down() == []


def test_each_up_has_a_ca_and_passwords_of_its_own():
    """Nothing of an earlier lab's TLS or logins holds in the next: a new CA (in every node's trust
    store) and new passwords."""
    first = Lab.up(EXAMPLE)
    try:
        # A digest, not the password: a failure's report (pytest -l) prints a test's locals.
        ca, password_digest = first.ca_certificate.read_text(), _digest(first.password("alice"))
    finally:
        assert first.down() == []
    second = Lab.up(EXAMPLE)
    try:
        assert second.ca_certificate.read_text() != ca and _digest(second.password("alice")) != password_digest
        assert second.run_in("internet", ["cat", "/etc/ssl/mailsite-lab-ca.pem"]).stdout == second.ca_certificate.read_text()
        with pytest.raises(LabError, match="mallory is not a mailbox user"):
            second.password("mallory")
    finally:
        assert second.down() == []


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def test_lab_tests_keep_passwords_and_keys_out_of_their_locals():
    """A failing lab test's report (pytest -l, --showlocals) prints its locals and arguments: no
    test function binds a lab password or key to a name (helpers named _x may, and return only
    names or digests)."""
    holding = []
    for path in sorted(Path(__file__).parent.glob("test_lab*.py")):
        for test in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(test, ast.FunctionDef) and test.name.startswith("test_")):
                continue
            for node in ast.walk(test):
                if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                    holding += [f"{path.name}:{node.lineno} {arg.arg}" for arg in node.args.args if "password" in arg.arg]
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None \
                        and _holds_a_secret(node.value):
                    holding.append(f"{path.name}:{node.lineno} in {test.name}")
    assert holding == []


_SECRET_FILES = ("passwords.json", "versions/*")  # in the lab's state: its passwords, its queue keys


def _holds_a_secret(expression: ast.AST) -> bool:
    """Whether an expression's value holds a lab password (lab.password()) or what a call read
    from the passwords or the queue keys; not a password passed on to a call, nor a helper's result."""
    if isinstance(expression, ast.Call):
        if isinstance(expression.func, ast.Attribute) and expression.func.attr == "password":
            return True
        if isinstance(expression.func, ast.Name) and expression.func.id.startswith("_"):
            return False
        return any(isinstance(node, ast.Constant) and node.value in _SECRET_FILES for node in ast.walk(expression))
    return any(_holds_a_secret(child) for child in ast.iter_child_nodes(expression))


def test_lab_needs_of_this_machine_only_its_namespace_and_mount_tools(tmp_path, monkeypatch):
    """With nothing on PATH but the tools TOOLS names (and sh), the lab comes up whole: no daemon
    nor client of this machine's (smtpd, bgpd, dnsmasq, swaks, sysctl) is used."""
    assert set(TOOLS) == {"ip", "nsenter", "unshare", "mount", "chroot"}
    for tool in (*TOOLS, "sh"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tmp_path))
    running = Lab.up(EXAMPLE)
    try:
        assert all(running.daemons().values()) and running.smtpd_listening("mx1")
    finally:
        assert running.down() == []


def test_leftovers_sees_each_nodes_mounts():
    """Each node's tree (its overlay over the daemon root, /proc, /run...) is mounted in its own
    mount namespace only, which leftovers() looks into: one per node, and one more for the
    primary's Dovecot tree over the "dovecot" root."""
    running = Lab.up(EXAMPLE)
    try:
        held = [line for line in leftovers() if line.startswith("a lab node's mounts (over the daemon root)")]
        assert len(held) == len(running.plan.nodes) + 1, held
    finally:
        assert running.down() == []
    assert leftovers() == []


def _joined_node_files(holder: int) -> subprocess.Popen:
    """A process that joined a node's mount namespace and root (its keys, its shadow) but not its
    network, in a session of its own, as `setsid nsenter -m -r -w` leaves one."""
    stray = subprocess.Popen(["setsid", "nsenter", "-t", str(holder), "-m", "-r", "-w", "/bin/sleep", "600"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: Path(f"/proc/{stray.pid}/root/etc/shadow").exists(), 10)
    return stray


def test_down_stops_a_process_that_joined_a_nodes_files_outside_its_network():
    """`down` says nothing is left only when nothing can still read a node's TLS key, queue key or
    shadow: a process in a node's mount namespace is the lab's, wherever its network is."""
    assert lab("up", "--config", str(EXAMPLE)).returncode == 0
    stray = _joined_node_files(state()["processes"]["mx1/host"]["pid"])
    try:
        down = lab("down")
        assert down.returncode == 0 and "no namespace, process, mount or state left" in down.stdout, down.stdout
        assert wait_until(lambda: stray.poll() is not None, 5), "down left a process in mx1's mount namespace"
        assert leftovers() == []
    finally:
        stray.kill()
        stray.wait()


def test_down_names_a_process_in_a_nodes_mount_namespace_that_it_could_not_stop(monkeypatch):
    """Should such a process survive (here: spared from being stopped), down says so, not done."""
    running = Lab.up(EXAMPLE)
    stray = _joined_node_files(running.holder("mx2").pid)
    stop = mailsite.lab.lab.stop
    monkeypatch.setattr(mailsite.lab.lab, "stop", lambda records: stop([r for r in records if r.pid != stray.pid]))
    try:
        left = running.down()
        assert f"process {stray.pid} in a lab node's mount namespace" in left, left
    finally:
        stray.kill()
        stray.wait()
    assert leftovers() == []
