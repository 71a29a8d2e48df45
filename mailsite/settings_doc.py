"""The settings reference (docs/settings.md) and the comments of Pulumi.example.yaml, both written
from the model's JSON schema: every setting is described once, by its Field(description=...) in
mailsite/model.py (a section by its class's docstring), and read everywhere else from there.

    python -m mailsite.settings_doc --write    # make docs: rewrite both files
    python -m mailsite.settings_doc --check    # exit 1, naming the file, if either has drifted
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .model import Site
from .problems import NAMESPACE

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "settings.md"
EXAMPLE = ROOT / "Pulumi.example.yaml"
WIDTH = 100

Schema = dict[str, Any]


@cache
def schema() -> Schema:
    """The stack file's view of the model: camelCase names, the values a person writes."""
    return Site.model_json_schema(by_alias=True, mode="validation")


def _definition(name: str) -> Schema:
    return schema()["$defs"][name]


def section_of(prop: Schema) -> str | None:
    """The model a setting holds (a section, or a list of entries), if it holds one."""
    for candidate in (prop, prop.get("items", {}), *prop.get("anyOf", ())):
        if "$ref" in candidate:
            return candidate["$ref"].rsplit("/", 1)[-1]
    return None


def description(prop: Schema) -> str:
    """A setting's own description, or its section's: said once, in the model."""
    text = prop.get("description")
    if text is None and "$ref" in prop and (section := section_of(prop)) is not None:
        text = _definition(section).get("description")
    return " ".join((text or "").split())


def settings_of(definition: Schema) -> dict[str, Schema]:
    return definition.get("properties", {})


def every_setting() -> list[tuple[str, Schema]]:
    """(dotted name, schema) of every setting and section, depth first in the model's order."""
    found: list[tuple[str, Schema]] = []

    def walk(prefix: str, definition: Schema) -> None:
        for name, prop in settings_of(definition).items():
            path = f"{prefix}.{name}" if prefix else name
            found.append((path, prop))
            if (section := section_of(prop)) is not None:
                walk(path + ("[]" if prop.get("type") == "array" else ""), _definition(section))

    walk("", schema())
    return found


# -- docs/settings.md -------------------------------------------------------------------------

_FORMATS = {"ipv4": "IPv4 address", "ipv6": "IPv6 address", "ipv4network": "IPv4 network",
            "ipv6network": "IPv6 network", "password": "secret text"}


def takes(prop: Schema) -> str:
    """What a setting takes, in words, from its schema."""
    if "$ref" in prop:
        return "section"
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " or ".join(f"`{value}`" for value in prop["enum"])
    if "anyOf" in prop:
        kinds = []
        for branch in prop["anyOf"]:
            if (words := takes(branch)) not in kinds:
                kinds.append(words)
        return " or ".join(kinds)
    kind = prop.get("type")
    if kind == "null":
        return "`null`"
    if kind == "boolean":
        return "`true` or `false`"
    if kind == "integer":
        low, high = prop.get("minimum"), prop.get("maximum")
        bounds = f" {low}-{high}" if low is not None and high is not None else f" up to {high}" if high is not None else ""
        return "whole number" + bounds
    if kind == "array":
        return "list of " + ("entries" if section_of(prop) else takes(prop.get("items", {})))
    if kind == "object":
        values: Schema = prop.get("additionalProperties") or next(iter(prop.get("patternProperties", {}).values()), {})
        return "map of name to " + takes(values)
    if kind == "string":
        return _FORMATS.get(prop.get("format", ""), "text")
    return "value"


def default(prop: Schema, required: bool) -> str:
    if required:
        return "required"
    if "default" not in prop or section_of(prop) and isinstance(prop["default"], dict):
        return ""  # a section: each setting in it has its own
    value = prop["default"]
    return f"`{json.dumps(value) if isinstance(value, (list, dict)) else _scalar(value)}`"


def _cell(text: str) -> str:
    # Markdown would take <name> for an HTML tag and | for the next column.
    return text.replace("<", "&lt;").replace("|", "\\|")


def _table(prefix: str, definition: Schema) -> list[str]:
    required = set(definition.get("required", ()))
    lines = ["| Setting | Takes | Default | What it is |", "|---|---|---|---|"]
    for name, prop in settings_of(definition).items():
        lines.append(f"| `{name}` | {_cell(takes(prop))} | {_cell(default(prop, name in required))} | {_cell(description(prop))} |")
    return lines


def reference() -> str:
    """docs/settings.md: every section with a table of its settings."""
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated from mailsite/model.py by `make docs` (python -m mailsite.settings_doc --write);",
        "     edit the descriptions there. A test fails when this file drifts from the model. -->",
        "",
        f"Every setting lives under the `{NAMESPACE}:` namespace of a stack file's `config:`, written in",
        "camelCase as below, a section's settings nested under it. `Pulumi.example.yaml` is one to copy;",
        f"`pulumi config set --path '{NAMESPACE}:bgpSpamd.localAs' 65500` sets one from the command line.",
        "A setting without a default is required; a bad value is refused in one line naming the setting",
        "and the fix.",
        "",
        f"## `{NAMESPACE}`",
        "",
        *_wrapped(_cell(description({"description": schema().get("description")})), ""),
        "",
        *_table("", schema()),
    ]
    for path, prop in every_setting():
        if (section := section_of(prop)) is None:
            continue
        definition = _definition(section)
        entry = " (each entry)" if prop.get("type") == "array" else ""
        lines += ["", f"## `{NAMESPACE}:{path}`{entry}", "", *_wrapped(_cell(description({"description": definition.get("description")})), ""),
                  "", *_table(path, definition)]
    return "\n".join(lines) + "\n"


def _wrapped(text: str, prefix: str, width: int = WIDTH) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=prefix, subsequent_indent=prefix,
                         break_long_words=False, break_on_hyphens=False) if text else []


# -- Pulumi.example.yaml ----------------------------------------------------------------------

HEADER = """\
# An example stack of three hosts on libvirt, with the Vultr settings a move would need; settings
# left out take their defaults, which docs/settings.md lists with every setting.
# Addresses are documentation ranges (RFC 5737, RFC 3849); replace them with your own.
# Copy this file to Pulumi.<your-stack>.yaml, or set each key with `pulumi config set --path`.
# The comments are the settings' descriptions in mailsite/model.py, written here by `make docs`
# (docs/settings.md lists them with each default): change a description there, a value here.
"""


def _scalar(value: Any) -> str:
    """A value as YAML reads it back the same: plain where it is unambiguous, else quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    # AS:N reads as a base-60 number to YAML 1.1 readers when N is below 60: quoted, whatever N.
    plain = text and not re.fullmatch(r"[0-9]+(:[0-9]+)+", text) and text == text.strip() and not any(mark in text for mark in (": ", " #", "\n")) \
        and text[0] not in "!&*[]{}|>'\"%@`#,?-" and yaml.safe_load(f"k: {text}") == {"k": text}
    return text if plain else json.dumps(text)


def _comment(text: str, indent: int) -> list[str]:
    return _wrapped(text, " " * indent + "# ")


def _described(key: str, value: Any, prop: Schema, indent: int) -> list[str]:
    """A setting with its description above it; a list of entries also says what each entry's
    settings mean, once, rather than beside every entry."""
    lines = _comment(description(prop), indent)
    if isinstance(value, list) and value and prop.get("type") == "array" and (section := section_of(prop)):
        lines += _comment("Each entry's settings:", indent)
        for name, field in settings_of(_definition(section)).items():
            lines += textwrap.wrap(f"{name}: {description(field)}", WIDTH, initial_indent=" " * indent + "#   ",
                                   subsequent_indent=" " * indent + "#     ", break_long_words=False, break_on_hyphens=False)
    return lines + _value_lines(key, value, prop, indent)


def _value_lines(key: str, value: Any, prop: Schema, indent: int) -> list[str]:
    pad = " " * indent
    section = section_of(prop)
    if isinstance(value, dict) and value and section and prop.get("type") != "array":
        lines = [f"{pad}{key}:"]
        fields = settings_of(_definition(section))
        for name, item in value.items():
            lines += _described(name, item, fields[name], indent + 2) if name in fields else _value_lines(name, item, {}, indent + 2)
        return lines
    if isinstance(value, dict) and value:
        return [f"{pad}{key}:"] + [line for name, item in value.items() for line in _value_lines(str(name), item, {}, indent + 2)]
    if isinstance(value, list) and value:
        lines = [f"{pad}{key}:"]
        for item in value:
            if isinstance(item, dict) and item:
                start = len(lines)
                for name, field in item.items():
                    lines += _value_lines(name, field, {}, indent + 4)
                lines[start] = f"{pad}  - {lines[start].lstrip()}"
            else:
                lines.append(f"{pad}  - {_scalar(item)}")
        return lines
    if isinstance(value, (dict, list)):
        return [f"{pad}{key}: {'{}' if isinstance(value, dict) else '[]'}"]
    return [f"{pad}{key}: {_scalar(value)}"]


def example(current: str) -> str:
    """Pulumi.example.yaml with its values kept and its comments written from the model."""
    document = yaml.safe_load(current)
    lines = [HEADER.rstrip("\n"), "config:"]
    for index, (key, value) in enumerate(document["config"].items()):
        namespace, _, name = key.partition(":")
        if namespace != NAMESPACE or name not in settings_of(schema()):
            raise SystemExit(f"{EXAMPLE.name}: {key} is not a {NAMESPACE} setting; remove it or correct its name")
        prop = settings_of(schema())[name]
        if index:
            lines.append("")
        lines += _described(key, value, prop, 2)
    text = "\n".join(lines) + "\n"
    # The values are the example's, not this module's: written back, they must read the same.
    if yaml.safe_load(text) != document:
        raise AssertionError("the example's values would change; this is a bug in settings_doc")
    return text


def expected() -> dict[Path, str]:
    """Each generated file and what it should hold now."""
    return {REFERENCE: reference(), EXAMPLE: example(EXAMPLE.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailsite.settings_doc", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite docs/settings.md and the example's comments")
    mode.add_argument("--check", action="store_true", help="exit 1 if either differs from the model")
    args = parser.parse_args(argv)
    drifted = [path for path, text in expected().items() if not path.exists() or path.read_text() != text]
    if args.write:
        for path in drifted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected()[path])
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    for path in drifted:
        print(f"{path.relative_to(ROOT)} differs from the settings in mailsite/model.py; run make docs", file=sys.stderr)
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
