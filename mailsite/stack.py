"""The edge inside `pulumi up`: the stack's `mailsite:` settings, as the command-line tool reads them."""

from __future__ import annotations

import json
from typing import Any

from pulumi.runtime.config import CONFIG, get_config_env

from .config import load_site
from .model import Site
from .problems import NAMESPACE


def _value(raw: Any) -> Any:
    # Pulumi hands structured config (lists, maps) to programs as JSON text.
    if isinstance(raw, str) and raw[:1] in ("{", "["):
        return json.loads(raw)
    return raw


def stack_settings() -> dict[str, Any]:
    """Every `mailsite:` key of the running stack, so that unknown keys are caught here too."""
    config = {**get_config_env(), **CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    return {key.removeprefix(prefix): _value(value) for key, value in config.items() if key.startswith(prefix)}


def stack_site() -> Site:
    return load_site(stack_settings())
