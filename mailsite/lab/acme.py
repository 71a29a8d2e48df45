"""Certificates issued in the lab as on the internet, by ACME over http-01 (an I/O edge).

OpenBSD's acme-client and httpd have no Linux build, so the lab stands in for them with:

- pebble (Let's Encrypt's ACME test CA, from the daemon root) on the internet node, where a CA
  is: the MXes reach its directory at https://<the internet node's name>:14000/dir, whose
  certificate is the lab CA's (every node trusts it, as a host trusts Let's Encrypt's API through
  the public roots). Its validation looks each name up in the lab's DNS and fetches
  http://<MX name>/.well-known/acme-challenge/<token> on port 80, as Let's Encrypt does. It makes
  a new root at each start: nothing it issued chains to anything the lab trusts otherwise.
- lego (Debian's, in the daemon root) on each MX for acme-client: like acme-client, one program
  run once per certificate that writes each token into a directory the web server serves
  (acme-client's `challengedir`, lego's `--http.webroot`), runs no server of its own and touches
  no other daemon's config. dehydrated's model is as close (a challenge directory, no hook), but
  it is bash forking curl and openssl hundreds of times a certificate: the scenario took 24 to 32 s
  with it on this project's 2-CPU machine while other tests ran (load 7 to 12), 10 to 11 s with
  lego (load 2.5), one process whose time is mostly its wait before polling the authorization
  (2.5 to 7.5 s: pebble sends no Retry-After).
- for httpd, Python's http.server on this machine, its listening socket made in the MX's network
  namespace (as imap.connect_in makes the IMAP client's): it answers only
  /.well-known/acme-challenge/<token> from that directory, as the rendered httpd.conf's location
  does, and 404 to anything else.

The certificate then goes where the site's smtpd.conf reads it (site.tls), and smtpd is restarted,
as the renewal cron does after acme-client. None of this is part of `lab up` (it would cost every
up seconds): the scenario certificates_issued_by_acme runs it, and puts the lab CA's certificates
back afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import http.server
import json
import os
import re
import smtplib
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from cryptography import x509

from .imap import connect_in
from .procs import NETNS_DIR, LabError, in_host, spawn, stop, wait_until
from .site import outside

if TYPE_CHECKING:
    from .lab import Lab

ACME_PORT, MANAGEMENT_PORT, HTTP_PORT = 14000, 15000, 80  # pebble's API and its roots; http-01's
PEBBLE_DIR = "/run/pebble"  # on the internet node: pebble's config and TLS key (tmpfs, gone with the node)
# On each MX: lego's account and what it was issued (its own layout, where acme-client keeps its
# account key), and its web root: lego writes each token below it by its request path, so the
# challenge directory is WEBROOT/.well-known/acme-challenge (acme-client's is /var/www/acme).
LEGO_DIR = "/etc/acme"
WEBROOT = "/var/www/acme-lab"
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
CHALLENGE_DIR = WEBROOT + CHALLENGE_PREFIX.rstrip("/")
# RFC 8555 8.3: a token is base64url characters only; anything else is not a token.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
ISSUE_TIMEOUT = 30  # seconds for lego to register, order, be validated and fetch a certificate
_CLONE_NEWNET = 0x40000000
# How often a test web server looks whether it is to stop: shutdown() waits up to this long (the
# library's default, half a second, would cost the scenario that much per server).
SHUTDOWN_POLL = 0.02


def pebble_config(listen: str, certificate: str, key: str) -> dict[str, object]:
    """pebble's config: its API and management (roots) listeners on the node's address, its TLS
    certificate and key, and http-01 validation on port 80, the port Let's Encrypt uses (its
    default, 5002, is for tests on one machine). tls-alpn-01's port stays pebble's: no MX
    answers it, and acme-client speaks http-01 only."""
    return {"pebble": {
        "listenAddress": f"{listen}:{ACME_PORT}",
        "managementListenAddress": f"{listen}:{MANAGEMENT_PORT}",
        "certificate": certificate,
        "privateKey": key,
        "httpPort": HTTP_PORT,
        "tlsPort": 5001,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "retryAfter": {"authz": 1, "order": 1},
    }}


def pebble_environment() -> list[str]:
    """What pebble is started with: no sleep before validating (it waits up to 15 s by default,
    to catch clients that answer late) and no nonces refused at random (5% by default, to test
    clients' retries): the lab proves issuance, not the client's patience."""
    return ["PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"]


def challenge_file(directory: Path, request_path: str) -> Path | None:
    """The file answering an http-01 request for `request_path`, in the challenge `directory`:
    only /.well-known/acme-challenge/<token>, a token of base64url characters (no dot, no slash:
    nothing outside the directory); None for any other path, which gets a 404."""
    path = request_path.split("?", 1)[0]
    if not path.startswith(CHALLENGE_PREFIX):
        return None
    token = path[len(CHALLENGE_PREFIX):]
    return directory / token if _TOKEN.fullmatch(token) else None


# pebble, on the internet node.

@dataclass
class Pebble:
    lab: Lab
    name: str  # the name the MXes reach it by, in its certificate

    @property
    def directory_url(self) -> str:
        return f"https://{self.name}:{ACME_PORT}/dir"

    def root(self) -> str:
        """pebble's root certificate (PEM), which every certificate it issues chains to: from its
        management interface, verified against the lab CA."""
        internet = self.lab.plan.internet
        context = ssl.create_default_context(cafile=str(self.lab.ca_certificate))

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                plain = connect_in(internet.namespace, str(internet.ipv4), MANAGEMENT_PORT)
                self.sock = context.wrap_socket(plain, server_hostname=self.host)

        connection = Connection(self.name, MANAGEMENT_PORT, context=context, timeout=10)
        try:
            connection.request("GET", "/roots/0")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        if response.status != 200 or "BEGIN CERTIFICATE" not in body:
            raise LabError(f"pebble gave no root at /roots/0 (HTTP {response.status})")
        return body


@contextlib.contextmanager
def running_pebble(lab: Lab) -> Iterator[Pebble]:
    """pebble on the internet node, answering at its name, stopped on exit. Not a daemon of the
    lab's record: anything left in a lab namespace is stopped by `lab down` all the same."""
    from .ca import LabCA
    from .lab import _listening

    internet = lab.plan.internet
    name = outside(lab.plan).mx_name  # the one name the lab's DNS gives the internet node
    issued = LabCA.load(lab.dir / "ca").issue([name])
    directory = lab.path_on(internet.name, PEBBLE_DIR)
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / "cert.pem").write_bytes(issued.certificate)
    descriptor = os.open(directory / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(issued.key)
    config = pebble_config(str(internet.ipv4), f"{PEBBLE_DIR}/cert.pem", f"{PEBBLE_DIR}/key.pem")
    (directory / "pebble.json").write_text(json.dumps(config, indent=2))
    argv = in_host(lab.holder(internet.name), [*pebble_environment(), "pebble", "-config", f"{PEBBLE_DIR}/pebble.json",
                                              "-dnsserver", f"{lab.plan.dns.ipv4}:53"])
    log = lab.log(internet.name, "pebble")
    popen, record = spawn(argv, log)
    try:
        up = lambda: popen.poll() is None and all(_listening(record.pid, port) for port in (ACME_PORT, MANAGEMENT_PORT))
        if not wait_until(up, 10):
            raise LabError(f"pebble did not listen on {ACME_PORT} and {MANAGEMENT_PORT}: {log.read_text().strip()[-300:]}")
        yield Pebble(lab, name)
    finally:
        stop([record])
        popen.wait(timeout=5)


# The web server answering http-01 on an MX.

def socket_in(namespace: str, kind: int = socket.SOCK_STREAM, *, listen_on: int | None = None,
              family: int = socket.AF_INET6) -> socket.socket:
    """A socket made in the lab network namespace `namespace` by a thread that entered it
    (setns(2) moves that thread alone): listening on port `listen_on` of all its addresses, IPv6
    and IPv4, or unbound (a UDP client's, which stays in that network)."""
    made: dict[str, object] = {}

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(NETNS_DIR / namespace) as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}: {os.strerror(ctypes.get_errno())}")
            made["socket"] = sock = socket.socket(family, kind)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if listen_on is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::", listen_on))
                sock.listen(16)
        except OSError as error:
            made["error"] = error

    thread = threading.Thread(target=enter_and_make, name=f"socket-in-{namespace}")
    thread.start()
    thread.join()
    if "error" in made:
        raise LabError(f"cannot make a socket{f' on port {listen_on}' if listen_on else ''} in {namespace}: {made['error']}")
    made_socket = made["socket"]
    assert isinstance(made_socket, socket.socket)
    return made_socket


class _ChallengeServer(http.server.ThreadingHTTPServer):
    def __init__(self, listener: socket.socket, directory: Path, log: Path):
        super().__init__(("::", HTTP_PORT), _ChallengeHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.directory, self.log = directory, log


class _ChallengeHandler(http.server.BaseHTTPRequestHandler):
    server: _ChallengeServer

    def do_GET(self) -> None:
        found = challenge_file(self.server.directory, self.path)
        try:
            body = found.read_bytes() if found else None
        except OSError:
            body = None
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        with open(self.server.log, "a") as handle:
            handle.write(f"{self.address_string()} {format % args}\n")


@contextlib.contextmanager
def challenge_servers(lab: Lab, hosts: Sequence[str]) -> Iterator[None]:
    """On each MX of `hosts`, port 80 answering http-01 from its challenge directory, until exit."""
    servers = []
    try:
        for host in hosts:
            directory = lab.path_on(host, CHALLENGE_DIR)
            directory.mkdir(parents=True, exist_ok=True)
            listener = socket_in(lab.plan.node(host).namespace, listen_on=HTTP_PORT)
            server = _ChallengeServer(listener, directory, lab.log(host, "http-01"))
            servers.append(server)
            threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,), name=f"http-01-{host}", daemon=True).start()
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# lego on an MX, then the certificate where smtpd reads it.

def lego_argv(directory_url: str, name: str, contact: str) -> list[str]:
    """lego's command for one MX name, as acme-client is run for one domain: register, order,
    answer http-01 through the web root, fetch the full chain; an ECDSA P-256 key. lego will not
    register without a contact address (acme-client may: without acme.contact the lab gives it the
    site's postmaster)."""
    return ["lego", "--accept-tos", "--email", contact, "--server", directory_url, "--domains", name,
            "--key-type", "ec256", "--http", "--http.webroot", WEBROOT, "--path", LEGO_DIR, "run"]


def issue(lab: Lab, host: str, directory_url: str) -> None:
    """A certificate for the host's MX name, from the ACME CA at `directory_url`, installed at the
    site's pki paths on the host (the full chain, and the key 0600): what acme-client's
    `domain full chain certificate` and `domain key` give smtpd."""
    site = lab.plan.site
    name = site.host(host).mx_name
    # An account of an earlier pebble is unknown to this one (pebble forgets all when it stops).
    lab.run_in(host, ["rm", "-rf", LEGO_DIR], timeout=10)
    contact = site.acme.contact or f"postmaster@{site.domains[0]}"  # the site's, as acme-client.conf has it
    result = lab.run_in(host, lego_argv(directory_url, name, contact), timeout=ISSUE_TIMEOUT)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise LabError(f"{host}: lego got no certificate for {name}: {said[-1] if said else f'exit {result.returncode}'}")
    issued = f"{LEGO_DIR}/certificates/{name}"
    installed = lab.run_in(host, ["sh", "-c", 'install -m 0644 "$1.crt" "$2" && install -m 0600 "$1.key" "$3"', "sh",
                                  issued, site.tls.certificate_for(site.host(host)), site.tls.key_for(site.host(host))],
                           timeout=10)
    if installed.returncode != 0:
        raise LabError(f"{host}: cannot install the issued certificate: {installed.stderr.strip()}")


def issue_all(lab: Lab, hosts: Sequence[str], directory_url: str) -> None:
    """Each host's certificate, all at once (each MX asks on its own, as each host's cron does)."""
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        for done in [pool.submit(issue, lab, host, directory_url) for host in hosts]:
            done.result()


# What a sender on the internet sees.

def address_of(lab: Lab, name: str) -> str:
    """The IPv4 address the lab's DNS gives `name`, asked from the internet node."""
    answer = lab.run_in(lab.plan.internet.name, ["dig", "+short", "+time=2", "+tries=1", f"@{lab.plan.dns.ipv4}",
                                                  "A", name], timeout=10).stdout.split()
    if not answer:
        raise LabError(f"the lab's DNS gives {name} no address")
    return answer[-1]


def starttls_certificate(lab: Lab, name: str, root: str) -> str:
    """The certificate (PEM) the MX `name` presents on port 25 after STARTTLS to a sender on the
    internet node that trusts `root` alone and checks the name; raises ssl.SSLError when it does
    not verify."""
    internet = lab.plan.internet.namespace
    address = address_of(lab, name)

    class Sender(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            return connect_in(internet, address, port, timeout)

    context = ssl.create_default_context(cadata=root)
    with Sender(name, 25, local_hostname="sender.outside.test", timeout=10) as session:
        session.starttls(context=context)
        assert isinstance(session.sock, ssl.SSLSocket)
        der = session.sock.getpeercert(binary_form=True)
    assert der is not None  # a verified handshake has a peer certificate
    return ssl.DER_cert_to_PEM_cert(der)


def is_leaf_of(presented: str, chain: str) -> bool:
    """Whether the certificate presented (PEM) is the first of a full chain file (PEM)."""
    return x509.load_pem_x509_certificate(presented.encode()) == x509.load_pem_x509_certificates(chain.encode())[0]


def names_in(certificate: str) -> list[str]:
    """The DNS names a certificate (PEM) is for: its subjectAltName."""
    leaf = x509.load_pem_x509_certificate(certificate.encode())
    try:
        return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return []
