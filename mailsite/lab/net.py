"""The lab's wire: one network namespace per node, joined by veth pairs on a bridge (an I/O edge).

The bridge lives in a namespace of its own, so the lab adds nothing to this machine's own network
(no link, no address, no route): deleting the lab's namespaces deletes every link it made.
"""

from __future__ import annotations

import os
import re
import shlex

from .procs import NETNS_DIR, LabError, must, run
from .site import BRIDGE, NAMESPACE_PREFIX, WIRE, Node


# The names the lab gives: the wire, and a node's (a host name or the lab's own: dns, rs1).
_LAB_NAMESPACE = re.compile(re.escape(WIRE) + "|" + re.escape(NAMESPACE_PREFIX) + r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_lab_namespace(name: str) -> bool:
    """Whether the lab would have made a namespace of this name: `down` deletes it and stops what
    runs in it, so no other name (another program's namespace, a path out of /run/netns) may pass."""
    return _LAB_NAMESPACE.fullmatch(name) is not None


def lab_namespaces() -> list[str]:
    """The lab's namespaces that exist now, whoever made them (a killed run leaves some)."""
    listing = run(["ip", "netns", "list"], timeout=10).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return [name for name in names if is_lab_namespace(name)]


def in_a_lab_network(pid: int) -> bool:
    """Whether a process lives in a network namespace other than this machine's, as every lab
    process does (started by nsenter into one): a recorded pid outside is not the lab's to stop."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def namespace_inode(name: str) -> int:
    return os.stat(NETNS_DIR / name).st_ino


def add_wire() -> None:
    must(["ip", "netns", "add", WIRE])
    must(["ip", "-n", WIRE, "link", "add", BRIDGE, "type", "bridge"])
    must(["ip", "-n", WIRE, "link", "set", BRIDGE, "up"])


def add_node(node: Node, port: str) -> None:
    """The node's namespace, its link on the bridge (named as on the host) and its addresses."""
    ns = node.namespace
    must(["ip", "netns", "add", ns])
    if node.kind == "mx":
        # OpenBSD's loopback is lo0, and smtpd.conf says `listen on lo0`: Linux lets a namespace's
        # loopback be renamed, so the rendered file needs no change for it.
        must(["ip", "-n", ns, "link", "set", "lo", "name", "lo0"])
    must(["ip", "-n", ns, "link", "set", node.loopback, "up"])
    must(["ip", "-n", WIRE, "link", "add", port, "type", "veth", "peer", "name", node.link, "netns", ns])
    must(["ip", "-n", WIRE, "link", "set", port, "master", BRIDGE, "up"])
    # No duplicate address detection: while an address is tentative smtpd's `listen on vmx0`
    # cannot bind it (the link-local one included), and nothing else on the bridge can clash.
    # (/proc/sys/net is the namespace's of whoever opens it; sh, not this machine's sysctl.)
    must(["nsenter", f"--net={NETNS_DIR / ns}", "--", "sh", "-c",
          f"echo 0 > {shlex.quote(f'/proc/sys/net/ipv6/conf/{node.link}/accept_dad')}"])
    must(["ip", "-n", ns, "addr", "add", f"{node.ipv4}/24", "dev", node.link])
    must(["ip", "-n", ns, "addr", "add", f"{node.ipv6}/64", "dev", node.link, "nodad"])
    must(["ip", "-n", ns, "link", "set", node.link, "up"])


def delete_namespace(name: str) -> None:
    result = run(["ip", "netns", "del", name], timeout=10)
    if result.returncode != 0 and (NETNS_DIR / name).exists():
        raise LabError(f"cannot delete network namespace {name}: {result.stderr.strip()}")
