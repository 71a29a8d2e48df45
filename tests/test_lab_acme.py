"""The lab's ACME pieces that need no lab: the web server answering http-01 (over a real socket on
loopback), and what pebble and lego are told. The issuance itself is the lab scenario
certificates_issued_by_acme (tests/test_lab.py)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path

import pytest

from mailsite.lab import acme

TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"


@pytest.fixture
def challenge_server(tmp_path):
    """The http-01 server on loopback, answering from tmp_path/acme (the challenge directory)."""
    directory = tmp_path / "acme"
    directory.mkdir()
    listener = socket.create_server(("127.0.0.1", 0))
    server = acme._ChallengeServer(listener, directory, tmp_path / "http-01.log")
    threading.Thread(target=server.serve_forever, args=(acme.SHUTDOWN_POLL,), daemon=True).start()
    try:
        yield directory, listener.getsockname()[1]
    finally:
        server.shutdown()
        server.server_close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_http01_server_answers_a_token_from_the_challenge_directory_and_nothing_else(challenge_server):
    directory, port = challenge_server
    (directory / TOKEN).write_text(f"{TOKEN}.thumbprint")
    (directory.parent / "secret").write_text("not to be served")
    assert _get(port, f"/.well-known/acme-challenge/{TOKEN}") == (200, f"{TOKEN}.thumbprint".encode())
    for path in ("/", "/secret", f"/{TOKEN}", "/.well-known/acme-challenge/", "/.well-known/acme-challenge/missing",
                 "/.well-known/acme-challenge/../secret", "/.well-known/acme-challenge/%2e%2e/secret",
                 "/.well-known/mta-sts.txt"):
        status, body = _get(port, path)
        assert status == 404 and b"not to be served" not in body, path


def test_challenge_file_is_a_token_in_the_directory_or_none():
    directory = Path("/var/www/acme")
    assert acme.challenge_file(directory, f"/.well-known/acme-challenge/{TOKEN}") == directory / TOKEN
    assert acme.challenge_file(directory, f"/.well-known/acme-challenge/{TOKEN}?x=1") == directory / TOKEN
    for path in ("/.well-known/acme-challenge/a/b", "/.well-known/acme-challenge/..", "/.well-known/acme-challenge/.x",
                 "/.well-known/acme-challenge/", "/acme/" + TOKEN, "//.well-known/acme-challenge/" + TOKEN):
        assert acme.challenge_file(directory, path) is None, path


def test_pebble_listens_on_the_lab_address_and_validates_http01_on_port_80():
    config = acme.pebble_config("10.77.0.3", "/run/pebble/cert.pem", "/run/pebble/key.pem")["pebble"]
    assert config["listenAddress"] == "10.77.0.3:14000" and config["managementListenAddress"] == "10.77.0.3:15000"
    assert config["httpPort"] == 80  # the port Let's Encrypt validates on, which pf opens
    assert (config["certificate"], config["privateKey"]) == ("/run/pebble/cert.pem", "/run/pebble/key.pem")
    json.dumps(config)  # pebble reads it as JSON
    assert "PEBBLE_VA_NOSLEEP=1" in acme.pebble_environment()


def test_lego_asks_the_ca_for_the_mx_name_and_writes_tokens_where_the_web_server_answers():
    argv = acme.lego_argv("https://mail.outside.test:14000/dir", "mx1.example.org", "postmaster@example.org")
    options = dict(zip(argv, argv[1:]))
    assert argv[-1] == "run" and "--http" in argv
    assert options["--server"] == "https://mail.outside.test:14000/dir" and options["--domains"] == "mx1.example.org"
    # lego writes a token to <webroot>/.well-known/acme-challenge/<token>: the server's directory.
    assert f"{options['--http.webroot']}/.well-known/acme-challenge" == acme.CHALLENGE_DIR
