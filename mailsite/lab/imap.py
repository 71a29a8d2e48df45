"""A site user's mail client reading the primary's mailboxes over IMAPS, from the internet node.

It is Python's imaplib on this machine, in the internet node's network namespace only: the
socket is made by a thread that entered that namespace (setns(2) moves just the calling thread),
so the password stays in this process, never in an argv or a file. It verifies the certificate as
a mail client does: against the lab CA alone, for the primary's MX name, while it connects to
the address the DNS gives that name.
"""

from __future__ import annotations

import ctypes
import imaplib
import os
import re
import socket
import ssl
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from .procs import NETNS_DIR, LabError

if TYPE_CHECKING:
    from .lab import Lab

IMAPS, IMAP = 993, 143
_CLONE_NEWNET = 0x40000000
_TIMEOUT = 10


def connect_in(namespace: str, address: str, port: int, timeout: float = _TIMEOUT) -> socket.socket:
    """A TCP connection to `address`:`port` made from inside the lab network namespace
    `namespace` (this process's other threads stay where they are)."""
    made: dict[str, object] = {}

    def enter_and_connect() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(NETNS_DIR / namespace) as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}: {os.strerror(ctypes.get_errno())}")
            made["socket"] = socket.create_connection((address, port), timeout)
        except OSError as error:
            made["error"] = error

    # A thread of its own, which ends with the connection made: none of this process's threads
    # stays in the lab's network.
    thread = threading.Thread(target=enter_and_connect, name=f"connect-in-{namespace}")
    thread.start()
    thread.join()
    if "error" in made:
        error = made["error"]
        assert isinstance(error, OSError)
        raise error
    connection = made["socket"]
    assert isinstance(connection, socket.socket)
    return connection


class _Client(imaplib.IMAP4_SSL):
    """imaplib's IMAPS client, connecting through a lab namespace and verifying the certificate
    for the MX name rather than the address it dials."""

    def __init__(self, namespace: str, address: str, name: str, context: ssl.SSLContext):
        self._namespace, self._address, self._name = namespace, address, name
        super().__init__(address, IMAPS, ssl_context=context, timeout=_TIMEOUT)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        plain = connect_in(self._namespace, self._address, IMAPS, timeout or _TIMEOUT)
        return self.ssl_context.wrap_socket(plain, server_hostname=self._name)


@dataclass(frozen=True)
class Message:
    uid: int
    flags: frozenset[str]  # \Seen, \Flagged...
    subject: str


class Mailbox:
    """A logged-in IMAP session as one user, its INBOX (or another folder) selected."""

    def __init__(self, client: _Client):
        self._client = client
        self._folder = "INBOX"

    def select(self, folder: str = "INBOX") -> int:
        self._folder = folder
        status, data = self._client.select(folder)
        if status != "OK":
            raise LabError(f"IMAP SELECT {folder}: {status} {data}")
        return int(data[0] or 0)

    def uid_validity(self) -> str:
        """The selected folder's UIDVALIDITY: the same as long as its UIDs name the same messages."""
        status, data = self._client.status(self._folder, "(UIDVALIDITY)")
        found = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"") if status == "OK" else None
        if not found:
            raise LabError(f"IMAP STATUS: {status} {data}")
        return found.group(1).decode()

    def uids(self, subject: str | None = None) -> list[int]:
        """The UIDs of the selected folder's messages, those whose Subject holds `subject` only."""
        criteria = ("SUBJECT", f'"{subject}"') if subject else ("ALL",)
        status, data = self._client.uid("SEARCH", *criteria)
        if status != "OK":
            raise LabError(f"IMAP SEARCH: {status} {data}")
        return [int(uid) for uid in data[0].split()]

    def messages(self) -> dict[int, Message]:
        """Every message of the selected folder by UID, with its flags and Subject."""
        status, data = self._client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if status != "OK":
            raise LabError(f"IMAP FETCH: {status} {data}")
        found = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            meta, header = item[0].decode(), item[1].decode(errors="replace")
            uid = re.search(r"UID (\d+)", meta)
            flags = re.search(r"FLAGS \(([^)]*)\)", meta)
            if uid and flags:
                subject = header.split(":", 1)[1].strip() if ":" in header else ""
                found[int(uid[1])] = Message(int(uid[1]), frozenset(flags[1].split()), subject)
        return found

    def flag(self, uid: int, *flags: str) -> None:
        status, data = self._client.uid("STORE", str(uid), "+FLAGS", f"({' '.join(flags)})")
        if status != "OK":
            raise LabError(f"IMAP STORE: {status} {data}")

    def noop(self) -> None:
        self._client.noop()


def _context(lab: Lab) -> ssl.SSLContext:
    """A mail client's TLS: the lab CA alone is trusted, and the name must match."""
    context = ssl.create_default_context(cafile=str(lab.ca_certificate))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _primary(lab: Lab, ipv6: bool = False) -> tuple[str, str]:
    site = lab.plan.site
    node = lab.plan.node(site.primary.name)
    return str(node.ipv6 if ipv6 else node.ipv4), site.primary.mx_name


@contextmanager
def mailbox(lab: Lab, login: str, password: str, folder: str = "INBOX", *, ipv6: bool = False) -> Iterator[Mailbox]:
    """`login` (alice, or alice@<a site domain>) logged in to the primary's IMAPS with
    `password`, `folder` selected; logged out at the end; over IPv6 with `ipv6`. A refused
    login is LabError("refused ..."), with the server's words and never the password."""
    address, name = _primary(lab, ipv6)
    client = _Client(lab.plan.internet.namespace, address, name, _context(lab))
    try:
        try:
            client.login(login, password)
        except imaplib.IMAP4.error as error:
            raise LabError(f"refused: {error}") from None
        session = Mailbox(client)
        session.select(folder)
        yield session
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def login_answer(lab: Lab, login: str, password: str, *, ipv6: bool = False) -> str:
    """What the primary's IMAPS says to `login` with `password`: "accepted", or "refused: ..."."""
    try:
        with mailbox(lab, login, password, ipv6=ipv6):
            return "accepted"
    except LabError as error:
        return str(error)


def certificate_seen(lab: Lab) -> tuple[str, str]:
    """The certificate the primary's IMAPS presents (PEM) and what verifying it for the MX name
    against the lab CA said ("" when it verified)."""
    address, name = _primary(lab)
    plain = connect_in(lab.plan.internet.namespace, address, IMAPS)
    try:
        with _context(lab).wrap_socket(plain, server_hostname=name) as wrapped:
            der = wrapped.getpeercert(binary_form=True)
            return ssl.DER_cert_to_PEM_cert(der or b""), ""
    except ssl.SSLCertVerificationError as error:
        return "", error.verify_message or str(error)
    finally:
        plain.close()


def refused_name(lab: Lab, name: str) -> str:
    """What verifying the primary's IMAPS certificate for another `name` says (refused: the
    check is real); "" if it verified, which it must not."""
    address, _ = _primary(lab)
    plain = connect_in(lab.plan.internet.namespace, address, IMAPS)
    try:
        with _context(lab).wrap_socket(plain, server_hostname=name):
            return ""
    except ssl.SSLCertVerificationError as error:
        return error.verify_message or str(error)
    finally:
        plain.close()


def port_open(lab: Lab, port: int) -> bool:
    """Whether the primary takes a TCP connection on `port` from the internet node."""
    address, _ = _primary(lab)
    try:
        connect_in(lab.plan.internet.namespace, address, port, timeout=3).close()
    except OSError:
        return False
    return True
