"""The MTA-STS policy in the lab, served and fetched as on the internet (an I/O edge).

The primary's httpd serves the policy (mailsite.mta_sts.policy_text) at
https://mta-sts.<domain>/.well-known/mta-sts.txt. OpenBSD's httpd has no Linux build: here a
Python HTTPS server on this machine, its listening socket on port 443 in the primary's network
namespace, answers that one path for the policy hosts' names with the policy, as text/plain, and
404 to anything else, with a certificate of the lab CA for the policy hosts (the ACME scenario
proves issuance; this one proves what a sender reads). The sender is an MTA-STS client on the
internet node, RFC 8461 3.3: the policy host's address from the lab's DNS, HTTPS verified for
that name against the lab CA, 200 and text/plain only, no redirect, parsed by checkdmarc's
MTA-STS parser; and the domain's MX records asked of the lab's DNS with dnspython.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..mta_sts import WELL_KNOWN_PATH, policy_hosts, policy_text
from .acme import SHUTDOWN_POLL, socket_in
from .imap import connect_in
from .procs import LabError

if TYPE_CHECKING:
    from .lab import Lab

HTTPS = 443
_TIMEOUT = 10


class _PolicyServer(http.server.ThreadingHTTPServer):
    def __init__(self, listener: socket.socket, hosts: list[str], policy: str):
        super().__init__(("::", HTTPS), _PolicyHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.hosts, self.policy = hosts, policy


class _PolicyHandler(http.server.BaseHTTPRequestHandler):
    server: _PolicyServer

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        if self.path != WELL_KNOWN_PATH or host not in self.server.hosts:
            self.send_error(404)
            return
        body = self.server.policy.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def policy_served(lab: Lab) -> Iterator[None]:
    """The policy on the primary's port 443, for every policy host, until exit."""
    from .ca import LabCA

    site = lab.plan.site
    hosts = policy_hosts(site)
    issued = LabCA.load(lab.dir / "ca").issue(hosts)
    directory = lab.node_dir(site.primary.name) / "mta-sts"
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / "cert.pem").write_bytes(issued.certificate)
    descriptor = os.open(directory / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(issued.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    listener = socket_in(lab.plan.node(site.primary.name).namespace, listen_on=HTTPS)
    server = _PolicyServer(context.wrap_socket(listener, server_side=True), hosts, policy_text(site))
    threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,), name="mta-sts", daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def answers(lab: Lab, name: str, rdtype: str) -> list:
    """The lab DNS's records of type `rdtype` at `name` (dnspython's rdata), asked from the
    internet node, as any receiver out there asks."""
    import dns.message  # here, not at import: the scenarios' module is imported by every test worker
    import dns.query
    import dns.rdatatype

    query = dns.message.make_query(name, rdtype)
    sock = socket_in(lab.plan.internet.namespace, socket.SOCK_DGRAM, family=socket.AF_INET)
    try:
        answer = dns.query.udp(query, str(lab.plan.dns.ipv4), timeout=_TIMEOUT, sock=sock)
    finally:
        sock.close()
    wanted = dns.rdatatype.from_text(rdtype)
    return [item for rrset in answer.answer if rrset.rdtype == wanted for item in rrset]


def ask(lab: Lab, name: str, rdtype: str) -> list[str]:
    """The lab DNS's answer for `name` (its text, names without the final dot), asked with
    dnspython from the internet node."""
    return [item.to_text().rstrip(".") for item in answers(lab, name, rdtype)]


def mx_names(lab: Lab, domain: str) -> list[str]:
    """The domain's MX names, as the lab's DNS gives them."""
    return sorted(answer.split()[1] for answer in ask(lab, domain, "MX"))


@dataclass(frozen=True)
class Fetched:
    status: int
    content_type: str
    text: str


def fetch_policy(lab: Lab, domain: str) -> Fetched:
    """The domain's policy as a sending MTA fetches it (RFC 8461 3.3) from the internet node:
    https://mta-sts.<domain>/.well-known/mta-sts.txt, the address from the lab's DNS, the
    certificate verified for that name against the lab CA; never a redirect."""
    host = f"mta-sts.{domain}"
    addresses = ask(lab, host, "A")
    if not addresses:
        raise LabError(f"the lab's DNS gives {host} no address")
    internet = lab.plan.internet.namespace
    context = ssl.create_default_context(cafile=str(lab.ca_certificate))

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            self.sock = context.wrap_socket(connect_in(internet, addresses[0], HTTPS), server_hostname=host)

    connection = Connection(host, HTTPS, context=context, timeout=_TIMEOUT)
    try:
        connection.request("GET", WELL_KNOWN_PATH)
        response = connection.getresponse()
        return Fetched(response.status, response.getheader("Content-Type", ""), response.read().decode())
    finally:
        connection.close()


def policy_mx_problems(fetched: Fetched, mxes: list[str]) -> list[str]:
    """What an MTA-STS client would refuse in a fetched policy, or where its mx patterns are not
    exactly the domain's MX names (each MX matched, no pattern without an MX)."""
    # Here, not at import: checkdmarc takes half a second to import, in every test worker otherwise.
    from checkdmarc.mta_sts import parse_mta_sts_policy  # type: ignore[import-untyped]

    if fetched.status != 200:
        return [f"HTTP {fetched.status}"]
    if fetched.content_type.split(";")[0].strip().lower() != "text/plain":
        return [f"Content-Type {fetched.content_type or 'none'}, not text/plain"]
    try:
        policy = parse_mta_sts_policy(fetched.text)["policy"]
    except Exception as error:  # checkdmarc's MTASTSPolicySyntaxError and its kin
        return [f"not a policy: {error}"]
    patterns = sorted(str(pattern) for pattern in policy.get("mx", []))
    if patterns != sorted(mxes):
        return [f"mx {patterns}, the DNS's MX {sorted(mxes)}"]
    return []
