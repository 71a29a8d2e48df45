"""A lab site up and down (an I/O edge): namespaces, daemons, and the state that lets `down`
clean up after any run, finished, interrupted or killed.

State lives in STATE_DIR: state.json (a LabState) names every namespace before it is made and
every process (pid and start time) as it starts; each node's files sit in nodes/<name>/, the lab
CA in ca/, the mailbox users' passwords in passwords.json (0600). An MX runs the daemons
mailsite.daemons says run on its host, each as its LabRun says; the DNS server, the route servers
and the internet sender are the lab's own, not the site's.

Every node runs from the daemon root (mailsite.daemonroot), never from this machine's programs:
each has network, mount and uts namespaces of its own, held by a `sleep` (its "holder") chrooted
into the node's tree, which every daemon and command of the node joins (hosts.into_lab_host). That
tree is an overlay: the root below, read-only and never written; above it nodes/<name>/root, the
node's rendered files and environment, where what the node writes lands too (the update job's
lists in /etc/mail); then its own /proc, /dev, /tmp, /run (control sockets are compiled in), on
an MX its /var/spool (smtpd's queue path is compiled in too), and its hostname (OpenBSD's
/etc/myname). All of it vanishes with the node's processes; nothing is mounted in this machine's
own namespace.

A daemon of another root (Dovecot, from the "dovecot" root: OpenBSD's 2.3, not trixie's 2.4) runs
in a second tree of its host, made the same way over that root by a second holder, in the host's
network namespace but a mount namespace of its own (nodes/<name>/<root>/). On the primary both
trees share two directories of the lab's: Dovecot's base_dir, where smtpd finds the LMTP socket,
and the one standing in for the mail volume (STATE_MOUNT), so what Dovecot stores outlives the
trees, as mail outlives a replaced VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as random
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection, Sequence

from ..config import load_site_file, stack_name
from ..daemonroot import daemon_root
from ..daemons import LabRun, daemons_on
from ..daemons.redis import DIRECTORY as REDIS_DIRECTORY
from ..daemons.dkimsign import FILTER as DKIMSIGN_FILTER
from ..daemons.rspamd import FILTER as RSPAMD_FILTER
from ..errors import UserError
from ..model import LMTP_SOCKET, MAIL_UID, MAILBOXES, STATE_MOUNT, HostSecrets, Site
from ..passwords import hash_password
from ..templates import HostTree, RenderedFile
from ..dkim import dkim_records
from ..secrets import host_store, init_secrets, password_hashes_id, site_dkim_keys, site_secrets
from ..trees import write_tree
from . import net
from .backup import lend_restic, store_lab_credentials
from .bgp import routes_received, sessions
from .ca import LabCA
from .procs import (
    LabError, ProcessRecord, alive, in_host, in_network, mount_namespace_pids, network_namespace_pids, record_of, run,
    spawn, stop,
    wait_until,
)
from .site import (
    BLACKLIST, BYPASS, CA_BUNDLE, WIRE, LabPlan, Node, account_ids, host_environment, lab_plan, node_environment, pki_files,
    outside, render_dnsmasq_conf, render_lab_host, render_outside_smtpd_conf, render_route_server_conf, trust_store,
)
from .state import ALREADY_UP, STATE_FILE, LabState, UnreadableState, lab_lock, read_state

STATE_DIR = Path("/var/lib/mailsite-lab")
# What the lab runs of this machine's own: only what builds namespaces and mounts. Every daemon
# and client (smtpd, smtpctl, bgpd, bgpctl, dnsmasq, swaks, openssl) is the daemon root's.
TOOLS = {"ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux", "mount": "mount", "chroot": "coreutils"}
PASSWORDS = "passwords.json"  # in the state directory, 0600: user -> password, for this up only
OUTSIDE_SMTPD_CONF = "etc/mail/outside-smtpd.conf"  # on the internet node
HOST_ROOT = "daemons"  # the daemon root every node's first tree is laid over; others get trees of their own
# Dovecot's base_dir, which holds the LMTP socket smtpd delivers to: shared by the primary's trees.
LMTP_DIR = os.path.dirname(LMTP_SOCKET)
# smtpd.conf names OpenBSD's filter-rspamd; Debian's package puts it where Debian's smtpd looks.
DEBIAN_RSPAMD_FILTER = "/usr/libexec/opensmtpd/filter-rspamd"
DEBIAN_DKIMSIGN_FILTER = "/usr/libexec/opensmtpd/filter-dkimsign"
# The lab's additions to rspamd's rendered config. GTUBE's test variants besides the one that
# rejects, so that a scenario can send a message rspamd marks (YJS...: add header) as one of
# junkScore would be; never on a host: another variant (AJS...) lets any sender skip every check.
# And no Hyperscan for the rules: they would be compiled anew at each lab up; PCRE matches the same.
# rspamd compiles its URL matcher (ten thousand TLD suffixes) with Hyperscan as it starts: half a
# minute of a CPU, after which it listens. The compiled databases are kept on this machine and
# lent to every lab's primary (its hs_cache_dir: with a slash, which rspamd's file names follow
# at once), so only a machine's first lab up waits for it.
RSPAMD_CACHE = Path("/var/cache/mailsite/rspamd-hyperscan")
RSPAMD_CACHE_ON_NODE = "/var/cache/mailsite-rspamd"
RSPAMD_FIRST_START = 180  # seconds for a first start, the compiling included, on a loaded machine
LAB_RSPAMD_OPTIONS = ("etc/rspamd/local.d/options.inc",
                      f'gtube_patterns = "all";\ndisable_hyperscan = true;\nhs_cache_dir = "{RSPAMD_CACHE_ON_NODE}/";\n')
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


def holder_key(node: str, tree: str = HOST_ROOT) -> str:
    """The state's key of the process holding a node's tree: "mx1/host", "mx1/host-dovecot"."""
    return f"{node}/host" if tree == HOST_ROOT else f"{node}/host-{tree}"


def is_holder(key: str) -> bool:
    name = key.split("/", 1)[1]
    return name == "host" or name.startswith("host-")


class Lab:
    def __init__(self, plan: LabPlan, state_dir: Path, state: LabState):
        self.plan = plan
        self.dir = state_dir
        self.state = state
        self._popens: dict[str, subprocess.Popen[bytes]] = {}

    # Where things are.

    def node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def tree_dir(self, node: str, tree: str = HOST_ROOT) -> Path:
        """Where a node's tree over the daemon root `tree` is made: the node's first tree (over
        the "daemons" root) in its own directory, another one below it, by its root's name."""
        return self.node_dir(node) if tree == HOST_ROOT else self.node_dir(node) / tree

    def root(self, node: str, tree: str = HOST_ROOT) -> Path:
        """The node's own files, the upper layer of its tree over a daemon root: its rendered
        files and environment, and what the node writes anywhere but /tmp, /run, /var/spool and
        the primary's shared directories (the update job's lists in /etc/mail land here)."""
        return self.tree_dir(node, tree) / "root"

    def merged(self, node: str, tree: str = HOST_ROOT) -> Path:
        """Where the node's holder mounts its tree (in the node's mount namespace only)."""
        return self.tree_dir(node, tree) / "merged"

    def spool(self, host: str) -> Path:
        return self.node_dir(host) / "spool"

    def volume(self, host: str) -> Path:
        """The directory standing in for the primary's mail volume, mounted at STATE_MOUNT in each
        of its trees: Dovecot's Maildirs and indexes. It outlives a replaced primary's trees."""
        return self.node_dir(host) / "volume"

    def mailboxes(self, host: str) -> Path:
        """The users' homes on the volume, each holding its Maildir (MAILBOXES, as on the host)."""
        return self.volume(host) / os.path.relpath(MAILBOXES, STATE_MOUNT)

    def lmtp_dir(self, host: str) -> Path:
        """Dovecot's base_dir on the primary, mounted in each of its trees: smtpd's mail.lmtp
        connects to the LMTP socket Dovecot makes there."""
        return self.node_dir(host) / "lmtp"

    def trees(self, node: str) -> list[str]:
        """The daemon roots a node has a tree over: "daemons" first, then any other its daemons
        run from (an MX's LabRun.root)."""
        if self.plan.node(node).kind != "mx":
            return [HOST_ROOT]
        others = {run.root for run in self.site_daemons(node).values()} - {HOST_ROOT}
        return [HOST_ROOT, *sorted(others)]

    def log(self, node: str, daemon: str) -> Path:
        return self.node_dir(node) / f"{daemon}.log"

    @property
    def ca_certificate(self) -> Path:
        """The PEM of this up's lab CA (on this machine), which signed each MX's certificate (at
        the site's pki paths, for its MX name) and which every node trusts: it ends each node's
        CA bundle (/etc/ssl/certs/ca-certificates.crt) and is alone in /etc/ssl/mailsite-lab-ca.pem
        there. A new CA every up: no certificate of an earlier lab verifies."""
        return self.dir / "ca" / "ca.pem"

    def password(self, user: str) -> str:
        """The password of the primary's mailbox user `user` (a user of site.recipients) for this
        up: random, made afresh by every up, held 0600 in the state directory and never printed.
        Its bcrypt hash is the primary's (HostSecrets.password_hashes), so smtpd's `auth
        <credentials>` and Dovecot's passwd-file check it as the image's would."""
        try:
            return json.loads((self.dir / PASSWORDS).read_text())[user]
        except KeyError:
            raise LabError(f"{user} is not a mailbox user of the primary (recipients.users)") from None
        except OSError as error:
            raise LabError(f"no lab passwords ({error.strerror}); run lab up") from None

    def path_on(self, node: str, path: str, tree: str = HOST_ROOT) -> Path:
        """`path` as the node sees it (through its holder's root), for reading or writing what
        the node's daemons read: a file replaced here is replaced on the node."""
        return Path(f"/proc/{self.holder(node, tree).pid}/root") / path.lstrip("/")

    def record(self, key: str) -> ProcessRecord | None:
        return self.state.processes.get(key)

    def holder(self, node: str, tree: str = HOST_ROOT) -> ProcessRecord:
        record = self.record(holder_key(node, tree))
        # nsenter joins whatever the pid is in: a recorded pid in this machine's own namespaces
        # (a state.json not the lab's own) would run the lab's commands on this machine.
        if record is None:
            raise LabError(f"{node} is not running (the lab's record has no holder for it); run lab down")
        if not alive(record):
            # Its daemons keep its namespaces: the node may still take mail, but nothing enters it.
            running = [key.split("/", 1)[1] for key, daemon in self.state.processes.items()
                       if key.startswith(f"{node}/") and not is_holder(key) and alive(daemon)]
            still = f" while its {', '.join(running)} still run" if running else ""
            raise LabError(f"{node}'s holder (pid {record.pid}) is gone{still}: no command can enter {node};"
                           " run lab down")
        if not net.in_a_lab_network(record.pid):
            raise LabError(f"{node} is not running (its recorded holder, pid {record.pid}, is in no lab network);"
                           " run lab down")
        return record

    def _save(self) -> None:
        self.state.save(self.dir)

    # Bringing it up.

    @classmethod
    def up(cls, config: Path, state_dir: Path = STATE_DIR, *, stay: bool = False) -> Lab:
        """Bring the stack's site up in the lab; `stay`: the lab outlives this process (lab up),
        otherwise a later `up` treats it as left by a killed run once this process is gone."""
        site = load_site_file(config)
        preflight(site)
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
        # The users' hashes, where `mailsite user passwd` keeps them: the primary's image is
        # rendered with them, as a real one is.
        host_store(self.plan.site, self.dir).create(password_hashes_id(stack), json.dumps(self._new_passwords()))
        if self.plan.site.backup.enabled:
            store_lab_credentials(host_store(self.plan.site, self.dir), stack)
        secrets = site_secrets(self.plan.site, stack, self.dir)
        ca = LabCA.new(stack)
        ca.save(self.dir / "ca")
        common = self._common(ca)
        for node in self.plan.nodes:
            if node.kind == "mx":
                self._write_mx(node, self._mx_tree(node.name, secrets[node.name], ca, common))
            elif node.kind == "dns":
                self._write_tree(node.name, HOST_ROOT, {**common, "etc/dnsmasq.conf": RenderedFile(self._dnsmasq_conf(stack))})
            elif node.kind == "route-server":
                self._write_tree(node.name, HOST_ROOT, {**common, "etc/bgpd.conf": self._route_server_conf(node)})
            else:
                self._write_internet(node, common)

    def _dnsmasq_conf(self, stack: str) -> str:
        # The DKIM records as the program publishes them: every selector the backend holds now.
        return render_dnsmasq_conf(self.plan, dkim=dkim_records(site_dkim_keys(self.plan.site, stack, self.dir).values()))

    def publish_dns(self) -> None:
        """What `pulumi up` does to the site's DNS, done to the lab's: its records computed again
        (a DKIM key published or withdrawn), dnsmasq restarted on them."""
        conf = self.path_on(self.plan.dns.name, "/etc/dnsmasq.conf")
        conf.with_suffix(".new").write_text(self._dnsmasq_conf(self.state.stack))
        conf.with_suffix(".new").replace(conf)
        self.stop_daemon(self.plan.dns.name, "dnsmasq")
        dns = self.start_daemon(self.plan.dns.name, "dnsmasq")
        self._wait("dnsmasq", lambda: _listening(dns.pid, 53, "udp"))

    def _common(self, ca: LabCA) -> HostTree:
        """What every node lays over its root: its resolver and /etc/hosts, and its trust store."""
        bundle = (daemon_root(HOST_ROOT).path / CA_BUNDLE).read_text()
        return {**node_environment(self.plan), **trust_store(bundle, ca.pem.decode())}

    def _mx_tree(self, name: str, secrets: HostSecrets, ca: LabCA, common: HostTree) -> HostTree:
        """An MX's files: its image's, rendered, then the lab's own, and a certificate of the lab CA."""
        host = self.plan.site.host(name)
        tree = {**render_lab_host(self.plan, host, secrets), **common, **pki_files(self.plan, host, ca.issue([host.mx_name]))}
        if "rspamd" in self.site_daemons(name):
            path, text = LAB_RSPAMD_OPTIONS
            tree[path] = RenderedFile(text)
        return tree

    def _write_mx(self, node: Node, tree: HostTree) -> None:
        """An MX's files, in each of its trees (every tree holds the whole host, as one image
        does), with the root's accounts and on the primary its daemons' own; its spool; on the
        primary the directories its trees share."""
        host = self.plan.site.host(node.name)
        for name in self.trees(node.name):
            root = daemon_root(name).path
            environment = host_environment(self.plan, host, (root / "etc/passwd").read_text(), (root / "etc/group").read_text())
            self._write_tree(node.name, name, {**tree, **environment})
            # A key's directory private, as on the host (the upper layer's mode is the one seen).
            self.root(node.name, name).joinpath(self.plan.site.tls.key_for(host).lstrip("/")).parent.chmod(0o700)
        self.spool(node.name).mkdir()
        if "rspamd" in self.site_daemons(node.name):
            root = self.root(node.name)
            # Where OpenBSD's package puts the filter, and redis's directory (pkg_add makes it there).
            root.joinpath(RSPAMD_FILTER.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            root.joinpath(RSPAMD_FILTER.lstrip("/")).symlink_to(DEBIAN_RSPAMD_FILTER)
            root.joinpath(REDIS_DIRECTORY.lstrip("/")).mkdir(parents=True, exist_ok=True)
            root.joinpath(RSPAMD_CACHE_ON_NODE.lstrip("/")).mkdir(parents=True, exist_ok=True)
            RSPAMD_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
            rspamd_uid = account_ids((daemon_root(HOST_ROOT).path / "etc/passwd").read_text())["_rspamd"]
            os.chown(RSPAMD_CACHE, rspamd_uid, rspamd_uid)
        if any(daemon.name == "dkimsign" for daemon in daemons_on(self.plan.site, host)):
            # Where OpenBSD's package puts the filter a backup signs its own mail with.
            filter_path = self.root(node.name).joinpath(DKIMSIGN_FILTER.lstrip("/"))
            filter_path.parent.mkdir(parents=True, exist_ok=True)
            filter_path.symlink_to(DEBIAN_DKIMSIGN_FILTER)
        if host.is_primary:
            self.lmtp_dir(node.name).mkdir(mode=0o755)
            # A blank volume, as the image finds one at its first boot (a replaced primary finds
            # the old one, never made again): the users' homes are made by Dovecot, as the mail
            # user, in the directory the image gives it.
            if not self.volume(node.name).exists():
                self.volume(node.name).mkdir(mode=0o755)
                self.mailboxes(node.name).mkdir(mode=0o700)
                os.chown(self.mailboxes(node.name), MAIL_UID, MAIL_UID)
            for name in self.trees(node.name):
                for mount_point in (STATE_MOUNT, LMTP_DIR):
                    self.root(node.name, name).joinpath(mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
            if self.plan.site.backup.enabled:
                lend_restic(self, node.name)

    def _write_internet(self, node: Node, common: HostTree) -> None:
        """The internet node: the sender's tools, and the outside world's MTA with its Maildir."""
        world = outside(self.plan)
        self._write_tree(node.name, HOST_ROOT, {**common, OUTSIDE_SMTPD_CONF: RenderedFile(render_outside_smtpd_conf(self.plan))})
        maildir = self.root(node.name) / world.maildir.lstrip("/")
        maildir.mkdir(parents=True)
        owner = account_ids((daemon_root(HOST_ROOT).path / "etc/passwd").read_text())[world.user]
        os.chown(maildir, owner, owner)

    def outside_maildir(self) -> Path:
        """Where the outside world's MTA keeps what it receives (on this machine)."""
        return self.root(self.plan.internet.name) / outside(self.plan).maildir.lstrip("/")

    def _write_tree(self, node: str, tree_root: str, tree: HostTree) -> None:
        upper = self.root(node, tree_root)
        self.tree_dir(node, tree_root).mkdir(parents=True, exist_ok=True)  # a replaced MX's is there
        write_tree(upper, tree)
        # The upper layer's directories are the ones seen: "/" must stay searchable by the
        # daemons' unprivileged users (write_tree makes its root 0700).
        upper.chmod(0o755)
        # A file a daemon reads after giving up root is that user's, as on the host.
        passwd = tree.get("etc/passwd")
        # A user of another root's daemon (rspamd's, owning the DKIM keys, in the primary's
        # dovecot tree) keeps the number the daemons root gives it: that tree never reads the file.
        ids = {**account_ids((daemon_root(HOST_ROOT).path / "etc/passwd").read_text()),
               **account_ids(passwd.text if passwd else (daemon_root(tree_root).path / "etc/passwd").read_text())}
        for path, rendered in tree.items():
            # A tree over another root holds the whole host for its own daemons: a file of a user
            # that root lacks is none of theirs (rspamd's DKIM keys in the dovecot tree).
            if rendered.owner != "root" and (rendered.owner in ids or tree_root == HOST_ROOT):
                os.chown(upper / path, ids[rendered.owner], ids[rendered.owner])
        self.merged(node, tree_root).mkdir()
        (self.tree_dir(node, tree_root) / "work").mkdir()

    def _new_passwords(self) -> dict[str, str]:
        """A random password for each mailbox user, kept 0600 in the state directory; returns
        their bcrypt hashes, as `mailsite user passwd` makes them."""
        passwords = {user: random.token_urlsafe(18) for user in self.plan.site.recipients.users}
        descriptor = os.open(self.dir / PASSWORDS, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(passwords, handle)
        # bcrypt takes a quarter of a second a hash, on a thread each (it releases the GIL).
        with ThreadPoolExecutor() as pool:
            return dict(zip(passwords, pool.map(hash_password, passwords.values())))

    def _route_server_conf(self, server: Node) -> RenderedFile:
        # 0600: bgpd refuses a config others can read.
        return RenderedFile(render_route_server_conf(self.plan, server, self.state.blacklist, self.state.bypass), 0o600)

    def _build_network(self) -> None:
        self.state.namespaces = [WIRE] + [node.namespace for node in self.plan.nodes]
        self._save()  # before any exists, so that `down` finds them all after a kill
        net.add_wire()
        for index, node in enumerate(self.plan.nodes):
            net.add_node(node, f"veth{index}")

    def _holder_script(self, node: Node, tree: str) -> str:
        """The node's mounts for its tree over the daemon root `tree`, made in a mount namespace
        of its own, then a chroot into that tree."""
        merged = shlex.quote(str(self.merged(node.name, tree)))
        layers = (f"lowerdir={daemon_root(tree).path},upperdir={self.root(node.name, tree)},"
                  f"workdir={self.tree_dir(node.name, tree) / 'work'}")
        lines = [
            "set -e",
            f"mount -t overlay mailsite-lab -o {shlex.quote(layers)} {merged}",
            f"mount -t proc mailsite-lab {merged}/proc",
            f"mount --rbind /dev {merged}/dev",
            f"mount -t tmpfs -o mode=1777 mailsite-lab {merged}/tmp",
            f"mount -t tmpfs -o mode=0755 mailsite-lab {merged}/run",
        ]
        name = node.name
        if node.kind == "mx":
            if tree == HOST_ROOT:
                lines.append(f"mount --bind {shlex.quote(str(self.spool(node.name)))} {merged}/var/spool")
                if "rspamd" in self.site_daemons(node.name):
                    lines.append(f"mount --bind {shlex.quote(str(RSPAMD_CACHE))} {merged}{RSPAMD_CACHE_ON_NODE}")
            if self.volume(node.name).exists():
                lines += [f"mount --bind {shlex.quote(str(self.volume(node.name)))} {merged}{STATE_MOUNT}",
                          f"mount --bind {shlex.quote(str(self.lmtp_dir(node.name)))} {merged}{LMTP_DIR}"]
            name = self.plan.site.host(node.name).mx_name
        # bgpd chroots into its user's home, /run/openbgpd, and keeps its socket there (the
        # root's mkdir: this machine lends only the mount and namespace tools).
        prepare = "/bin/mkdir -m 0755 /run/openbgpd && " if tree == HOST_ROOT else ""
        lines += [
            # The uts namespace's own name (no hostname(1) needed from this machine).
            f"echo {shlex.quote(name)} > /proc/sys/kernel/hostname",
            f"exec chroot {merged} /bin/sh -c '{prepare}exec /bin/sleep infinity'",
        ]
        return "\n".join(lines)

    def _start(self, node: str, daemon: str, argv: Sequence[str]) -> ProcessRecord:
        popen, record = spawn(argv, self.log(node, daemon))
        self._popens[f"{node}/{daemon}"] = popen
        self.state.processes[f"{node}/{daemon}"] = record
        self._save()
        return record

    def _start_holders(self, nodes: Sequence[Node]) -> None:
        """The holders of every tree of `nodes` at once, then a wait until each is chrooted (its
        mounts made)."""
        records = {}
        for node in nodes:
            for tree in self.trees(node.name):
                argv = in_network(node.namespace, ["unshare", "--mount", "--uts", "--propagation", "private",
                                                    "sh", "-c", self._holder_script(node, tree)])
                key = holder_key(node.name, tree)
                records[key] = self._start(node.name, key.split("/", 1)[1], argv)

        def settled(record: ProcessRecord) -> bool:
            try:
                return not alive(record) or Path(f"/proc/{record.pid}/comm").read_text().strip() == "sleep"
            except OSError:
                return True
        wait_until(lambda: all(settled(record) for record in records.values()), 10)
        for key, record in records.items():
            if not alive(record) or not settled(record):
                raise LabError(f"{key.split('/')[0]}: cannot set up its mounts: {self.log(*key.split('/')).read_text().strip()[-300:]}")

    def site_daemons(self, host: str) -> dict[str, LabRun]:
        """The site's daemons the lab runs on an MX, by name, in start order."""
        site = self.plan.site
        return {daemon.name: daemon.lab for daemon in daemons_on(site, site.host(host)) if daemon.lab}

    def daemon_argv(self, node: str, daemon: str) -> list[str]:
        kind = self.plan.node(node).kind
        if kind == "dns" and daemon == "dnsmasq":
            # Its log (queries included) to stderr, which the lab keeps in dnsmasq.log.
            argv: Sequence[str] = ["dnsmasq", "--keep-in-foreground", "--conf-file=/etc/dnsmasq.conf", "--pid-file=",
                                   "--log-facility=-"]
        elif kind == "route-server" and daemon == "bgpd":
            argv = ["bgpd", "-d", "-f", "/etc/bgpd.conf"]
        elif kind == "internet" and daemon == "smtpd":
            argv = ["smtpd", "-d", "-f", f"/{OUTSIDE_SMTPD_CONF}"]
        else:
            run = self.site_daemons(node).get(daemon) if kind == "mx" else None
            if run is None:
                raise LabError(f"{node} runs no {daemon} in the lab")
            return in_host(self.holder(node, run.root), run.argv)
        return in_host(self.holder(node), argv)

    def start_daemon(self, node: str, daemon: str) -> ProcessRecord:
        return self._start(node, daemon, self.daemon_argv(node, daemon))

    def _start_daemons(self) -> None:
        self._start_holders(self.plan.nodes)
        self.start_daemon(self.plan.dns.name, "dnsmasq")
        self.start_daemon(self.plan.internet.name, "smtpd")
        servers, mxes = self.plan.of_kind("route-server"), self.plan.of_kind("mx")
        # Route servers first: an MX whose first connection is refused waits bgpd's ConnectRetry.
        for server in servers:
            self.start_daemon(server.name, "bgpd")
        self._wait("the route servers' bgpd to listen on port 179",
                   lambda: all(_listening(self.holder(s.name).pid, 179) and self.start_sessions(s.name) for s in servers))
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
        world = self.state.processes[f"{self.plan.internet.name}/smtpd"]
        self._wait("the internet node's smtpd", lambda: _listening(world.pid, 25))
        mxes = [mx.name for mx in self.plan.of_kind("mx")]
        listeners = [(mx, daemon, run.listens) for mx in mxes for daemon, run in self.site_daemons(mx).items() if run.listens]
        what = sorted({f"{daemon} on {port}/{protocol}" for _, daemon, (port, protocol) in listeners})
        # rspamd's first start on this machine compiles what later ones find in RSPAMD_CACHE.
        cold = any("rspamd" in self.site_daemons(mx) for mx in mxes) and not any(RSPAMD_CACHE.glob("*.hsmp"))
        self._wait(f"every MX's daemons to listen ({', '.join(what)})",
                   lambda: all(_listening(self.holder(mx).pid, *listens) for mx, _, listens in listeners),
                   RSPAMD_FIRST_START if cold else READY_TIMEOUT)
        speakers = [mx for mx in mxes if "bgpd" in self.site_daemons(mx)]
        self._wait("every MX's bgpd to answer", lambda: all(self.start_sessions(mx) for mx in speakers))
        self._wait("every MX's bgpd to hold the route servers' routes", lambda: all(routes_received(self, mx) for mx in mxes))

    def start_sessions(self, node: str) -> bool:
        """Start the node's bgp sessions now, as `bgpctl neighbor ADDRESS up` does; False while
        its bgpd does not answer yet. bgpd 8 holds every session Idle for 5 s after it starts
        (SESSION_CLEAR_DELAY), which would be most of the lab's start-up; nothing else changes."""
        try:
            idle = [address for address, state in sessions(self, node).items() if state == "Idle"]
        except LabError:
            return False
        for address in idle:
            self.run_in(node, ["bgpctl", "neighbor", address, "up"], timeout=10)
        return True

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

    def run_in(self, node: str, argv: Sequence[str], timeout: float = 30,
               input: str | None = None, tree: str = HOST_ROOT) -> subprocess.CompletedProcess[str]:
        """argv run as on the node, any kind (an MX, dns, internet, a route server): its network,
        mounts and name, the daemon root's programs (smtpctl, bgpctl, swaks, openssl; doveadm
        in the primary's "dovecot" tree) and a login's clean environment. `input`: its stdin (a
        password goes there, never in argv)."""
        return run(in_host(self.holder(node, tree), argv), timeout, input=input)

    def announce(self, blacklist: Sequence[str], bypass: Sequence[str]) -> None:
        """What the route servers announce from now on: their config is rewritten and reloaded,
        as a bgp-spamd operator would change the lists."""
        self.state.blacklist, self.state.bypass = list(blacklist), list(bypass)
        self._save()
        for server in self.plan.of_kind("route-server"):
            # Through the node's own tree: a file replaced below a mounted overlay is not seen in it.
            conf = self.path_on(server.name, "/etc/bgpd.conf")
            rendered = self._route_server_conf(server)
            descriptor = os.open(conf.with_suffix(".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, rendered.mode)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(rendered.text)
            conf.with_suffix(".new").replace(conf)
            result = self.run_in(server.name, ["bgpctl", "reload"])
            if result.returncode != 0:
                raise LabError(f"{server.name}: bgpctl reload failed: {result.stderr.strip()}")

    def replace_host(self, name: str) -> None:
        """What `pulumi up` does to an MX whose image changed, done to the lab's: the old VM goes
        (its daemons, its trees, its queue and /var/dovecot) and a new one comes from a new
        render of the host, with the secrets the backend holds for it now (a new queue key after
        a rotation). What outlives a VM stays: the node's network namespace (its addresses) and,
        on the primary, the directory standing in for the mail volume. The queue must be empty,
        as a real host is drained before it goes: a message in it would be lost."""
        node = self.plan.node(name)
        if node.kind != "mx":
            raise LabError(f"{name} is not an MX")
        if self.run_in(name, ["smtpctl", "show", "queue"], timeout=10).stdout.strip():
            raise LabError(f"{name}'s queue is not empty; drain it before replacing {name}")
        self._stop_node(name)
        for tree in self.trees(name):
            for part in ("root", "merged", "work"):
                shutil.rmtree(self.tree_dir(name, tree) / part)
        for gone in (self.spool(name), self.lmtp_dir(name)):
            shutil.rmtree(gone, ignore_errors=True)
        secrets = site_secrets(self.plan.site, self.state.stack, self.dir)[name]
        ca = LabCA.load(self.dir / "ca")
        self._write_mx(node, self._mx_tree(name, secrets, ca, self._common(ca)))
        self._start_holders([node])
        for daemon in self.site_daemons(name):
            self.start_daemon(name, daemon)
        self._wait(f"{name}'s daemons to listen again",
                   lambda: all(self.listening(name, daemon) for daemon, run in self.site_daemons(name).items() if run.listens))
        if "bgpd" in self.site_daemons(name):
            self._wait(f"{name}'s bgpd to answer", lambda: self.start_sessions(name))
            self._wait(f"{name}'s bgpd to hold the route servers' routes", lambda: routes_received(self, name))

    def _stop_node(self, name: str) -> None:
        """Every process of an MX's trees (its daemons, their children, its holders): the VM going."""
        keys = [key for key in self.state.processes if key.startswith(f"{name}/")]
        records = [self.state.processes[key] for key in keys]
        for key in keys:
            if is_holder(key) and alive(self.state.processes[key]):
                inode = os.stat(f"/proc/{self.state.processes[key].pid}/ns/mnt").st_ino
                records += [record for pid in mount_namespace_pids(inode) if (record := record_of(pid))]
        if stuck := stop(records):
            raise LabError(f"{name}: process {stuck[0].pid} did not stop")
        for key in keys:
            del self.state.processes[key]
            self._reap(key)
        self._save()

    def daemons(self) -> dict[str, bool]:
        """node/daemon -> running, holders left out."""
        return {key: alive(record) for key, record in self.state.processes.items() if not is_holder(key)}

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


def preflight(site: Site) -> None:
    """What the lab needs of this machine, or one line saying what is missing: root, the tools it
    lends, and every daemon root the site's daemons run from, checked (built first when missing
    or stale; make root builds them ahead)."""
    if os.geteuid() != 0:
        raise UserError("lab needs root (network namespaces and mounts); run it as root")
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise UserError(f"lab needs the Debian packages {', '.join(missing)}; run make deps")
    roots = {daemon.lab.root for host in site.hosts for daemon in daemons_on(site, host) if daemon.lab}
    for name in [HOST_ROOT, *sorted(roots - {HOST_ROOT})]:
        daemon_root(name)


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


_STOP_ROUNDS = 3


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
    with contextlib.ExitStack() as held:
        # Whatever runs in a lab namespace is the lab's, recorded or not (a daemon's children, swaks).
        # Each is held open until what is left in it is counted: once freed, its inode number goes
        # to the next namespace anyone makes (configtest's, another program's `unshare -n`), whose
        # processes are not the lab's.
        inodes = _held(held, [net.NETNS_DIR / name for name in existing])
        # And whatever joined a node's files only (`nsenter -m`, in this machine's network): found
        # before anything is removed, since removing a node's mount point detaches its tree from
        # every namespace's view (not from a process inside it, which still reads its keys).
        mount_inodes = _node_mount_namespaces(state_dir, held)

        def inside() -> list[ProcessRecord]:
            return [record for inode in inodes for pid in network_namespace_pids(inode) if (record := record_of(pid))] + [
                record for inode in mount_inodes for pid in mount_namespace_pids(inode) if (record := record_of(pid))]

        stuck = stop(records + inside())
        # A daemon told to stop may fork once more first (a worker replaced, a delivery started):
        # stopped too, until nothing runs in a lab namespace or a few rounds pass.
        for _ in range(_STOP_ROUNDS):
            if stuck or not (late := inside()):
                break
            stuck = stop(late)
        for name in existing:
            net.delete_namespace(name)
        left = [f"process {record.pid} still running" for record in stuck] + _processes_left(inodes, mount_inodes)
    shutil.rmtree(state_dir, ignore_errors=True)
    return left + leftovers(state_dir)


def _held(stack: contextlib.ExitStack, namespaces: Sequence[Path]) -> set[int]:
    """The inodes of the namespaces at these nsfs paths, each kept open (so kept, and its inode
    number kept from any other namespace) until `stack` closes; one gone meanwhile is left out."""
    inodes = set()
    for path in namespaces:
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        stack.callback(os.close, descriptor)
        inodes.add(os.fstat(descriptor).st_ino)
    return inodes


def _processes_left(inodes: Collection[int], mount_inodes: Collection[int]) -> list[str]:
    """Processes still in the lab's network and mount namespaces a teardown holds open (which
    outlive their names and mounts while a process is in one)."""
    found = []
    for inode in inodes:
        found += [f"process {pid} in a lab namespace" for pid in network_namespace_pids(inode)]
    for inode in mount_inodes:
        found += [f"process {pid} in a lab node's mount namespace" for pid in mount_namespace_pids(inode)]
    return found


def leftovers(state_dir: Path = STATE_DIR) -> list[str]:
    """Anything of a lab still on this machine: namespaces, processes holding a node's mounts,
    mounts, files."""
    found = [f"network namespace {name}" for name in net.lab_namespaces()]
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {line.split()[1]}" for line in mounts.splitlines() if "mailsite-lab" in line or "/netns/mslab" in line]
    found += [f"a lab node's mounts (over the daemon root), held by process {pid}" for pid in _lab_mount_holders()]
    etc_netns = Path("/etc/netns")
    if etc_netns.is_dir():
        found += [f"/etc/netns/{entry.name}" for entry in etc_netns.iterdir() if entry.name.startswith("mslab")]
    if state_dir.exists():
        found.append(f"state directory {state_dir}")
    return found


def _node_mount_namespaces(state_dir: Path, stack: contextlib.ExitStack) -> set[int]:
    """The mount namespace of each lab node still held (mnt inodes), kept open as _held keeps
    them: provably a node's, as it holds the overlay only a holder mounts, the upper layer in this
    lab's nodes/ (never this process's own namespace)."""
    nodes = f"upperdir={state_dir / 'nodes'}/"
    ours = {os.stat("/proc/self/ns/mnt").st_ino}
    found = set()
    for pid in _lab_mount_holders():
        try:
            namespace = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            mounts = Path(f"/proc/{pid}/mounts").read_text().splitlines()
        except OSError:
            continue
        if namespace not in ours and any(line.startswith("mailsite-lab ") and " overlay " in line and nodes in line
                                         for line in mounts):
            # Still the same namespace once open (the pid not gone and reused meanwhile).
            found |= _held(stack, [Path(f"/proc/{pid}/ns/mnt")]) & {namespace}
    return found


def _lab_mount_holders() -> list[int]:
    """A process of each mount namespace, other than this one, that holds a lab node's mounts
    (its overlay over the daemon root, its /run): one is left while any process keeps it, even a
    process outside the lab's network namespaces (an `nsenter -m` into a node)."""
    ours = os.stat("/proc/self/ns/mnt").st_ino
    seen, holders = {ours}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            namespace = os.stat(entry / "ns/mnt").st_ino
            if namespace in seen:
                continue
            seen.add(namespace)
            mounts = (entry / "mounts").read_text()
        except OSError:
            continue
        if any(line.split(" ", 1)[0] == "mailsite-lab" for line in mounts.splitlines()):
            holders.append(int(entry.name))
    return holders
