"""One line per settings error, saying where the value came from.

A value is named as the user wrote it: the environment variable (``BROKER_QUEUES``, or
``… (in .env)``), or the config file and its key, with the entry of a list counted from
1 (a TOML file's third ``[[queues]]`` table is entry 3) and the queue or activity's name
when it has one.  An unknown key is named with the closest valid one.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from broker.core.settings_models import ENV_PREFIX, ActivitySettings, QueueSettings
from broker.core.settings_sources import RETIRED_VARIABLES

__all__ = ["describe", "variable_of"]

_AWS_VARIABLES: Final = {"aws_region": "AWS_REGION", "aws_endpoint_url": "AWS_ENDPOINT_URL"}
_ROWS: Final[dict[str, type[BaseModel]]] = {"queues": QueueSettings, "activities": ActivitySettings}
#: Values never quoted back in an error.
_SECRET: Final = frozenset({"decision_keys"})


def variable_of(field: str) -> str:
    """The environment variable that sets ``field``."""
    return _AWS_VARIABLES.get(field) or ENV_PREFIX + field.upper()


def describe(
    exc: ValidationError,
    *,
    fields: Sequence[str],
    field_of: Any,
    origins: Mapping[str, str],
    config_file: Path | None,
    file_values: Mapping[str, Any],
) -> str:
    """``invalid settings:`` and one line per error of ``exc``."""
    lines = []
    for error in exc.errors():
        location = list(error["loc"])
        field = field_of(str(location[0])) if location else ""
        origin = origins.get(field) or ("file" if field in file_values else "keyword")
        where = _where(field, origin, config_file)
        retired = ENV_PREFIX + field.upper()
        if error["type"] == "extra_forbidden" and not location[1:] and retired in RETIRED_VARIABLES:
            lines.append(f"{_prefix(origin, config_file)}{retired}: {RETIRED_VARIABLES[retired]}")
            continue
        raw = _raw(field, origin, file_values)
        path = _path(field, location[1:], raw)
        message = _message(error, field, location[1:], fields)
        lines.append(f"{where}{path}: {message}" if field else f"settings: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _prefix(origin: str, config_file: Path | None) -> str:
    return f"{config_file}: " if origin == "file" and config_file is not None else ""


def _where(field: str, origin: str, config_file: Path | None) -> str:
    if origin == "file":
        return f"{config_file}: {field}"
    if origin == "keyword":
        return f"{field} (argument)"
    return variable_of(field) + (" (in .env)" if origin == ".env" else "")


def _raw(field: str, origin: str, file_values: Mapping[str, Any]) -> Any:
    """The value as written, to name a list's entry by its ``name``."""
    if origin == "file":
        return file_values.get(field)
    if origin == "env":
        names = {name.upper(): value for name, value in os.environ.items()}
        try:
            return json.loads(names.get(variable_of(field), ""))
        except ValueError:
            return None
    return None


def _path(field: str, rest: Sequence[Any], raw: Any) -> str:
    parts = []
    for part in rest:
        if isinstance(part, int):
            entry = raw[part] if isinstance(raw, list) and part < len(raw) else None
            name = entry.get("name") if isinstance(entry, dict) else entry
            named = f" ({name!r})" if isinstance(name, str) and field in _ROWS else ""
            parts.append(f"entry {part + 1}{named}")
            raw = entry
        else:
            parts.append(f"key {part}")
            raw = raw.get(part) if isinstance(raw, dict) else None
    return (", " if parts else "") + ", ".join(parts)


def _message(error: ErrorDetails, field: str, rest: Sequence[Any], fields: Sequence[str]) -> str:
    if error["type"] == "extra_forbidden":
        key = str(rest[-1]) if rest else field
        valid = list(_ROWS[field].model_fields) if rest and field in _ROWS else list(fields)
        closest = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {closest[0]}?" if closest else "see docs/settings.md"
        return f"unknown {'key' if rest else 'setting'} ({hint})"
    value = error.get("input")
    quoted = (
        f" (got {value!r})"
        if field not in _SECRET
        and isinstance(value, str | int | float | bool)
        and len(repr(value)) <= 60
        and error["type"] not in ("missing",)
        else ""
    )
    return f"{error['msg']}{quoted}"
