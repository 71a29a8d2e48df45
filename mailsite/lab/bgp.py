"""What the lab asks of bgpd (through bgpctl's JSON, as the update job does), and the update job
itself, run on a lab host against its live bgpd."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..daemons.bgp_spamd_update import BLACK_LIST_FILE, BYPASS_LIST_FILE, UPDATE_JOB
from .procs import LabError

if TYPE_CHECKING:
    from .lab import Lab


def bgpctl(lab: Lab, node: str, *args: str) -> dict:
    result = lab.run_in(node, ["bgpctl", "-j", *args], timeout=10)
    if result.returncode != 0:
        raise LabError(f"{node}: bgpctl {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return json.loads(result.stdout or "{}")  # bgpctl answers nothing at all for an empty RIB


def sessions(lab: Lab, node: str) -> dict[str, str]:
    """neighbor address -> session state, from `bgpctl show summary`."""
    return {n["remote_addr"]: n["state"] for n in bgpctl(lab, node, "show", "summary").get("neighbors", [])}


def neighbors(lab: Lab, node: str) -> dict[str, dict]:
    """neighbor address -> everything `bgpctl show neighbor` says of it (config, counters)."""
    return {n["remote_addr"]: n for n in bgpctl(lab, node, "show", "neighbor").get("neighbors", [])}


def rib(lab: Lab, node: str, community: str | None = None) -> dict[str, set[str]]:
    """neighbor address -> the prefixes the MX holds from it (with `community`, if given)."""
    args = ["show", "rib"] + (["community", community] if community else [])
    held: dict[str, set[str]] = {}
    for route in bgpctl(lab, node, *args).get("rib", []):
        held.setdefault(route["neighbor"]["remote_addr"], set()).add(route["prefix"])
    return held


def received(lab: Lab, node: str) -> dict[str, set[str]]:
    """neighbor address -> every prefix it sent the MX, filtered out or not (Adj-RIB-In)."""
    got: dict[str, set[str]] = {}
    for route in bgpctl(lab, node, "show", "rib", "in").get("rib", []):
        got.setdefault(route["neighbor"]["remote_addr"], set()).add(route["prefix"])
    return got


def host_routes(prefixes) -> set[str]:
    """The prefixes an MX takes from the feed: IPv4 host routes (one address each)."""
    return {p for p in prefixes if ipaddress.ip_network(p).version == 4 and ipaddress.ip_network(p).prefixlen == 32}


def announced(lab: Lab) -> set[str]:
    """What every MX must hold: the route servers' announcements an MX takes."""
    return host_routes(set(lab.state.blacklist) | set(lab.state.bypass))


def routes_received(lab: Lab, mx: str) -> bool:
    """Whether the MX holds exactly what every route server announces, from each of them."""
    servers = [str(node.ipv4) for node in lab.plan.of_kind("route-server")]
    try:
        held = rib(lab, mx)
        established = sessions(lab, mx)
    except LabError:
        return False  # bgpd not answering yet
    want = announced(lab)
    return all(established.get(s) == "Established" and held.get(s, set()) == want for s in servers)


@dataclass(frozen=True)
class JobRun:
    status: int
    output: str
    black: list[str]  # the lines of the lists the job wrote, in order
    bypass: list[str]


def run_update_job(lab: Lab, host: str) -> JobRun:
    """The rendered /usr/local/sbin/bgp-spamd-update, on the host, against its live bgpd."""
    # spamd-setup is OpenBSD's (spamd has no Linux port): the lab checks the lists it would load.
    result = lab.run_in(host, ["env", "SPAMD_SETUP=true", "sh", f"/{UPDATE_JOB}"])
    root = lab.root(host)

    def lines(path: str) -> list[str]:
        file = root / path.lstrip("/")
        return file.read_text().splitlines() if file.exists() else []

    return JobRun(result.returncode, result.stdout + result.stderr, lines(BLACK_LIST_FILE), lines(BYPASS_LIST_FILE))
