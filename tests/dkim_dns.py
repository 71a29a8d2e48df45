"""A name server on loopback serving TXT records, for DKIM tests: what `pulumi up` last published,
answered over the DNS protocol (UDP, RFC 1035 wire format, long texts as several strings), so the
lookups under test go through the same resolver code as against a real name server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from mailsite.dns import DnsRecord


def _strings(text: str) -> str:
    # RFC 1035 3.3.14: a character-string holds at most 255 bytes; a DKIM key needs two.
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


class TxtServer:
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.address, self.port = self.socket.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def publish(self, records: Iterable[DnsRecord]) -> None:
        """The zone as an up leaves it: these TXT records and no others."""
        published: dict[str, list[str]] = {}
        for record in records:
            if record.type == "TXT":
                published.setdefault(record.name.lower(), []).append(record.value)
        self.records = published

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self.socket.recvfrom(4096)
            except OSError:
                continue
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            answer.flags |= dns.flags.AA
            question = query.question[0]
            texts = self.records.get(question.name.to_text(omit_final_dot=True).lower())
            if texts:
                answer.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", "TXT", [_strings(t) for t in texts]))
            else:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            self.socket.sendto(answer.to_wire(), client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()
