import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from tests.sites import EXAMPLE, example_settings, site_of

# A suite started in the background by a shell without job control inherits SIGINT ignored, and so
# would every tool it starts: the tests that press Ctrl-C on the tool would see it ignored. Python
# resets a handler (never an ignore) on exec, so this gives each child the default Ctrl-C again.
signal.signal(signal.SIGINT, signal.default_int_handler)

# This machine has one lab: its state directory, the mslab namespaces and their mounts are global
# names, and teardown and leftovers() look at every one of them. So the tests that bring a lab up
# or look for one (the lab fixture's, and every test_lab*/test_rotation module's) run one after
# another on one pytest-xdist worker (make test: -n with --dist loadgroup, pytest.ini), the
# biggest group, so it starts first; every other test spreads over the other workers alone.
# test_update_job runs its job under an overlay of this machine's /etc, which the lab writes to
# (/etc/netns/mslab*) while it comes up and down: a lower layer changing under a mounted overlay
# is undefined, and once its job's list was missing from the upper layer. It runs with the lab's.
LAB_GROUP = "lab"
_LAB_MODULES = ("test_lab", "test_rotation", "test_update_job")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith(_LAB_MODULES) or "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(LAB_GROUP))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Pulumi's mocks make their futures on the main thread's current event loop, as a program's
    own process has one; an asyncio.run() earlier in the same process (tests/test_rotation.py)
    leaves none. Before any fixture of a test (a module's evaluated stack too): one, if none is set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())


@pytest.fixture(scope="module")
def lab():
    """The example site in the lab, one per test module (it comes up in about a second)."""
    from mailsite.lab.lab import Lab, leftovers

    running = Lab.up(EXAMPLE)
    try:
        yield running
    finally:
        assert running.down() == []
    assert leftovers() == []


@pytest.fixture
def settings() -> dict:
    """A fresh copy of the example stack's mailsite: settings, for a test to change."""
    return example_settings()


@pytest.fixture
def example_site():
    return site_of(example_settings())


@contextlib.contextmanager
def moto_server(**env: str):
    """A real local AWS endpoint (moto_server) on loopback, stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto_server for the session, with test credentials in the environment for boto3."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-central-1")
    try:
        with moto_server() as endpoint:
            yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
