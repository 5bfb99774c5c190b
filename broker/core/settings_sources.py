"""Where settings come from besides keyword arguments: the environment, ``.env``, a file.

A name is checked the same way wherever it comes from: an unknown ``BROKER_*``
variable (environment or ``.env``) stops the start naming the closest valid setting,
while variables of other programs (``DATABASE_URL`` in a shared ``.env``) are ignored.
The config file (TOML or JSON) is read here; its unknown keys are refused by the model.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError

from broker.core.errors import ConfigError
from broker.core.settings_models import ENV_PREFIX
from broker.core.settings_origins import record

__all__ = [
    "ALLOWED_FOREIGN_VARIABLES",
    "NamesChecked",
    "UnknownSettings",
    "UnparsableSetting",
    "read_config_file",
    "unknown_variables",
    "variable_names",
]

#: ``BROKER_*`` variables that are not settings and are let through.  Kubernetes gives
#: every pod ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT_8080_TCP`` … for each Service
#: of its namespace (``enableServiceLinks``), so a Service named ``broker`` would
#: otherwise stop every replica.  A bare ``BROKER_PORT`` passes only with such a link's
#: value (``tcp://10.0.0.1:8080``): written by hand it is a misspelled setting.
ALLOWED_FOREIGN_VARIABLES: Final = (
    re.compile(r"BROKER_SERVICE_HOST"),
    re.compile(r"BROKER_SERVICE_PORT(_[A-Z0-9_]+)?"),
    re.compile(r"BROKER_PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?"),
)
_SERVICE_LINK_VALUE: Final = re.compile(r"(tcp|udp|sctp)://\S+")

#: Settings that existed once: refused with what replaced them, never silently ignored.
RETIRED_VARIABLES: Final = {
    f"{ENV_PREFIX}FAST_COMPLETIONS": (
        "removed: the lean client is now the default for every hot call (SendTask*, "
        f"receive, delete, visibility); {ENV_PREFIX}AWS_CLIENT=botocore selects the plain "
        "botocore clients (docs/operations.md)"
    ),
}


class UnknownSettings(SettingsError):
    """``BROKER_*`` names that are no setting; the message names each and its closest."""


class UnparsableSetting(SettingsError):
    """A variable whose value does not parse (bad JSON); the message says where."""


def variable_names(settings_cls: type[BaseSettings]) -> tuple[str, ...]:
    """Every environment variable name that sets a field of ``settings_cls``."""
    names = [ENV_PREFIX + field.upper() for field in settings_cls.model_fields]
    for info in settings_cls.model_fields.values():
        if isinstance(info.validation_alias, AliasChoices):
            names += [c for c in info.validation_alias.choices if isinstance(c, str)]
    return tuple(dict.fromkeys(name for name in names if name.startswith(ENV_PREFIX)))


def unknown_variables(
    variables: Mapping[str, str | None], valid: Iterable[str], where: str = ""
) -> list[str]:
    """One line per ``BROKER_*`` name in ``variables`` that is none of ``valid``."""
    valid = tuple(valid)
    problems = []
    for raw_name, value in variables.items():
        name = raw_name.upper()  # names are case-insensitive, as pydantic-settings reads them
        if not name.startswith(ENV_PREFIX) or name in valid or _allowed_foreign(name, value):
            continue
        if name in RETIRED_VARIABLES:
            problems.append(f"{name}{where}: {RETIRED_VARIABLES[name]}")
            continue
        closest = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {closest[0]}?" if closest else "see docs/settings.md"
        problems.append(f"{name}{where}: unknown setting ({hint})")
    return problems


def _allowed_foreign(name: str, value: str | None) -> bool:
    if name == f"{ENV_PREFIX}PORT":
        return bool(value and _SERVICE_LINK_VALUE.fullmatch(value))
    return any(pattern.fullmatch(name) for pattern in ALLOWED_FOREIGN_VARIABLES)


class NamesChecked(PydanticBaseSettingsSource):
    """An environment or .env source whose unknown ``BROKER_*`` names are errors and
    whose other foreign names are dropped (pydantic-settings would hand them to the
    model as extras, which ``extra="forbid"`` refuses)."""

    def __init__(
        self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource, where: str
    ) -> None:
        super().__init__(settings_cls)
        self._source = source
        self._where = where
        names = set(settings_cls.model_fields)
        for info in settings_cls.model_fields.values():
            if isinstance(info.validation_alias, AliasChoices):
                names.update(c for c in info.validation_alias.choices if isinstance(c, str))
        self._known = frozenset(names)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def _set_current_state(self, state: dict[str, Any]) -> None:
        super()._set_current_state(state)
        self._source._set_current_state(state)

    def _set_settings_sources_data(self, states: dict[str, dict[str, Any]]) -> None:
        super()._set_settings_sources_data(states)
        self._source._set_settings_sources_data(states)

    def __call__(self) -> dict[str, Any]:
        variables: Mapping[str, str | None] = getattr(self._source, "env_vars", {})
        problems = unknown_variables(variables, variable_names(self.settings_cls), self._where)
        if problems:
            raise UnknownSettings("\n  ".join(problems))
        try:
            values = {k: v for k, v in self._source().items() if k in self._known}
        except SettingsError as exc:
            # pydantic-settings names the field, and keeps the JSON error (its line and
            # column) only as the cause: say both, as the variable the user set.
            match = re.search(r'field "(\w+)"', str(exc))
            variable = ENV_PREFIX + match.group(1).upper() if match else "a setting"
            raise UnparsableSetting(
                f"{variable}{self._where}: cannot parse the value (lists and objects are "
                f"JSON): {exc.__cause__ or exc}"
            ) from exc
        record(self.settings_cls, values, ".env" if self._where else "env")
        return values


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        values: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {_kind(path)}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    # Allow a [broker] table so the file can live inside a larger config.
    broker_table = values.get("broker")
    return dict(broker_table) if isinstance(broker_table, dict) else values


def _kind(path: Path) -> str:
    return "JSON" if path.suffix == ".json" else "TOML"
