"""The templates of configs/ and the files they become: a rendered file's text, mode and whether
it holds a key, and what Linux (the lab) changes. Every daemon module renders through here.

Behind the model's types each template keeps a second line of defence: its grammar's quoting, and
no value at all that writes a line (or a control character) of its own into a file that runs as
root. No I/O beyond reading the templates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2

from .errors import UserError

TEMPLATES = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class RenderedFile:
    text: str
    mode: int = 0o644
    secret: bool = False  # holds a key: mode 0600, redacted wherever it is shown
    # Who owns it on the host, by name, with that user's own group (root's is wheel); the bake's
    # archives carry it. root, unless a daemon reads the file after dropping root (Dovecot's auth).
    owner: str = "root"


HostTree = dict[str, RenderedFile]


@dataclass(frozen=True)
class LinuxDifferences:
    """What a host's files must do differently to run on Linux (the lab); empty for OpenBSD.

    Every difference the lab makes to a rendered file is a field here, and only what Linux forces.
    (Interface names are not one: the lab names its links vmx0 and lo0, as on OpenBSD.)
    """

    bgpd_socket: str | None = None  # two bgpd on one machine need their own control sockets
    # Linux has no pf: bgpd there refuses `set pftable` ("pftable not supported"). The lines are
    # blanked, not dropped, so that line numbers in bgpd's messages still match the OpenBSD file.
    pftable: bool = True


OPENBSD = LinuxDifferences()


class UnsafeValue(UserError):
    """A value the model should have refused reached a template: the stack file's value must change
    (and the model's types let it through: a bug there too)."""

    def __str__(self) -> str:
        # The value is not named (it may be a key), so the line says where to look instead.
        return f"{super().__str__()}, which no setting may hold; nothing was written: correct the stack file's value that holds it"


def _one_line(value: object) -> object:
    text = str(value)
    if not text.isprintable():
        bad = next(char for char in text if not char.isprintable())
        # The value itself is not shown: it may be a key.
        raise UnsafeValue(f"a value holds a line break or control character ({bad!r})")
    return value


def _quoted(grammar: str) -> Callable[[object], str]:
    """A double-quoted string as smtpd's and bgpd's lexers read it; a quote or backslash inside
    would end it or escape, so neither may be in it."""
    def quote(value: object) -> str:
        text = str(value)
        if bad := sorted(set(text) & {'"', "\\"}):
            raise UnsafeValue(f"{grammar}: a quoted string cannot hold {''.join(bad)!r}")
        return f'"{text}"'
    return quote


def _sh_word(value: object) -> str:
    """One word inside rc.conf.local's double quotes, which /etc/rc sources as root: $ ` \\ "
    would expand or end the string, and a blank would split a daemon's flag in two."""
    text = str(value)
    if bad := sorted(set(text) & set('"$`\\ \t')):
        raise UnsafeValue(f"rc.conf.local: a flag cannot hold {''.join(bad)!r}")
    return text


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_one_line,
    )
    environment.filters.update(smtpd_string=_quoted("smtpd.conf"), bgpd_string=_quoted("bgpd.conf"), sh_word=_sh_word,
                               acme_string=_quoted("acme-client.conf"), httpd_string=_quoted("httpd.conf"))
    return environment


def render_template(template: str, **values: object) -> str:
    """A template of configs/ (a daemon's: "smtpd/smtpd.conf.j2"; the lab's: "lab/...") with plain values."""
    return _environment().get_template(template).render(**values)
