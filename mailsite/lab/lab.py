"""A lab site up and down (an I/O edge): namespaces, daemons, and the state that lets `down`
clean up after any run, finished, interrupted or killed.

State lives in STATE_DIR: state.json (a LabState) names every namespace before it is made and
every process (pid and start time) as it starts; each node's files sit in nodes/<name>/. An MX
runs the daemons mailsite.daemons says run on its host, each as its LabRun says; the DNS server
and the route servers are the lab's own, not the site's. Each host runs in a
mount namespace of its own, held by a `sleep` (its "holder") that every daemon of the host joins:
its rendered /etc and /usr laid over this machine's (overlay: the update job writes
/etc/mail), its own /var/spool (smtpd's queue path is compiled in), its own /run (the control
sockets are compiled in too) and its own hostname (OpenBSD's /etc/myname). All of it vanishes
with the host's processes; nothing is mounted in this machine's own namespace.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Collection, Sequence

from ..config import load_site_file, stack_name
from ..daemons import LabRun, daemons_on
from ..errors import UserError
from ..templates import HostTree
from ..secrets import init_secrets, site_secrets
from ..trees import write_tree
from . import net
from .bgp import routes_received
from .procs import (
    LabError, ProcessRecord, alive, in_host, in_network, network_namespace_pids, record_of, run, spawn, stop,
    wait_until,
)
from .site import (
    BLACKLIST, BYPASS, MAILBOX_HOMES, WIRE, LabPlan, Node, host_environment, lab_plan, mailbox_owners,
    render_dnsmasq_conf, render_lab_host, render_route_server_conf,
)
from .state import ALREADY_UP, STATE_FILE, LabState, UnreadableState, lab_lock, read_state

STATE_DIR = Path("/var/lib/mailsite-lab")
TOOLS = {
    "ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "smtpd": "opensmtpd",
    "smtpctl": "opensmtpd", "bgpd": "openbgpd", "bgpctl": "openbgpd", "dnsmasq": "dnsmasq-base", "swaks": "swaks",
    "dig": "bind9-dnsutils",
}
READY_TIMEOUT = 30  # seconds for every daemon to answer; the lab is up in about one
UP_LOCK_WAIT = 3 * READY_TIMEOUT  # seconds `down` waits for another process's `up` to end


def _listening(pid: int, port: int, protocol: str = "tcp") -> bool:
    """Whether anything listens on `port` in the network namespace of process `pid`."""
    want = f":{port:04X}"
    for table in (protocol, protocol + "6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # tcp: state 0A is LISTEN; udp: 07 is an unconnected (bound) socket.
            if fields[1].endswith(want) and fields[3] == ("0A" if protocol == "tcp" else "07"):
                return True
    return False


class Lab:
    def __init__(self, plan: LabPlan, state_dir: Path, state: LabState):
        self.plan = plan
        self.dir = state_dir
        self.state = state
        self._popens: dict[str, subprocess.Popen[bytes]] = {}

    # Where things are.

    def node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def root(self, host: str) -> Path:
        """The host's rendered tree, the upper layer of its /etc and /usr: what the host writes
        there (the update job's lists) lands here too."""
        return self.node_dir(host) / "root"

    def spool(self, host: str) -> Path:
        return self.node_dir(host) / "spool"

    def homes(self, host: str) -> Path:
        return self.node_dir(host) / "home"

    def log(self, node: str, daemon: str) -> Path:
        return self.node_dir(node) / f"{daemon}.log"

    def record(self, key: str) -> ProcessRecord | None:
        return self.state.processes.get(key)

    def holder(self, node: str) -> ProcessRecord:
        record = self.record(f"{node}/host")
        # nsenter joins whatever the pid is in: a recorded pid in this machine's own namespaces
        # (a state.json not the lab's own) would run the lab's commands on this machine.
        if record is None or not alive(record) or not net.in_a_lab_network(record.pid):
            raise LabError(f"{node} is not running (its mount namespace is gone); run lab down")
        return record

    def _save(self) -> None:
        self.state.save(self.dir)

    # Bringing it up.

    @classmethod
    def up(cls, config: Path, state_dir: Path = STATE_DIR, *, stay: bool = False) -> Lab:
        """Bring the stack's site up in the lab; `stay`: the lab outlives this process (lab up),
        otherwise a later `up` treats it as left by a killed run once this process is gone."""
        preflight()
        site = load_site_file(config)
        stack = stack_name(config)
        # Held until the lab answers or is down again: a second `up` meanwhile refuses and touches nothing.
        with lab_lock(state_dir):
            cleaned = _claim(state_dir)
            plan = lab_plan(site, state_dir / "secrets")
            state = LabState(str(config.resolve()), stack, owner=record_of(os.getpid()), blacklist=list(BLACKLIST),
                             bypass=list(BYPASS), cleaned_before=cleaned)
            lab = cls(plan, state_dir, state)
            started = time.monotonic()
            try:
                lab._save()
                lab._write_files(stack)
                lab._build_network()
                lab._start_daemons()
                lab.wait_ready()
                state.up_seconds = round(time.monotonic() - started, 2)
                if stay:
                    state.owner = None
                lab._save()
            except BaseException:
                lab.down()
                raise
        return lab

    def _write_files(self, stack: str) -> None:
        init_secrets(self.plan.site, stack, self.dir)  # fresh keys in the lab's own file backend
        secrets = site_secrets(self.plan.site, stack, self.dir)
        passwd, group = Path("/etc/passwd").read_text(), Path("/etc/group").read_text()
        for host in self.plan.site.hosts:
            environment = host_environment(self.plan, host, passwd, group)
            tree: HostTree = {**render_lab_host(self.plan, host, secrets[host.name]), **environment}
            self.node_dir(host.name).mkdir(parents=True)
            write_tree(self.root(host.name), tree)
            self.spool(host.name).mkdir(parents=True)
            for user, uid in mailbox_owners(environment).items():
                home = self.homes(host.name) / user
                home.mkdir(parents=True, mode=0o700)
                os.chown(home, uid, uid)
        dns = self.node_dir("dns")
        dns.mkdir(parents=True)
        (dns / "dnsmasq.conf").write_text(render_dnsmasq_conf(self.plan))
        for server in self.plan.of_kind("route-server"):
            self.node_dir(server.name).mkdir(parents=True)
            self._write_route_server_conf(server)

    def _write_route_server_conf(self, server: Node) -> None:
        conf = self.node_dir(server.name) / "bgpd.conf"
        text = render_route_server_conf(self.plan, server, self.state.blacklist, self.state.bypass)
        descriptor = os.open(conf.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:  # bgpd refuses a config others can read
            handle.write(text)
        conf.with_suffix(".new").replace(conf)

    def _build_network(self) -> None:
        self.state.namespaces = [WIRE] + [node.namespace for node in self.plan.nodes]
        self._save()  # before any exists, so that `down` finds them all after a kill
        net.add_wire()
        for index, node in enumerate(self.plan.nodes):
            net.add_node(node, f"veth{index}")

    def _holder_script(self, node: Node) -> str:
        lines = ["set -e"]
        if node.kind == "mx":
            root, work = self.root(node.name), self.node_dir(node.name) / "work"
            for top in sorted(path.name for path in root.iterdir()):
                (work / top).mkdir(parents=True)
                lines.append(f"mount -t overlay mailsite-lab -o lowerdir=/{top},upperdir={root / top},workdir={work / top} /{top}")
            lines.append(f"mount --bind {shlex.quote(str(self.spool(node.name)))} /var/spool")
            if self.homes(node.name).exists():
                lines.append(f"mount --bind {shlex.quote(str(self.homes(node.name)))} {MAILBOX_HOMES}")
            lines.append(f"hostname {shlex.quote(self.plan.site.host(node.name).mx_name)}")
        lines += [
            "mount -t tmpfs -o mode=0755 mailsite-lab /run",
            # bgpd chroots into its user's home, /run/openbgpd, and keeps its socket there.
            "mkdir -m 0755 /run/openbgpd",
            "exec sleep infinity",
        ]
        return "\n".join(lines)

    def _start(self, node: str, daemon: str, argv: Sequence[str]) -> ProcessRecord:
        popen, record = spawn(argv, self.log(node, daemon))
        self._popens[f"{node}/{daemon}"] = popen
        self.state.processes[f"{node}/{daemon}"] = record
        self._save()
        return record

    def _start_holder(self, node: Node) -> None:
        argv = in_network(node.namespace, ["unshare", "--mount", "--uts", "--propagation", "private",
                                            "sh", "-c", self._holder_script(node)])
        record = self._start(node.name, "host", argv)
        exec_done = lambda: not alive(record) or Path(f"/proc/{record.pid}/comm").read_text().strip() == "sleep"
        if not wait_until(exec_done, 10) or not alive(record):
            raise LabError(f"{node.name}: cannot set up its mounts: {self.log(node.name, 'host').read_text().strip()[-300:]}")

    def site_daemons(self, host: str) -> dict[str, LabRun]:
        """The site's daemons the lab runs on an MX, by name, in start order."""
        site = self.plan.site
        return {daemon.name: daemon.lab for daemon in daemons_on(site, site.host(host)) if daemon.lab}

    def daemon_argv(self, node: str, daemon: str) -> list[str]:
        kind = self.plan.node(node).kind
        if kind == "dns" and daemon == "dnsmasq":
            conf, log = self.node_dir(node) / "dnsmasq.conf", self.log(node, "queries")
            return in_network(self.plan.node(node).namespace, [
                "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--pid-file=", f"--log-facility={log}",
            ])
        if kind == "route-server" and daemon == "bgpd":
            return in_host(self.holder(node), ["bgpd", "-d", "-f", str(self.node_dir(node) / "bgpd.conf")])
        run = self.site_daemons(node).get(daemon) if kind == "mx" else None
        if run is None:
            raise LabError(f"{node} runs no {daemon} in the lab")
        return in_host(self.holder(node), run.argv)

    def start_daemon(self, node: str, daemon: str) -> ProcessRecord:
        return self._start(node, daemon, self.daemon_argv(node, daemon))

    def _start_daemons(self) -> None:
        dns = self.plan.dns.name
        self.start_daemon(dns, "dnsmasq")
        servers, mxes = self.plan.of_kind("route-server"), self.plan.of_kind("mx")
        for node in servers + mxes:
            self._start_holder(node)
        # Route servers first: an MX whose first connection is refused waits bgpd's ConnectRetry.
        for server in servers:
            self.start_daemon(server.name, "bgpd")
        self._wait("the route servers' bgpd to listen on port 179",
                   lambda: all(_listening(self.holder(s.name).pid, 179) for s in servers))
        for mx in mxes:
            for daemon in self.site_daemons(mx.name):
                self.start_daemon(mx.name, daemon)

    # Waiting for it.

    def _wait(self, what: str, condition, timeout: float = READY_TIMEOUT) -> None:
        def ready() -> bool:
            dead = [key for key, record in self.state.processes.items() if key in self._popens and not alive(record)]
            if dead:
                raise LabError(f"{dead[0]} exited while the lab waited for {what}; see {self.log(*dead[0].split('/'))}")
            return bool(condition())
        if not wait_until(ready, timeout):
            raise LabError(f"timed out after {timeout} s waiting for {what}")

    def listening(self, host: str, daemon: str) -> bool:
        """Whether a site daemon on an MX listens where its LabRun says it does once ready."""
        run = self.site_daemons(host).get(daemon)
        if run is None or run.listens is None:
            raise LabError(f"{host} runs no {daemon} that listens, in the lab")
        return _listening(self.holder(host).pid, *run.listens)

    def smtpd_listening(self, host: str) -> bool:
        return self.listening(host, "smtpd")

    def wait_ready(self) -> None:
        dns = self.state.processes[f"{self.plan.dns.name}/dnsmasq"]
        self._wait("dnsmasq", lambda: _listening(dns.pid, 53, "udp"))
        mxes = [mx.name for mx in self.plan.of_kind("mx")]
        listeners = [(mx, daemon, run.listens) for mx in mxes for daemon, run in self.site_daemons(mx).items() if run.listens]
        what = sorted({f"{daemon} on {port}/{protocol}" for _, daemon, (port, protocol) in listeners})
        self._wait(f"every MX's daemons to listen ({', '.join(what)})",
                   lambda: all(_listening(self.holder(mx).pid, *listens) for mx, _, listens in listeners))
        self._wait("every MX's bgpd to hold the route servers' routes", lambda: all(routes_received(self, mx) for mx in mxes))

    # Running it.

    def stop_daemon(self, node: str, daemon: str) -> None:
        record = self.record(f"{node}/{daemon}")
        if record and stop([record]):
            raise LabError(f"{node}/{daemon} (pid {record.pid}) did not stop")
        self._reap(f"{node}/{daemon}")

    def _reap(self, key: str) -> None:
        popen = self._popens.pop(key, None)
        if popen is not None:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def run_in(self, host: str, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command as on the host: its network, mounts and name."""
        return run(in_host(self.holder(host), argv), timeout)

    def announce(self, blacklist: Sequence[str], bypass: Sequence[str]) -> None:
        """What the route servers announce from now on: their config is rewritten and reloaded,
        as a bgp-spamd operator would change the lists."""
        self.state.blacklist, self.state.bypass = list(blacklist), list(bypass)
        self._save()
        for server in self.plan.of_kind("route-server"):
            self._write_route_server_conf(server)
            result = self.run_in(server.name, ["bgpctl", "reload"])
            if result.returncode != 0:
                raise LabError(f"{server.name}: bgpctl reload failed: {result.stderr.strip()}")

    def daemons(self) -> dict[str, bool]:
        """node/daemon -> running, holders left out."""
        return {key: alive(record) for key, record in self.state.processes.items() if not key.endswith("/host")}

    # Taking it down.

    def down(self) -> list[str]:
        leftovers = teardown(self.dir)
        for key in list(self._popens):
            self._reap(key)
        return leftovers

    @classmethod
    def attach(cls, state_dir: Path = STATE_DIR) -> Lab:
        """The lab another process brought up (lab status, send, down)."""
        try:
            state = read_state(state_dir)
        except UnreadableState as error:
            raise UserError(f"{error}; run lab down") from None
        if state is None:
            raise UserError("no lab is up; run lab up")
        plan = lab_plan(load_site_file(Path(state.config)), state_dir / "secrets")
        return cls(plan, state_dir, state)


def preflight() -> None:
    if os.geteuid() != 0:
        raise UserError("lab needs root (network namespaces and mounts); run it as root")
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise UserError(f"lab needs the Debian packages {', '.join(missing)}; run make deps")


def _readable_state(state_dir: Path) -> LabState | None:
    """The record, or None for none and for one not whole (a run killed while writing it, an older
    version's): what it named is still found by the lab's namespace names."""
    try:
        return read_state(state_dir)
    except UnreadableState:
        return None


def is_up(state_dir: Path = STATE_DIR) -> bool:
    """Whether a lab is up and wanted: left by `lab up`, or its owner (a demo, a test) still runs.
    A lab whose owner is gone was left by a killed run: anyone may clean it."""
    state = _readable_state(state_dir)
    return state is not None and (state.owner is None or alive(state.owner))


def _claim(state_dir: Path) -> int | None:
    """Make way for a new lab: refuse while one is up; clean one a killed run left (returns its
    owner's pid)."""
    if not (state_dir / STATE_FILE).exists() and not net.lab_namespaces():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return None
    if is_up(state_dir):
        raise UserError(ALREADY_UP)
    state = _readable_state(state_dir)
    left = teardown(state_dir)
    if left:
        raise LabError(f"a lab left by a killed run could not be cleaned: {left[0]}")
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state.owner.pid if state and state.owner else 0


def teardown(state_dir: Path = STATE_DIR) -> list[str]:
    """Stop every lab process, delete every lab namespace and the state; what is left, if any.
    An `up` under way in another process is waited for, never torn down half-built."""
    with lab_lock(state_dir, wait=UP_LOCK_WAIT):
        return _teardown(state_dir)


def _teardown(state_dir: Path) -> list[str]:
    state = _readable_state(state_dir)
    recorded = state.namespaces if state else []
    namespaces = sorted(set(recorded) | set(net.lab_namespaces()))
    existing = [name for name in namespaces if (net.NETNS_DIR / name).exists()]
    # A recorded pid in this machine's own network namespace is not a lab process, whatever the record says.
    records = [record for record in state.processes.values() if net.in_a_lab_network(record.pid)] if state else []
    # Whatever runs in a lab namespace is the lab's, recorded or not (a daemon's children, swaks).
    inodes = {net.namespace_inode(name) for name in existing}
    for inode in inodes:
        records += [record for pid in network_namespace_pids(inode) if (record := record_of(pid))]
    stuck = stop(records)
    for name in existing:
        net.delete_namespace(name)
    shutil.rmtree(state_dir, ignore_errors=True)
    return [f"process {record.pid} still running" for record in stuck] + leftovers(state_dir, inodes)


def leftovers(state_dir: Path = STATE_DIR, inodes: Collection[int] = ()) -> list[str]:
    """Anything of a lab still on this machine: namespaces, processes, mounts, files."""
    found = [f"network namespace {name}" for name in net.lab_namespaces()]
    for inode in inodes:
        found += [f"process {pid} in a lab namespace" for pid in network_namespace_pids(inode)]
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if "mailsite-lab" in line or "/netns/mslab" in line]
    etc_netns = Path("/etc/netns")
    if etc_netns.is_dir():
        found += [f"/etc/netns/{entry.name}" for entry in etc_netns.iterdir() if entry.name.startswith("mslab")]
    if state_dir.exists():
        found.append(f"state directory {state_dir}")
    return found
