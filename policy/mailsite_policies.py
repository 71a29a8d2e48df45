"""Policies that stop a preview whose change would break mail: a backup that would loop, a port
opened to the world, a VM not from a baked image, a key outside a secret.

Each check is a plain function over the stack's resources (`PolicyResource`s), so the tests can
feed it a passing and a violating stack without a Pulumi engine. Self-contained on purpose: the
engine runs a policy pack apart from the program.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable

from pulumi_policy import (
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

INSTANCE = "vultr:index/instance:Instance"
DNS_RECORD = "vultr:index/dnsRecord:DnsRecord"
REVERSE_V4 = "vultr:index/reverseIpv4:ReverseIpv4"
REVERSE_V6 = "vultr:index/reverseIpv6:ReverseIpv6"
FIREWALL_RULE = "vultr:index/firewallRule:FirewallRule"
DOMAIN = "libvirt:index/domain:Domain"
VOLUME = "libvirt:index/volume:Volume"
DYNAMIC = "pulumi-python:dynamic:Resource"

_ZONE_MX = re.compile(r"^(\S+)\tIN\tMX\t(\d+)\t(\S+)\.$", re.M)
_ZONE_ADDRESS = re.compile(r"^(\S+)\tIN\t(A|AAAA)\t(\S+)$", re.M)
_ZONE_PTR = re.compile(r"^(\S+)\.\tIN\tPTR\t(\S+)\.$", re.M)
_ORIGIN = re.compile(r"^\$ORIGIN (\S+)\.$", re.M)
_KEY_IN_TEXT = re.compile(r"queue encryption [0-9a-f]{32}")
# The bake's inputs that carry keys; the program marks them secret.
KEY_PROPERTIES = ("queueKey", "spamdSyncKey", "tree")


def _of(resources: Iterable[Any], typ: str) -> list[Any]:
    return [r for r in resources if r.resource_type == typ]


def _zone_files(resources) -> list[str]:
    return [r.props["text"] for r in _of(resources, DYNAMIC) if str(r.props.get("path", "")).endswith(".zone") and r.props.get("text")]


def _roles(resources) -> dict[str, str]:
    """MX name -> primary|backup, from the VMs (Vultr tags; libvirt descriptions)."""
    roles = {}
    for vm in _of(resources, INSTANCE):
        role = "primary" if "primary" in (vm.props.get("tags") or []) else "backup"
        roles[vm.props.get("hostname")] = role
    for vm in _of(resources, DOMAIN):
        roles[vm.props.get("name")] = "primary" if "primary" in str(vm.props.get("description", "")) else "backup"
    return roles


def _mx_records(resources) -> list[tuple[str, int, str]]:
    records = [(r.props["domain"], int(r.props["priority"]), r.props["data"].rstrip("."))
               for r in _of(resources, DNS_RECORD) if r.props.get("type") == "MX"]
    for text in _zone_files(resources):
        origin = _ORIGIN.search(text)
        for _, preference, target in _ZONE_MX.findall(text):
            records.append((origin[1] if origin else "?", int(preference), target))
    return records


def check_primary_preference(args: StackValidationArgs, report: ReportViolation) -> None:
    roles = _roles(args.resources)
    domains: dict[str, list[tuple[int, str]]] = {}
    for domain, preference, target in _mx_records(args.resources):
        domains.setdefault(domain, []).append((preference, target))
    for domain, records in domains.items():
        primary = [p for p, target in records if roles.get(target) == "primary"]
        backups = [(p, target) for p, target in records if roles.get(target) == "backup"]
        if not primary:
            report(f"{domain}: no MX record points at the primary")
            continue
        for preference, target in backups:
            if preference <= min(primary):
                report(f"{domain}: backup {target} has preference {preference}, not worse than the primary's {min(primary)}: mail would loop or bypass the primary")


def _addresses(resources) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for record in _of(resources, DNS_RECORD):
        if record.props.get("type") in ("A", "AAAA"):
            name = f"{record.props['name']}.{record.props['domain']}" if record.props.get("name") else record.props["domain"]
            found.setdefault(name, set()).add(str(record.props["data"]))
    for text in _zone_files(resources):
        origin = _ORIGIN.search(text)
        for owner, _, address in _ZONE_ADDRESS.findall(text):
            name = origin[1] if owner == "@" else f"{owner}.{origin[1]}"
            found.setdefault(name, set()).add(address)
    return found


def _pointers(resources) -> dict[str, str]:
    """Address -> the name its PTR answers."""
    pointers = {str(r.props["ip"]): r.props["reverse"].rstrip(".") for typ in (REVERSE_V4, REVERSE_V6) for r in _of(resources, typ)}
    for text in _zone_files(resources):
        for pointer, name in _ZONE_PTR.findall(text):
            labels = pointer.split(".")
            if pointer.endswith("in-addr.arpa"):
                pointers[".".join(reversed(labels[:4]))] = name
            elif pointer.endswith("ip6.arpa"):
                pointers[str(ipaddress.IPv6Address(":".join("".join(reversed(labels[:32]))[i:i + 4] for i in range(0, 32, 4))))] = name
    return pointers


def check_forward_confirmed(args: StackValidationArgs, report: ReportViolation) -> None:
    addresses, pointers = _addresses(args.resources), _pointers(args.resources)
    for domain, _, target in _mx_records(args.resources):
        if not addresses.get(target):
            report(f"{domain}: MX target {target} has no A or AAAA record")
        for address in sorted(addresses.get(target, ())):
            if address in ("", "None"):
                continue  # known only after the VM exists (preview)
            if pointers.get(address) != target:
                report(f"{target}: {address} has PTR {pointers.get(address)!r}, not {target}: receivers reject mail without forward-confirmed reverse DNS")


def check_no_world_sync_or_bgp(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    if str(props.get("port")) in ("8025", "179") and int(props.get("subnetSize", 32)) == 0:
        service = "spamd-sync (udp/8025)" if str(props.get("port")) == "8025" else "bgp (tcp/179)"
        report(f"{service} open to the world ({props.get('subnet')}/0); only the site's MXes or the route servers may reach it")


def check_backups_no_msa(args: StackValidationArgs, report: ReportViolation) -> None:
    backup_groups = {vm.props.get("firewallGroupId") for vm in _of(args.resources, INSTANCE) if "primary" not in (vm.props.get("tags") or [])}
    for rule in _of(args.resources, FIREWALL_RULE):
        if rule.props.get("firewallGroupId") in backup_groups and str(rule.props.get("port")) in ("465", "587"):
            report(f"{rule.name}: a backup MX exposes port {rule.props['port']}; a backup is an MTA only (tcp/25)", rule.urn)


def check_baked_image(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    if args.resource_type == INSTANCE:
        other = [k for k in ("osId", "isoId", "appId", "imageId") if props.get(k)]
        if other or "snapshotId" not in props:
            report(f"{args.name} must boot from this project's baked snapshot (snapshotId), not {other or 'nothing'}")
    elif args.resource_type == VOLUME and not props.get("source", "") and not props.get("baseVolumeId"):
        report(f"{args.name} must be made from this project's baked image (source)")


def check_keys_secret(args: ResourceValidationArgs, report: ReportViolation) -> None:
    secret = set(args.opts.additional_secret_outputs or [])
    carried = [name for name in KEY_PROPERTIES if name in args.props] if args.resource_type == DYNAMIC else []
    for name in carried:
        if name not in secret:
            report(f"{args.name}: {name} carries a key but is not a secret")
    for name, value in args.props.items():
        if name in carried and name in secret:
            continue
        if _KEY_IN_TEXT.search(str(value)):
            report(f"{args.name}: property {name} holds a queue key in clear")


def _resource(name: str, description: str, validate: Callable) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=validate)


POLICIES = [
    StackValidationPolicy(name="primary-mx-preference", description="The primary's MX preference is strictly better than every backup's.",
                          validate=check_primary_preference),
    StackValidationPolicy(name="mx-forward-confirmed", description="Every MX target has A/AAAA and a PTR answering its name.",
                          validate=check_forward_confirmed),
    _resource("no-world-spamd-sync-or-bgp", "No firewall rule opens udp/8025 or tcp/179 to the world.", check_no_world_sync_or_bgp),
    StackValidationPolicy(name="backups-mta-only", description="Backups do not expose 465/587.", validate=check_backups_no_msa),
    _resource("baked-images-only", "Every instance boots from a baked image of this project.", check_baked_image),
    _resource("queue-keys-secret", "Queue keys reach resources only as secrets.", check_keys_secret),
]
