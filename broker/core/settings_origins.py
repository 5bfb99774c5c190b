"""Which source gave each setting its value: keyword arguments, the environment, ``.env``
or the config file.

Errors name a value as the user wrote it (``settings_errors``), and ``TestBroker`` leaves
out what the shell brought; both read what is kept here.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Self

from pydantic import AliasChoices, PrivateAttr
from pydantic_settings import BaseSettings, InitSettingsSource

__all__ = ["ORIGINS", "Given", "OriginsKept", "field_of", "record"]


#: While settings are built: the field -> where its value came from ("env", ".env",
#: "file", "keyword"), the highest-priority source first (sources are called in order).
ORIGINS: ContextVar[dict[str, str] | None] = ContextVar("broker_settings_origins", default=None)


def field_of(settings_cls: type[BaseSettings], key: str) -> str:
    """The field a source's key sets (a field name, or one of its aliases)."""
    if key in settings_cls.model_fields:
        return key
    for name, info in settings_cls.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices) and any(
            isinstance(c, str) and c.upper() == key.upper() for c in info.validation_alias.choices
        ):
            return name
    return key


def record(settings_cls: type[BaseSettings], values: Mapping[str, Any], origin: str) -> None:
    origins = ORIGINS.get()
    if origins is not None:
        for key in values:
            origins.setdefault(field_of(settings_cls, key), origin)


class Given(InitSettingsSource):
    """Keyword arguments, or the config file's values, with where they came from noted."""

    def __init__(
        self, settings_cls: type[BaseSettings], values: dict[str, Any], origin: str
    ) -> None:
        super().__init__(settings_cls, init_kwargs=values)
        self._origin = origin

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        record(self.settings_cls, values, self._origin)
        return values


class OriginsKept(BaseSettings):
    """Settings that remember where each field's value came from."""

    # TestBroker leaves out what the shell brought.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        origins = ORIGINS.get()
        token = ORIGINS.set(origins := {}) if origins is None else None
        # Keyword arguments come first: no other source wins over them.
        record(type(self), {k: v for k, v in values.items() if not k.startswith("_")}, "keyword")
        try:
            super().__init__(**values)
            self._origins = dict(ORIGINS.get() or {})
        finally:
            if token is not None:
                ORIGINS.reset(token)

    def from_environment(self) -> frozenset[str]:
        """The fields set by an environment variable or ``.env``, not by the caller."""
        return frozenset(f for f, origin in self._origins.items() if origin in ("env", ".env"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        if update:
            copied._origins = {k: v for k, v in self._origins.items() if k not in update}
            copied._origins.update(dict.fromkeys(update, "keyword"))
        return copied
