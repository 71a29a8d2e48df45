"""The edge: stack settings in, a validated Site out, or every problem at once."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from .model import Site
from .problems import HIDDEN, NAMESPACE, Problem, SiteConfigError, from_validation_error, setting_name, show
from .rules import site_problems

_SECRET_SETTINGS = {"mailsite:secrets.queueKeys", "mailsite:secrets.spamdSyncKey"}

# A stack file is a few kilobytes. The limits stop a pull request's file (read by the PR `diff`
# job too) from taking the machine: an alias bomb expands to gigabytes from a few hundred bytes.
MAX_STACK_BYTES = 1 << 20
MAX_VALUES = 200_000  # values after aliases are expanded
MAX_DEPTH = 64
MAX_NUMBER_CHARACTERS = 100  # an AS number or a size is a few digits
_NUMBERS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


def load_site(settings: Mapping[str, Any], secret_settings: frozenset[str] = frozenset()) -> Site:
    """Validate the `mailsite:` settings (keys without the namespace, as in the stack file).
    `secret_settings`: settings the stack keeps as secrets, whose values no error line shows."""
    hidden = _SECRET_SETTINGS | secret_settings
    try:
        site = Site.model_validate(dict(settings))
    except ValidationError as error:
        raise SiteConfigError(from_validation_error(error, hidden)) from None
    problems = [Problem(p.setting, HIDDEN, p.message) if _under(p.setting, secret_settings) else p for p in site_problems(site)]
    if problems:
        raise SiteConfigError(problems)
    return site


def _under(setting: str, settings: frozenset[str]) -> bool:
    return any(setting == name or setting.startswith((name + ".", name + "[")) for name in settings)


# Pulumi's own rule for a stack name (dots allowed: Pulumi.prod.eu.yaml is stack prod.eu); names
# of dots only would make secret ids like mailsite/../mx1/queue-key.
_STACK_NAME = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.-]{1,100}")


def stack_name(path: Path) -> str:
    """Pulumi.<stack>.yaml names its stack."""
    name = path.name
    for suffix in (".yaml", ".yml"):
        if name.startswith("Pulumi.") and name.endswith(suffix) and _STACK_NAME.fullmatch(name[len("Pulumi."): -len(suffix)]):
            return name[len("Pulumi."): -len(suffix)]
    raise SiteConfigError([Problem("--config", str(path), "not a stack file; name it Pulumi.<stack>.yaml, the stack's name "
                                   "of letters, digits, _, . and - as pulumi takes it")])


class _Refused(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _check_nodes(root: yaml.Node) -> None:
    """Refuse what Pulumi's own reader refuses (a key twice in one mapping) and what would expand
    past the limits; counted on the composed graph, where an alias is one shared node."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise _Refused(f"an alias at line {node.start_mark.line + 1} refers to a value that holds it; write the value out")
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep at line {node.start_mark.line + 1}; a stack file needs a few")
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:
                        raise _Refused(f"the key {key.value[:60]!r} at line {key.start_mark.line + 1} is already set at line "
                                       f"{seen[key.tag, key.value]}; keep one of them (pulumi refuses the file too)")
                    seen[key.tag, key.value] = key.start_mark.line + 1
                total += size(key, depth + 1) + size(value, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        elif node.tag in _NUMBERS and len(node.value) > MAX_NUMBER_CHARACTERS:
            # A 4000-digit hex number reads, then cannot be written in decimal in an error line.
            raise _Refused(f"holds a number too long to read at line {node.start_mark.line + 1}; fix the file")
        if total > MAX_VALUES:
            raise _Refused(f"expands to more than {MAX_VALUES} values (aliases repeat what they name); write the settings out plainly")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root, 0)


def _read_regular_file(path: Path) -> bytes:
    """At most MAX_STACK_BYTES + 1 bytes of a regular file. A FIFO or a terminal (a path to
    /dev/stdin) would keep the tool waiting for a writer forever; a device is no stack file."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise _Refused("not a regular file (a pipe or a device); give the path of a Pulumi.<stack>.yaml")
        return handle.read(MAX_STACK_BYTES + 1)


def read_stack_yaml(path: Path) -> Any:
    """A stack file's YAML, read as Pulumi reads it (UTF-8, each key once) and within limits."""
    problem = lambda message: SiteConfigError([Problem("--config", str(path), message)])  # noqa: E731
    try:
        data = _read_regular_file(path)
    except _Refused as refused:
        raise problem(refused.message) from None
    except OSError as error:
        raise problem(f"cannot read it ({error.strerror}); give the path of a Pulumi.<stack>.yaml") from None
    if len(data) > MAX_STACK_BYTES:
        raise problem(f"larger than {MAX_STACK_BYTES >> 20} MiB; a stack file is a few kilobytes, check it is the right file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise problem(f"not UTF-8 text (line {line}); save it as UTF-8, as pulumi expects") from None
    try:
        # The reader refuses control characters (a NUL, an escape) as it is made, not later.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as error:
        line = text[: getattr(error, "position", 0)].count("\n") + 1
        raise problem(f"holds a control character YAML does not allow (line {line}); remove it") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    except _Refused as refused:
        raise problem(refused.message) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise problem(f"not valid YAML at {where}; fix the file") from None
    except RecursionError:
        raise problem(f"nested more than {MAX_DEPTH} levels deep; a stack file needs a few") from None
    except (ValueError, OverflowError):
        raise problem("holds a number too long to read; fix the file") from None
    finally:
        loader.dispose()


def encrypted(value: Any, loc: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Where `pulumi config set --secret` (with --path: at any depth) left an encrypted value."""
    if isinstance(value, dict):
        if set(value) == {"secure"} and isinstance(value["secure"], str):
            return [loc]
        return [found for key, item in value.items() for found in encrypted(item, loc + (str(key),))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in encrypted(item, loc + (index,))]
    return []


def encrypted_problem(loc: tuple[Any, ...]) -> Problem:
    setting = setting_name(loc)
    cannot = "encrypted by pulumi config set --secret, which only the Pulumi CLI and the stack's secrets provider can decrypt"
    if any(setting.startswith(path) for path in _SECRET_SETTINGS):
        fix = "keys belong in the secrets backend: remove it and run python -m mailsite secrets init"
    else:
        fix = "it is not a secret: set it in clear (pulumi config set --path without --secret)"
    return Problem(setting, "<encrypted>", f"{cannot}; {fix}")


def read_stack_settings(path: Path) -> dict[str, Any]:
    """The `mailsite:` settings of a Pulumi.<stack>.yaml, as the Pulumi program sees them."""
    document = read_stack_yaml(path)
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise SiteConfigError([Problem("--config", str(path), "has no config: section; see Pulumi.example.yaml")])
    settings: dict[str, Any] = {}
    problems = []
    for key, value in config.items():
        namespace, colon, name = str(key).partition(":")
        if (problem := _unnamespaced(str(key), namespace, colon, name)) is not None:
            problems.append(problem)
            continue
        if namespace != NAMESPACE:
            continue  # other providers' settings (vultr:, aws:, ...) are theirs to check
        problems += [encrypted_problem((name, *loc)) for loc in encrypted(value, ())]
        settings[name] = value
    if problems:
        raise SiteConfigError(problems)
    return settings


def _unnamespaced(key: str, namespace: str, colon: str, name: str) -> Problem | None:
    """A key pulumi would not read as one of ours, written as if it were: said, not skipped (a
    skipped one shows only as the "required; add it" of the setting it was meant to be)."""
    nested = f"write each setting on its own line of config:, as {NAMESPACE}:<name> (see Pulumi.example.yaml)"
    if key == NAMESPACE or (namespace == NAMESPACE and colon and not name):
        return Problem(show(key), HIDDEN, f"settings do not go in a section of their own; {nested}")
    if not colon:
        return Problem(show(key), HIDDEN, f"a key of config: without its namespace, which pulumi refuses; write it {NAMESPACE}:{show(key)}")
    return None


def _tool_problems(settings: Mapping[str, Any]) -> list[Problem]:
    """What the program accepts but the command-line tool must not."""
    secrets = settings.get("secrets")
    if isinstance(secrets, dict) and secrets.get("backend") == "inline":
        return [Problem("mailsite:secrets.backend", "inline",
                        "keys written in the stack file are for the program's tests only; use file or aws-secretsmanager "
                        "and run python -m mailsite secrets init")]
    return []


def load_site_file(path: Path) -> Site:
    """The site of a stack file, for the command-line tool."""
    settings = read_stack_settings(path)
    problems = _tool_problems(settings)
    try:
        site = load_site(settings)
    except SiteConfigError as error:
        raise SiteConfigError(problems + error.problems) from None
    if problems:
        raise SiteConfigError(problems)
    return site
