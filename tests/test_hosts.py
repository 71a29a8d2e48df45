"""How a host is reached (mailsite.hosts), what is read on it (mailsite.facts), and who may import
the rotation: components reach hosts and read the replacement order without it."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
from pathlib import Path

import pytest

from mailsite.errors import MailsiteError
from mailsite.facts import envelope_recipient, parse_key_versions, queued_envelopes
from mailsite.hosts import KNOWN_HOSTS, CommandControl, ControlError, HostControl, lab_control, ssh_control, ssh_to

ROOT = Path(__file__).resolve().parent.parent


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The project's modules a file imports, anywhere in it (in functions and TYPE_CHECKING too),
    with the packages they sit in (importing a module runs its package's __init__)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from mailsite import rotation`
    modules = set()
    for name in found:
        parts = name.split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i])))
    return modules


def _import_chains(start: list[Path]) -> dict[str, list[str]]:
    """Every project module reachable from `start`, with the chain of imports that reaches it."""
    chains = {_module_name(path): [_module_name(path)] for path in start}
    todo = list(chains)
    while todo:
        module = todo.pop()
        for imported in _imports(_module_file(module)):
            if imported not in chains:
                chains[imported] = [*chains[module], imported]
                todo.append(imported)
    return chains


def test_components_import_nothing_from_the_rotation():
    """The program (components) reaches hosts for the drain hook and orders the VMs; the rotation
    is a command that drives the program (through the Automation API), never a part of it."""
    chains = _import_chains(sorted((ROOT / "components").rglob("*.py")))
    assert "mailsite.drain" in chains and "mailsite.hosts" in chains, "the walk follows the drain hook's imports"
    assert "mailsite.rotation" not in chains, " -> ".join(chains.get("mailsite.rotation", []))


def test_the_import_walk_sees_an_import_of_the_rotation(tmp_path, monkeypatch):
    """The walk above can fail: a component importing the rotation through a module that does."""
    import tests.test_hosts as walk

    fake = tmp_path / "project"
    for name, text in {"components/__init__.py": "", "components/vm.py": "from mailsite import departure\n",
                       "mailsite/__init__.py": "", "mailsite/departure.py": "from .rotation import drain\n",
                       "mailsite/rotation.py": ""}.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    monkeypatch.setattr(walk, "ROOT", fake)
    chains = walk._import_chains(sorted((fake / "components").rglob("*.py")))
    assert chains["mailsite.rotation"] == ["components.vm", "mailsite.departure", "mailsite.rotation"]


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(HostControl, name)) for name in ("run", "reachable", "replaced")}


def test_ssh_and_lab_controls_are_one_kind_of_host_control():
    """Rotation, the drain hook and doctor are written once against HostControl: a lab host and a
    real one must be reached through the same methods, with the same signatures."""
    ssh, lab = ssh_to("mx2.example.org"), lab_control(os.getpid())
    for control in (ssh, lab):
        assert isinstance(control, HostControl)
        for name, signature in _protocol_methods().items():
            assert inspect.signature(getattr(control, name)).parameters.keys() == \
                {k: v for k, v in signature.parameters.items() if k != "self"}.keys(), name


def test_ssh_control_is_root_at_the_mx_name_with_the_sites_own_known_hosts(example_site):
    """Read back by ssh's own option parser (`ssh -G` prints the configuration it would use):
    a misspelt option, or another user or host, fails here."""
    control = ssh_control(example_site.host("mx2"))
    assert control.prefix[0] == "ssh"
    printed = subprocess.run(["ssh", "-G", *control.prefix[1:]], capture_output=True, text=True, timeout=10)
    assert printed.returncode == 0, printed.stderr
    config = dict(line.split(" ", 1) for line in printed.stdout.splitlines() if " " in line)
    assert (config["user"], config["hostname"]) == ("root", "mx2.example.org")
    assert (config["batchmode"], config["stricthostkeychecking"], config["connecttimeout"]) == ("yes", "accept-new", "15")
    assert config["userknownhostsfile"] == str(KNOWN_HOSTS)
    assert control.forget == ["ssh-keygen", "-R", "mx2.example.org", "-f", str(KNOWN_HOSTS)]


def test_a_command_that_fails_on_the_host_is_one_line_and_exits_1():
    with pytest.raises(ControlError) as failed:
        CommandControl(["sh", "-c", 'echo "smtpctl: control socket: No such file" >&2; exit 1', "--"]).run("smtpctl", "show", "queue")
    assert str(failed.value) == "`smtpctl show queue` failed: smtpctl: control socket: No such file"
    assert isinstance(failed.value, MailsiteError) and failed.value.exit_code == 1


def test_a_host_that_does_not_answer_in_time_is_one_line():
    with pytest.raises(ControlError, match=r"^`true` did not answer within 1 s$"):
        CommandControl(["sh", "-c", "exec sleep 5", "--"], timeout=1).run("true")
    assert not CommandControl(["false"]).reachable() and CommandControl([]).reachable()


def test_queue_lines_are_envelopes_and_their_recipients():
    show_queue = (
        "1c3bcc4c4ef5d0a4|inet4|mta|pending|sender@example.net|alice@example.org|alice@example.org|1764110000|0|0|432000|0|\n"
        "\n"
        "smtpctl: some warning\n"
    )
    envelopes = queued_envelopes(show_queue)
    assert len(envelopes) == 1 and envelope_recipient(envelopes[0]) == "alice@example.org"
    assert envelope_recipient("garbled") == "?"


def test_key_versions_are_read_by_name():
    text = "queue-key 3f2a9c\nspamd-sync-key 77b1\n\nstray\n"
    assert parse_key_versions(text) == {"queue-key": "3f2a9c", "spamd-sync-key": "77b1"}


def test_key_versions_are_read_where_the_basics_write_them(example_site):
    """Rotation reads the key versions from the one path the host's basics render them at."""
    from mailsite import facts
    from mailsite.daemons.basics import KEY_VERSIONS
    from tests.test_render import render_site

    assert facts.KEY_VERSIONS == f"/{KEY_VERSIONS}"
    for host, tree in render_site(example_site).items():
        assert KEY_VERSIONS in tree, host
        assert parse_key_versions(tree[KEY_VERSIONS].text), host


def test_the_lab_starts_daemons_in_the_namespaces_lab_control_reaches():
    """A lab daemon and a command through lab_control run in the same host namespaces (one prefix)."""
    from mailsite.hosts import into_lab_host
    from mailsite.lab.procs import ProcessRecord, in_host

    assert lab_control(4242).prefix == into_lab_host(4242)
    assert in_host(ProcessRecord(4242, 0), ["smtpctl", "show", "status"]) == [*into_lab_host(4242), "smtpctl", "show", "status"]
