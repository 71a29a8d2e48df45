"""The edge: stack settings in, a validated Site out, or every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from .model import Site
from .problems import NAMESPACE, Problem, SiteConfigError, from_validation_error, site_problems

_SECRET_SETTINGS = {"mailsite:secrets.queueKeys", "mailsite:secrets.spamdSyncKey"}


def load_site(settings: Mapping[str, Any]) -> Site:
    """Validate the `mailsite:` settings (keys without the namespace, as in the stack file)."""
    try:
        site = Site.model_validate(dict(settings))
    except ValidationError as error:
        raise SiteConfigError(from_validation_error(error, _SECRET_SETTINGS)) from None
    problems = site_problems(site)
    if problems:
        raise SiteConfigError(problems)
    return site


def stack_name(path: Path) -> str:
    """Pulumi.<stack>.yaml names its stack."""
    parts = path.name.split(".")
    if len(parts) == 3 and parts[0] == "Pulumi" and parts[2] in ("yaml", "yml"):
        return parts[1]
    raise SiteConfigError([Problem("--config", str(path), "not a stack file; name it Pulumi.<stack>.yaml")])


def read_stack_settings(path: Path) -> dict[str, Any]:
    """The `mailsite:` settings of a Pulumi.<stack>.yaml, as the Pulumi program sees them."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SiteConfigError([Problem("--config", str(path), f"cannot read it ({error.strerror}); give the path of a Pulumi.<stack>.yaml")]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise SiteConfigError([Problem("--config", str(path), f"not valid YAML at {where}; fix the file")]) from None
    config = (document or {}).get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise SiteConfigError([Problem("--config", str(path), "has no config: section; see Pulumi.example.yaml")])
    settings: dict[str, Any] = {}
    problems = []
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        if namespace != NAMESPACE:
            continue  # other providers' settings (vultr:, aws:, ...) are theirs to check
        if isinstance(value, dict) and set(value) == {"secure"}:
            problems.append(Problem(str(key), "<encrypted>", "encrypted config is read only by pulumi; keep secrets in the secrets backend"))
        settings[name] = value
    if problems:
        raise SiteConfigError(problems)
    return settings


def load_site_file(path: Path) -> Site:
    return load_site(read_stack_settings(path))
