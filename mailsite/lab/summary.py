"""What the lab prints about itself: its nodes and their daemons. What the demonstration found
is printed by mailsite.results, as doctor's checks are."""

from __future__ import annotations

from ..daemonroot import ROOTS, SUITE, daemon_root
from ..problems import printable
from . import mail
from .lab import Lab
from .site import OUTSIDE_DOMAIN

NOT_IN_THE_LAB = (
    "not in the lab: pf and spamd, OpenBSD only (pf.conf is checked by pfctl -nf in the image bake;",
    "the update job's lists are checked, its spamd-setup is not run).",
)
# What the lab runs from the daemon root, for the line that names their versions.
LAB_PACKAGES = ("opensmtpd", "openbgpd", "dnsmasq-base", "swaks")


def versions_line() -> str:
    """Which daemons, in which versions, the lab runs: those of the machine's daemon roots."""
    dovecot = daemon_root("dovecot")
    return (f"daemons from the Debian {SUITE} root: {daemon_root().describe(LAB_PACKAGES)}; "
            f"the primary's Dovecot from the {ROOTS['dovecot'].origin} root: {dovecot.describe(['dovecot-core'])}")


def _role(lab: Lab, name: str) -> str:
    node = lab.plan.node(name)
    if node.kind != "mx":
        return {"dns": "serves the site's MX, A, AAAA and PTR records",
                "internet": f"sends mail (swaks), reads it (IMAPS), receives it for {OUTSIDE_DOMAIN} (smtpd)",
                "route-server": f"bgp-spamd route server, AS {lab.plan.site.bgp_spamd.route_server_as}"}[node.kind]
    host = lab.plan.site.host(name)
    return f"{host.role} MX {host.mx_name}, preference {host.preference}"


def node_lines(lab: Lab, with_queues: bool = False) -> list[str]:
    daemons = lab.daemons()
    lines = []
    for node in lab.plan.nodes:
        running = [f"{key.split('/')[1]} {'up' if up else 'DOWN'}" for key, up in daemons.items() if key.startswith(node.name + "/")]
        line = f"  {node.name:<9} {node.namespace:<15} {node.link}: {node.ipv4} {node.ipv6}  {_role(lab, node.name)}"
        if running:
            line += f"  [{', '.join(running)}]"
        if with_queues and node.kind == "mx" and daemons.get(f"{node.name}/smtpd"):
            line += f"  queue {len(mail.queue(lab, node.name))}"
        lines.append(line)
    return lines


def up_lines(lab: Lab) -> list[str]:
    """What `lab up` and `lab demo` say once every daemon answers."""
    lines = []
    if lab.state.cleaned_before is not None:
        lines.append(f"cleaned up a lab left by a killed run (pid {lab.state.cleaned_before})")
    lines.append(f"lab up in {lab.state.up_seconds or 0:.1f} s (stack {printable(lab.state.stack)}), {versions_line()}:")
    return lines + node_lines(lab)
