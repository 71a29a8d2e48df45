"""A bounded burst of messages into one MX, for the acceptance-rate figure (bench/lab_burst.py).

Runs inside the lab's internet namespace (`python -m mailsite.lab.burst ...` under nsenter);
prints one JSON line: how many were accepted and refused, and the seconds it took. Messages are
numbered in their subject, so that every one can be found again in a queue or a mailbox.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import threading
import time
from email.message import EmailMessage

# smtpd ends a session after 100 messages (`smtp limit max-mails`): start a new one before.
PER_SESSION = 100


def _message(sender: str, to: str, marker: str, number: int) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, f"{marker} {number}"
    message.set_content(f"burst message {number} of {marker}\n")
    return message


def _send_share(server: str, sender: str, to: str, marker: str, numbers: range, counts: dict, lock: threading.Lock) -> None:
    for start in range(numbers.start, numbers.stop, PER_SESSION):
        with smtplib.SMTP(server, 25, local_hostname="internet.test", timeout=30) as smtp:
            for number in range(start, min(start + PER_SESSION, numbers.stop)):
                try:
                    smtp.send_message(_message(sender, to, marker, number))
                    outcome = "accepted"
                except smtplib.SMTPException:
                    outcome = "refused"
                with lock:
                    counts[outcome] += 1


def burst(server: str, sender: str, to: str, marker: str, count: int, connections: int) -> dict:
    counts = {"accepted": 0, "refused": 0}
    lock = threading.Lock()
    share = -(-count // connections)
    threads = [
        threading.Thread(target=_send_share, args=(server, sender, to, marker,
                                                   range(i * share, min((i + 1) * share, count)), counts, lock))
        for i in range(connections)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**counts, "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--from", dest="sender", default="someone@internet.test")
    parser.add_argument("--marker", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(burst(args.server, args.sender, args.to, args.marker, args.count, args.connections)))


if __name__ == "__main__":
    main()
