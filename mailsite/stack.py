"""The edge inside `pulumi up`: the stack's `mailsite:` settings, as the command-line tool reads them."""

from __future__ import annotations

import json
from typing import Any

from pulumi.runtime.config import CONFIG, get_config_env, get_config_secret_keys_env, is_config_secret

from .config import MAX_DEPTH, MAX_STACK_BYTES, encrypted, encrypted_problem, load_site
from .model import Site
from .problems import NAMESPACE, Problem, SiteConfigError

# The engine has read the stack file already (each key once, aliases within its own limits) and
# hands structured values over as JSON text; what is left to apply here is size, depth and keys.


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Duplicate(next(key for key in keys if keys.count(key) > 1))
    return dict(pairs)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _value(key: str, raw: Any) -> Any:
    # Pulumi hands structured config (lists, maps) to programs as JSON text.
    if not (isinstance(raw, str) and raw[:1] in ("{", "[")):
        return raw
    problem = lambda message: SiteConfigError([Problem(key, "<not shown>", message)])  # noqa: E731
    if len(raw) > MAX_STACK_BYTES:
        raise problem(f"larger than {MAX_STACK_BYTES >> 20} MiB; a stack's settings are a few kilobytes")
    try:
        value = json.loads(raw, object_pairs_hook=_unique)
    except _Duplicate as duplicate:
        raise problem(f"sets {str(duplicate)[:40]!r} twice; keep one") from None
    except RecursionError:
        raise problem(f"nested more than {MAX_DEPTH} levels deep; a stack's settings need a few") from None
    except ValueError:
        return raw  # a plain string that starts like JSON: the model says what it should be
    if _depth(value) > MAX_DEPTH:
        raise problem(f"nested more than {MAX_DEPTH} levels deep; a stack's settings need a few")
    return value


def stack_settings() -> dict[str, Any]:
    """Every `mailsite:` key of the running stack, so that unknown keys are caught here too."""
    config = {**get_config_env(), **CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    settings, problems = {}, []
    for key, value in config.items():
        if key.startswith(prefix):
            name = key.removeprefix(prefix)
            try:
                settings[name] = _value(key, value)
            except SiteConfigError as error:
                problems += error.problems
                continue
            # The engine decrypts what it can; a {"secure": ...} left is ciphertext, refused as the tool refuses it.
            problems += [encrypted_problem((name, *loc)) for loc in encrypted(settings[name], ())]
    if problems:
        raise SiteConfigError(problems)
    return settings


def secret_settings() -> frozenset[str]:
    """The `mailsite:` settings set with `pulumi config set --secret`: the engine decrypts them for
    the program, and marks them; an error line names them but never shows their values."""
    marked = set(get_config_secret_keys_env()) | {key for key in CONFIG.get() if is_config_secret(key)}
    return frozenset(key for key in marked if key.startswith(f"{NAMESPACE}:"))


def stack_site() -> Site:
    return load_site(stack_settings(), secret_settings())
