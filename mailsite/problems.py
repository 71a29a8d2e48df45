"""Problems with a stack's settings, each one line: the setting, its value, what to do. The rules
that find problems spanning settings are in mailsite/rules.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AbstractSet, Any, Mapping

from pydantic import SecretStr, ValidationError

from .errors import UserError
from .model import NIC_DRIVERS

NAMESPACE = "mailsite"


@dataclass(frozen=True)
class Problem:
    setting: str
    value: str
    message: str

    def __str__(self) -> str:
        # One line, whatever a value holds: a newline or an escape sequence is shown, not obeyed.
        return printable(f"{self.setting} = {self.value}: {self.message}")


class SiteConfigError(UserError):
    """Raised at the edge with every problem found; callers print one line each. The user fixes
    a setting, an argument or a path: exit status 2."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Text with every control, format and line-separator character written as an escape."""
    def escaped(char: str) -> str:
        code = ord(char)
        return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(char if char.isprintable() else escaped(char) for char in text)


def setting_name(loc: tuple[Any, ...]) -> str:
    name = NAMESPACE
    for index, part in enumerate(loc):
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += (":" if index == 0 else ".") + str(part)
    return name


def show(value: Any) -> str:
    """A value as it may appear in an error: never a secret's contents, never a whole page."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
        return f"<secret of {len(value)} characters>"
    text = _brief(value) if isinstance(value, (dict, list)) or value == "" else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _brief(value: Any) -> str:
    # A section given where a value belongs is a misplaced part of the file: its names may be
    # settings put in the wrong place and its values keys, so neither is shown.
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_brief, value)) + "]"
    return repr(value)


def few(names: list[str], at_most: int = 5) -> str:
    """Names for an error line, which stays a line however many a site has."""
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


HIDDEN = "<not shown>"
_SEE = "see Pulumi.example.yaml"
_NUMBER = "must be a whole number; write digits only"
_SECTION = f"must be a section of settings, one name: value per line below it ({_SEE})"
# Pydantic's messages say what is wrong in Python's words; these say what to do, in ours.
_FIXES = {
    "extra_forbidden": f"unknown setting; remove it or correct its spelling ({_SEE})",
    "missing": f"required; add it ({_SEE})",
    "int_parsing": _NUMBER,
    "int_type": _NUMBER,
    "int_from_float": _NUMBER,
    "int_parsing_size": f"{_NUMBER}, of a sensible size",
    "float_parsing": "must be a number; write digits, with a decimal point if need be, like 7.5",
    "float_type": "must be a number; write digits, with a decimal point if need be, like 7.5",
    "finite_number": "must be a finite number; write digits, like 7.5",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text; quote it if YAML would read it as a number, true/false, a list or a section",
    "list_type": f"must be a list, one '- item' per line ({_SEE})",
    "dict_type": _SECTION,
    "model_type": _SECTION,
    "model_attributes_type": _SECTION,
    "greater_than_equal": "too small; use {ge} or more",
    "greater_than": "too small; use more than {gt}",
    "less_than_equal": "too large; use {le} or less",
    "less_than": "too large; use less than {lt}",
    "too_short": "must not be empty; list at least {min_length}",
    "too_long": "too many; list at most {max_length}",
    "string_too_short": "must not be empty",
    "string_too_long": "too long; use at most {max_length} characters",
    "literal_error": "not one of the allowed values; use {expected}",
    "ip_v4_address": "not an IPv4 address; write one like 192.0.2.10",
    "ip_v6_address": "not an IPv6 address; write one like 2001:db8::10",
    "ip_v4_network": "not a network in CIDR form with no host bits; write one like 192.0.2.0/24",
    "ip_v6_network": "not a network in CIDR form with no host bits; write one like 2001:db8::/48",
}
# What form a setting with a pattern takes, said to a person (by the setting's own name).
_FORMS = {
    "name": "not a host name; use lower-case letters, digits and -, like mx1",
    "egressInterface": "not a network card's interface (lo0, pflog1, enc0 and the like carry no mail); write it like vmx0 "
                       f"or vio0, a NIC driver ({', '.join(NIC_DRIVERS)}) and its unit",
    "ttl": "not a duration; write a whole number with s, m, h or d, like 7d",
    "blacklist": "not a pf table name; use letters, digits, _ and -, at most 32, like bgp_spamd",
    "bypass": "not a pf table name; use letters, digits, _ and -, at most 32, like bgp_spamd_bypass",
    "bridge": "not a Linux bridge name; use at most 15 lower-case letters, digits and -, like virbr-mail",
    "openbsdVersion": "not an OpenBSD release; write it like 7.8",
    "isoSha256": "not a SHA-256 checksum; copy the 64 hex digits from the release's SHA256 file",
    "diskSize": "not a disk size; write a whole number with M or G, like 8G",
    "adminSshKeys": "not an ssh public key; paste one whole line of a .pub file (ssh-ed25519 AAAA... comment)",
}
_FORM = f"has characters or a form this setting does not take ({_SEE})"
_ANY = f"not a value this setting takes ({_SEE})"
# Where a setting takes one of several forms, pydantic reports every form; the first of these
# that it reported says the most.
_TELLING = ("ip_v4_address", "ip_v6_address", "ip_v4_network", "ip_v6_network")
# Under mailsite:secrets, only these hold no key; any other value (a misspelt queueKeys...) is hidden.
_PLAIN_SECRET_SETTINGS = {"backend", "path", "region", "profile", "endpointUrl"}
_BRANCH_TAGS = {"str", "int", "IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network"}


_PATH_FORM = re.compile(r"[A-Za-z][A-Za-z0-9]*(\[[0-9]+\]|\.[A-Za-z][A-Za-z0-9]*)+")


def _message(kind: str, detail: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    if kind == "value_error":  # our own validators' messages, which say the fix already
        return str(detail["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        name = next((part for part in reversed(loc) if isinstance(part, str)), "")
        return _FORMS.get(name, _FORM)
    if kind == "extra_forbidden" and isinstance(loc[-1], str) and _PATH_FORM.fullmatch(loc[-1]):
        # `pulumi config set --path 'mailsite:hosts[0].ipv4'` written as a key of the file.
        return f"unknown setting; in the stack file, nest it below its section (a.b[0] is pulumi config set --path's form; {_SEE})"
    if kind in ("ip_v4_address", "ip_v6_address") and loc[:1] == ("hosts",):
        return f"{_FIXES[kind]}, or allocate"  # a host's address may be the provider's to choose
    try:
        return _FIXES[kind].format(**detail.get("ctx", {}))
    except (KeyError, IndexError):
        return _ANY


def _hidden(setting: str, kind: str, secret_paths: AbstractSet[str]) -> bool:
    """An unknown setting may be a key put in the wrong place; a secret's value is never shown."""
    if kind == "extra_forbidden" or any(setting.startswith(path) for path in secret_paths):
        return True
    under = f"{NAMESPACE}:secrets"
    return setting == under or (setting.startswith(under + ".") and setting.split(".")[1] not in _PLAIN_SECRET_SETTINGS)


def from_validation_error(error: ValidationError, secret_paths: AbstractSet[str] = frozenset()) -> list[Problem]:
    problems: dict[str, tuple[Problem, str]] = {}
    for detail in error.errors(include_url=False):
        kind = detail["type"]
        # An unknown setting's own name is the last part, whatever it looks like.
        *path, last = detail["loc"]
        loc = tuple(part for part in path if not _is_union_branch(part)) + (() if _is_union_branch(last) and kind != "extra_forbidden" else (last,))
        setting = setting_name(loc)
        value = detail.get("input")
        if kind == "missing":
            shown = "(absent)"
        elif _hidden(setting, kind, secret_paths):
            shown = HIDDEN if kind == "extra_forbidden" else show(SecretStr(str(value)))
        else:
            shown = show(value)
        problem = Problem(setting, shown, _message(kind, detail, loc))
        # A union (an address or "allocate") reports once per form: one line per setting.
        if setting not in problems or (kind in _TELLING and problems[setting][1] not in _TELLING):
            problems[setting] = (problem, kind)
        elif {kind, problems[setting][1]} in _EITHER_FAMILY:
            first = problems[setting][0]
            problems[setting] = (Problem(setting, first.value, _EITHER_FAMILY_FIX[kind.removeprefix("ip_v4_").removeprefix("ip_v6_")]), kind)
    return [problem for problem, _ in problems.values()]


# A setting that takes IPv4 or IPv6 says so when it gets neither.
_EITHER_FAMILY = ({"ip_v4_address", "ip_v6_address"}, {"ip_v4_network", "ip_v6_network"})
_EITHER_FAMILY_FIX = {
    "address": "not an IP address; write one like 192.0.2.10 or 2001:db8::10",
    "network": "not a network in CIDR form with no host bits; write one like 192.0.2.0/24 or 2001:db8::/48",
}


def _is_union_branch(part: Any) -> bool:
    return isinstance(part, str) and (part in _BRANCH_TAGS or _BRANCH.fullmatch(part) is not None)


# How pydantic names a branch of a union or a validator chain in an error's location, and a
# mapping's key ("[key]"); a name a person wrote with brackets in it (a pasted "hosts[0]") is kept.
_BRANCH = re.compile(r"\[key\]|(function-(after|before|wrap|plain)|literal|lax-or-strict|json-or-python|tagged-union|"
                     r"is-instance|nullable|chain|constrained-[a-z]+)\[.*\]", re.S)
