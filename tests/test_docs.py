"""The docs name only what exists: every relative link, every repository path, every Python name
and every `mailsite` or `make` command they write in backticks, so a reader who follows them (or a
newcomer adding a daemon by docs/architecture.md) never meets a name that moved. A path of
something not written yet, in a walkthrough, is followed by " (new)"."""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from mailsite.cli import parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 130

# A fence may be indented (a code block inside a list item, as in a walkthrough's step).
_FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)(\s*\(new\))?")
# A path is checked when it starts at a top-level entry of the repository, or names a source file.
_SOURCE = re.compile(r"\.(py|md|j2|ya?ml|toml|hcl|sh|json|in|ini|txt)$")
_DOTTED = re.compile(r"^(mailsite|components|policy)(\.\w+)+(\(\))?$")
_COMMAND = re.compile(r"^(?:\S+=\S+\s+)*(?:sudo\s+)?(?:\.venv/bin/mailsite|mailsite|(?:\.venv/bin/)?python3?\s+-m\s+mailsite)\s+(.*)$")
_MODULE = re.compile(r"python3?\s+(?:-u\s+)?-m\s+([\w.]+)")
_MAKE = re.compile(r"^(?:\S+=\S+\s+)*(?:sudo\s+)?make\s+([\w-]+)$")


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def _prose(doc: Path) -> str:
    """The doc without its fenced blocks (shell sessions and example output, checked apart)."""
    return _FENCE.sub("", _text(doc))


def _spans(doc: Path) -> list[str]:
    """Inline code spans, except those marked as new."""
    return [match[1].strip() for match in _SPAN.finditer(_prose(doc)) if not match[2]]


def _fenced_commands(doc: Path) -> list[str]:
    lines = []
    for block in _FENCE.findall(_text(doc)):
        for line in block.splitlines()[1:-1]:
            lines.append(line.split("  #")[0].strip())
    return lines


def _top_level() -> set[str]:
    """The repository's top-level names: what git holds or would add (so a local .mailsite/ or
    out/ is no repository path). Without git (or where git refuses a checkout another user owns,
    as root in CI may meet), the work tree less what .gitignore names."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True)
    if listing.returncode == 0:
        return {path.split("/")[0] for path in listing.stdout.split()}
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    return {path.name for path in ROOT.iterdir()
            if path.name != ".git" and not any(fnmatch.fnmatch(path.name, pattern) for pattern in ignored if pattern)}


def _repository_path(span: str) -> str | None:
    """The repository path a span names, or None when it is no such path (a host's etc/pf.conf,
    a placeholder like Pulumi.<stack>.yaml, a command)."""
    if any(char in span for char in " <>{}*$[]()|'\",") or span.startswith(("/", "~", "-", ".venv")):
        return None
    path = span.split("::")[0]
    if path.split("/")[0] in _TOP or ("/" in path and _SOURCE.search(path)):
        return path
    return None


_TOP = _top_level()


def _anchors(doc: Path) -> set[str]:
    """The #fragments GitHub gives a document's headings."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", _prose(doc), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_its_heading(doc: Path):
    missing = []
    for target in _LINK.findall(_prose(doc)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = doc.parent / path if path else doc
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            missing.append(target)
    assert not missing, f"{doc.name} links to what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_repository_path_in_backticks_exists(doc: Path):
    missing = [span for span in _spans(doc) if (path := _repository_path(span)) and not (ROOT / path).exists()]
    assert not missing, f"{doc.name} names paths that do not exist (mark a path still to be written with ' (new)'): {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.removesuffix("()").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            thing = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(thing, attribute):
                return False
            thing = getattr(thing, attribute)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_python_name_in_backticks_imports(doc: Path):
    missing = [span for span in _spans(doc) if _DOTTED.match(span) and not _resolves(span)]
    assert not missing, f"{doc.name} names modules or attributes that do not exist: {missing}"


def _commands(doc: Path) -> list[str]:
    return [span for span in _spans(doc) + _fenced_commands(doc) if _COMMAND.match(span) or _MAKE.match(span)]


def _subcommands(command: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _refused(argv: list[str]) -> str | None:
    """Why the tool would refuse this command line's words, or None: each command word names a
    command, each --option is one that command takes (values and placeholders are not judged)."""
    command, words = parser(), [word for word in argv if not word.startswith("-")]
    for word in words:
        choices = _subcommands(command)
        if not choices:
            break
        if word not in choices:
            return f"no command {word!r}"
        command = choices[word]
    options = {option for action in command._actions for option in action.option_strings}
    unknown = [word.split("=")[0] for word in argv if word.startswith("--") and word.split("=")[0] not in options]
    return f"no option {unknown}" if unknown else None


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_command_in_the_docs_is_one_the_tool_and_the_makefile_take(doc: Path):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    wrong = []
    for command in _commands(doc):
        if make := _MAKE.match(command):
            if make[1] not in targets:
                wrong.append(command)
        elif why := _refused(shlex.split(_COMMAND.match(command)[1])):
            wrong.append(f"{command}: {why}")
    assert not wrong, f"{doc.name} shows commands the tool or the Makefile does not take: {wrong}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_python_module_the_docs_run_exists(doc: Path):
    modules = [module for text in _spans(doc) + _fenced_commands(doc) for module in _MODULE.findall(text)]
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    assert not missing, f"{doc.name} runs modules that do not exist: {missing}"


def test_readme_is_short():
    """The README is the first screen and the three jobs; the rest belongs in docs/."""
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert re.search(r"^make test\s+#", (ROOT / "README.md").read_text(), re.M)


def test_the_checker_sees_a_missing_path_and_spares_a_new_one(tmp_path: Path):
    """The checks above can fail: a moved path is caught, a path marked (new) is not."""
    doc = tmp_path / "doc.md"
    doc.write_text("See `mailsite/no_such_module.py` and `mailsite/daemons/dovecot.py` (new), "
                   "`etc/pf.conf` on the host, `mailsite.nosuch.thing`, `mailsite lab nosuch`.\n")
    spans = _spans(doc)
    assert [s for s in spans if _repository_path(s)] == ["mailsite/no_such_module.py"]
    assert not _resolves("mailsite.nosuch.thing")
    assert _resolves("mailsite.templates.LinuxDifferences")
    assert _refused(["lab", "nosuch"]) and _refused(["render", "--nosuch"]) and _refused(["check", "OUT"])
    assert _refused(["lab", "up", "--config", "Pulumi.<stack>.yaml"]) is None
    doc.write_text("1. A step:\n\n   ```sh\n   mailsite lab nosuch\n   ```\n")  # a fence inside a list item
    assert _fenced_commands(doc) == ["mailsite lab nosuch"]
    doc.write_text("# Pull requests: previews, the `diff`\n")
    assert _anchors(doc) == {"pull-requests-previews-the-diff"}
    assert "mailsite.cli.parser" in _imports(ROOT / "tests" / "test_docs.py")
    assert "mailsite.daemons.base.Daemon" in _imports(ROOT / "mailsite" / "daemons" / "__init__.py")  # from .base


# Files outside the docs that send a reader into them, in a comment or a message: "see README.md",
# "(docs/operating.md: Secrets backends)". A section named after the file must be one of its headings
# or list items' labels ("- Installer answers: ..."), or the reader lands nowhere.
_POINTER = re.compile(r"\b(README(?:\.md)?|docs/[\w-]+\.md)(?:[,:] ([A-Z][\w ]*\w))?")
_POINTING = ("mailsite", "components", "policy", "images", "bench", "tests/fixtures", ".ci", ".github")


def _sections(doc: Path) -> set[str]:
    prose = _prose(doc)
    labels = re.findall(r"^\s*[-*]\s+(?:\*\*)?([^:*\n]+?)(?:\*\*)?:", prose, re.M)
    return {name.strip().lower() for name in re.findall(r"^#+\s+(.+?)\s*$", prose, re.M) + labels}


def _wrong_pointers(text: str) -> list[str]:
    wrong = []
    for match in _POINTER.finditer(text):
        doc = ROOT / (match[1] if match[1].startswith("docs/") else "README.md")
        if not doc.exists() or (match[2] and match[2].lower() not in _sections(doc)):
            wrong.append(match[0])
    return wrong


def test_pointers_into_the_docs_from_code_and_fixtures_reach_a_section():
    files = [path for top in _POINTING for path in sorted((ROOT / top).rglob("*"))
             if path.is_file() and "__pycache__" not in path.parts]
    files += [ROOT / name for name in ("Makefile", "Pulumi.example.yaml", "requirements.txt", "requirements.in", "pyproject.toml")]
    wrong = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        wrong += [f"{path.relative_to(ROOT)}: {pointer}" for pointer in _wrong_pointers(text)]
    assert not wrong, f"pointers into the docs that reach no file or section: {wrong}"


def test_a_pointer_to_a_section_the_docs_lack_is_caught():
    assert _wrong_pointers("check it (see README, Images).") == ["README, Images"]
    assert _wrong_pointers("(see docs/images.md: Installer answers)") == []
    assert _wrong_pointers("grant it (docs/operating.md: Secrets backends)") == []
    assert _wrong_pointers("(docs/nowhere.md)") == ["docs/nowhere.md"]


# The import direction docs/architecture.md states ("One direction"), checked on the sources: for
# each group of modules, the project modules it must never import.
_BELOW_RENDERING = ("mailsite.render", "mailsite.firewall", "mailsite.configtest", "mailsite.images", "mailsite.lab",
                    "mailsite.secrets", "mailsite.hosts", "mailsite.facts", "mailsite.drain", "mailsite.rotation",
                    "mailsite.replacement", "mailsite.departure", "mailsite.trees", "mailsite.local", "mailsite.diff",
                    "mailsite.config", "mailsite.stack", "mailsite.commands", "mailsite.cli", "components", "policy")
_NEVER_IMPORTS = {
    "mailsite/model.py": ("mailsite.daemons", "mailsite.templates", *_BELOW_RENDERING),
    "mailsite/daemons/*.py": _BELOW_RENDERING,
    "mailsite/**/*.py": ("components", "policy"),
    "components/**/*.py": ("mailsite.rotation", "mailsite.commands", "mailsite.cli"),
}


def _imports(path: Path) -> set[str]:
    """The absolute names of the modules a source file imports."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("pattern", sorted(_NEVER_IMPORTS))
def test_nothing_imports_upward(pattern: str):
    upward = []
    for path in sorted(ROOT.glob(pattern)):
        for name in _imports(path):
            if any(name == banned or name.startswith(banned + ".") for banned in _NEVER_IMPORTS[pattern]):
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, upward
