"""Every setting is described once, in the model; the settings reference and the example stack's
comments are written from those descriptions and fail here when they drift."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from mailsite import model, settings_doc
from mailsite.config import load_site, read_stack_settings
from tests.sites import ROOT


def test_settings_reference_and_example_comments_are_the_models():
    """Regenerated from the model, docs/settings.md and Pulumi.example.yaml are unchanged: a
    description edited in the model without `make docs`, or a comment edited by hand, fails."""
    for path, text in settings_doc.expected().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} drifted from mailsite/model.py; run make docs"


def test_a_changed_description_is_seen_as_drift(monkeypatch):
    schema = copy.deepcopy(settings_doc.schema())
    schema["$defs"]["Queue"]["properties"]["ttl"]["description"] = "How long a backup waits, said differently."
    monkeypatch.setattr(settings_doc, "schema", lambda: schema)
    assert settings_doc.reference() != settings_doc.REFERENCE.read_text()
    example = settings_doc.example(settings_doc.EXAMPLE.read_text())
    assert "# How long a backup waits, said differently.\n    ttl: 7d\n" in example
    assert example != settings_doc.EXAMPLE.read_text()


def test_every_setting_has_a_description():
    """Walks the stack file's schema: every setting of every section, and every section, says
    what it is; an undescribed one would be a bare name in the reference."""
    undescribed = [path for path, prop in settings_doc.every_setting() if not settings_doc.description(prop)]
    undescribed += [f"section {name}" for name, definition in settings_doc.schema()["$defs"].items()
                    if not definition.get("description")]
    assert undescribed == []
    # Every Settings class the site holds is in the schema, so the walk above saw all of them.
    assert {cls.__name__ for cls in _settings_classes(model.Site)} - {"Site"} == set(settings_doc.schema()["$defs"])


def _settings_classes(cls: type) -> set[type]:
    found = {cls}
    for field in cls.model_fields.values():
        for candidate in _types_in(field.annotation):
            if isinstance(candidate, type) and issubclass(candidate, model.Settings) and candidate not in found:
                found |= _settings_classes(candidate)
    return found


def _types_in(annotation) -> list:
    args = getattr(annotation, "__args__", ())
    return [annotation, *(t for arg in args for t in _types_in(arg))]


def test_every_section_and_setting_is_in_the_reference():
    reference = settings_doc.REFERENCE.read_text()
    for path, prop in settings_doc.every_setting():
        name = path.rsplit(".", 1)[-1].removesuffix("[]")
        assert f"| `{name}` |" in reference, path
        if settings_doc.section_of(prop):
            assert f"## `mailsite:{path.replace('[]', '')}`" in reference, path


def test_example_keeps_its_values_and_loads_the_same_site(tmp_path):
    """The comments are written around the example's own values: a value changed there stays,
    and the file still loads to the site the tests and golden trees use."""
    text = settings_doc.EXAMPLE.read_text().replace("passMinutes: 2\n", "passMinutes: 5\n")
    rewritten = settings_doc.example(text)
    assert "    passMinutes: 5\n" in rewritten
    assert yaml.safe_load(rewritten) == yaml.safe_load(text)
    stack = tmp_path / "Pulumi.example.yaml"
    stack.write_text(settings_doc.example(settings_doc.EXAMPLE.read_text()))
    assert load_site(read_stack_settings(stack)) == load_site(read_stack_settings(settings_doc.EXAMPLE))


@pytest.mark.parametrize("value", ["65066:42", "65066:666", "7.8", "", "yes", "null", "~", "a: b", "x #y", "- z", "{fqdn}", "1e3"])
def test_example_values_are_written_so_yaml_reads_them_back(value):
    assert yaml.safe_load(f"k: {settings_doc._scalar(value)}") == {"k": value}


def test_unknown_key_in_the_example_is_refused():
    text = settings_doc.EXAMPLE.read_text().replace("config:\n", "config:\n  mailsite:colour: blue\n", 1)
    with pytest.raises(SystemExit, match="mailsite:colour is not a mailsite setting"):
        settings_doc.example(text)


def test_make_docs_writes_both_files():
    dry = subprocess.run(["make", "-n", "docs"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "-m mailsite.settings_doc --write" in dry
