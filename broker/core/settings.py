"""Settings: one object, built at the edge (CLI or caller) and passed down.

Sources, highest priority first: keyword arguments, environment variables
(``BROKER_*``, plus the AWS conventions ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` /
``AWS_ENDPOINT_URL``), a ``.env`` file, a config file (TOML or JSON) given on the
command line, then defaults.  Credentials are never settings: the standard AWS
credential chain finds them.

A name is checked the same way wherever it comes from: an unknown ``BROKER_*``
variable (environment or ``.env``) or an unknown key of the config file stops the start
naming the closest valid setting, while variables of other programs (``DATABASE_URL``
in a shared ``.env``) are ignored.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from broker.core.errors import ConfigError
from broker.sqs.envelope import DEFAULT_PAYLOAD_FIELDS, DEFAULT_TOKEN_FIELDS, EnvelopeSpec

__all__ = [
    "ALLOWED_FOREIGN_VARIABLES",
    "ENV_PREFIX",
    "ActivitySettings",
    "BrokerSettings",
    "QueueSettings",
    "UnknownSettings",
    "load_settings",
    "setting_variables",
    "unknown_variables",
]

ENV_PREFIX = "BROKER_"

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


class QueueSettings(BaseModel):
    """One SQS queue to consume.  In ``BROKER_QUEUES`` a bare string means ``{"name": …}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Queue name or queue URL.")
    concurrency: int | None = Field(
        default=None, ge=1, description="Handlers in flight for this queue (default: all slots)."
    )
    token_fields: tuple[str, ...] = Field(
        default=DEFAULT_TOKEN_FIELDS, min_length=1, description="Body fields tried for the token."
    )
    payload_fields: tuple[str, ...] = Field(
        default=DEFAULT_PAYLOAD_FIELDS, description="Body fields tried for the payload."
    )
    type_attribute: str | None = Field(
        default="type", description="Message attribute naming the type (null: don't look)."
    )
    type_field: str | None = Field(
        default="type", description="Body field naming the type; dotted path allowed."
    )
    default_handler: str | None = Field(
        default=None, description="Type used when a message names none."
    )
    dead_letter_queue: str | None = Field(
        default=None, description="Queue name or URL for poison and exhausted messages."
    )
    wait_time_s: int = Field(default=20, ge=0, le=20, description="Long-poll wait.")
    receivers: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="ReceiveMessage calls in flight (default: one per 16 slots, at most 4; "
        "FIFO: 1).",
    )
    visibility_timeout_s: int | None = Field(
        default=None, ge=0, le=43_200, description="Visibility on receive (default: the queue's)."
    )

    def envelope_spec(self) -> EnvelopeSpec:
        return EnvelopeSpec(
            token_fields=self.token_fields,
            payload_fields=self.payload_fields,
            type_attribute=self.type_attribute,
            type_field=self.type_field,
            default_type=self.default_handler,
        )


class ActivitySettings(BaseModel):
    """One Step Functions activity to serve (objects in ``BROKER_ACTIVITIES``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Activity name or activity ARN.")
    handler: str | None = Field(
        default=None, description="Handler type for the activity's tasks (or the fallback)."
    )
    type_field: str | None = Field(
        default=None, description="Input field naming the handler type; dotted path allowed."
    )
    pollers: int = Field(
        default=1, ge=1, le=100, description="GetActivityTask polls in flight at most."
    )
    worker_name: str | None = Field(
        default=None, max_length=80, description="workerName sent with each poll (default: host)."
    )
    create_if_missing: bool = Field(
        default=False, description="Create the activity at start-up if it does not exist."
    )

    @model_validator(mode="after")
    def _routable(self) -> Self:
        if self.handler is None and self.type_field is None:
            raise ValueError(
                f"{ENV_PREFIX}ACTIVITIES: activity {self.name!r} needs a handler or a type_field"
            )
        return self


def _level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"unknown log level {value!r}")
    return level


class BrokerSettings(BaseSettings):
    """Every setting of the broker.  Environment variables are ``BROKER_`` + the name."""

    # extra="forbid" catches unknown keyword arguments and config-file keys; the
    # environment and .env are checked by name in _NamesChecked (other programs'
    # variables are not errors there).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="forbid",
        populate_by_name=True,
        frozen=True,
    )

    queues: tuple[QueueSettings, ...] = Field(
        default=(), description="JSON list of queue names/URLs or per-queue objects."
    )
    activities: tuple[ActivitySettings, ...] = Field(
        default=(), description="JSON list of Step Functions activities to serve (objects)."
    )
    handlers: tuple[str, ...] = Field(
        default=(), description="JSON list of 'module:attribute' naming Routers to load."
    )
    entry_points: bool = Field(
        default=True, description="Load Routers from the 'callback_broker.handlers' entry points."
    )
    concurrency: int = Field(
        default=64, ge=1, description="Handlers in flight, all queues and activities."
    )
    completion_concurrency: int = Field(
        default=32, ge=1, description="SendTaskSuccess/Failure calls in flight."
    )
    completion_rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Client-side cap on completion calls per second (null: no cap).",
    )
    completion_burst: int | None = Field(
        default=None, ge=1, description="Token-bucket burst for the cap (default: one second)."
    )
    fast_completions: bool = Field(
        default=False,
        description="Send SendTask* calls signed and sent by the broker itself, not through "
        "botocore: about half the CPU per task (docs/benchmarks.md).",
    )
    completion_max_attempts: int = Field(
        default=6, ge=1, description="Tries of one completion call on throttling/5xx/network."
    )
    delete_linger_s: float = Field(
        default=0.05, ge=0, le=5, description="Wait this long to fill a DeleteMessageBatch."
    )
    max_attempts: int = Field(default=5, ge=1, description="Default receives before giving up.")
    handler_timeout_s: float | None = Field(
        default=900.0,
        gt=0,
        description="Default handler timeout: a handler that never returns is cancelled "
        "and retried (null: no limit).",
    )
    retry_base_delay_s: float = Field(default=2.0, ge=0, description="First retry backoff.")
    retry_max_delay_s: float = Field(
        default=300.0, ge=0, le=43_200, description="Cap of the retry backoff."
    )
    shutdown_grace_s: float = Field(
        default=25.0, ge=0, description="On SIGTERM, time running handlers get to finish."
    )
    log_level: str = Field(default="INFO", description="Root log level.")
    log_format: str = Field(
        default="auto",
        pattern="^(auto|json|text)$",
        description="Log lines: json, text, or auto (json unless stderr is a terminal).",
    )
    log_levels: dict[str, str] = Field(
        default_factory=dict,
        description='JSON object of per-logger levels, e.g. {"broker.processing": "DEBUG"}.',
    )
    http_host: str = Field(default="0.0.0.0", description="Address of /livez /readyz /metrics.")  # noqa: S104 - a container's probes come from outside
    http_port: int | None = Field(
        default=8080, ge=0, le=65_535, description="Port of /livez /readyz /metrics (null: off)."
    )
    aws_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BROKER_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region (AWS_REGION or AWS_DEFAULT_REGION).",
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BROKER_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="Endpoint for LocalStack or moto (AWS_ENDPOINT_URL).",
    )
    startup_timeout_s: float = Field(
        default=90.0,
        gt=0,
        description="At start-up (and in check), how long the queue and activity lookups "
        "retry throttling, 5xx and network errors, all together, before giving up (exit 1).",
    )

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("queues", "activities")
    @classmethod
    def _listed_once(
        cls, value: tuple[QueueSettings | ActivitySettings, ...], info: ValidationInfo
    ) -> tuple[QueueSettings | ActivitySettings, ...]:
        names = [item.name for item in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"{info.field_name} listed twice: {', '.join(duplicates)}")
        return value

    @field_validator("handlers")
    @classmethod
    def _handler_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ref in value:
            module, sep, attribute = ref.partition(":")
            if not sep or not module or not attribute:
                raise ValueError(f"{ref!r} is not of the form 'module:attribute'")
        return value

    @field_validator(
        "http_port",
        "handler_timeout_s",
        "completion_rate_per_s",
        "completion_burst",
        mode="before",
    )
    @classmethod
    def _null_switches_off(cls, value: Any) -> Any:
        # An environment variable cannot carry JSON null for a plain number: accept
        # the words people write for "off".
        if isinstance(value, str) and value.strip().lower() in {"", "null", "none", "off"}:
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return _level(value)

    @field_validator("log_levels")
    @classmethod
    def _log_levels(cls, value: dict[str, str]) -> dict[str, str]:
        return {logger: _level(level) for logger, level in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for queue in self.queues:
            if queue.concurrency is not None and queue.concurrency > self.concurrency:
                raise ValueError(
                    f"{ENV_PREFIX}QUEUES: queue {queue.name!r}: concurrency "
                    f"{queue.concurrency} exceeds the total concurrency {self.concurrency}"
                )
        pollers = sum(activity.pollers for activity in self.activities)
        if self.queues and pollers >= self.concurrency:
            # An idle activity poll holds its slot for up to a minute: with every slot
            # polling, the queues would never get one.
            raise ValueError(
                f"{ENV_PREFIX}ACTIVITIES: {pollers} activity poller(s) would hold all "
                f"{self.concurrency} {ENV_PREFIX}CONCURRENCY slots; the queues need some"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = InitSettingsSource(settings_cls, init_kwargs=cls.config_file_values)
        return (
            init_settings,
            _NamesChecked(settings_cls, env_settings, where=""),
            _NamesChecked(settings_cls, dotenv_settings, where=" (in .env)"),
            config_file,
        )

    # Filled by load_settings() on a throwaway subclass; empty for the base class.
    config_file_values: ClassVar[dict[str, Any]] = {}


class UnknownSettings(SettingsError):
    """``BROKER_*`` names that are no setting; the message names each and its closest."""


def setting_variables() -> tuple[str, ...]:
    """Every environment variable name that sets a ``BrokerSettings`` field."""
    names = [ENV_PREFIX + field.upper() for field in BrokerSettings.model_fields]
    for info in BrokerSettings.model_fields.values():
        if isinstance(info.validation_alias, AliasChoices):
            names += [c for c in info.validation_alias.choices if isinstance(c, str)]
    return tuple(dict.fromkeys(name for name in names if name.startswith(ENV_PREFIX)))


def unknown_variables(variables: Mapping[str, str | None], where: str = "") -> list[str]:
    """One line per ``BROKER_*`` name in ``variables`` that sets nothing."""
    valid = setting_variables()
    problems = []
    for raw_name, value in variables.items():
        name = raw_name.upper()  # names are case-insensitive, as pydantic-settings reads them
        if not name.startswith(ENV_PREFIX) or name in valid or _allowed_foreign(name, value):
            continue
        closest = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"did you mean {closest[0]}?" if closest else "see docs/settings.md"
        problems.append(f"{name}{where}: unknown setting ({hint})")
    return problems


def _allowed_foreign(name: str, value: str | None) -> bool:
    if name == f"{ENV_PREFIX}PORT":
        return bool(value and _SERVICE_LINK_VALUE.fullmatch(value))
    return any(pattern.fullmatch(name) for pattern in ALLOWED_FOREIGN_VARIABLES)


class _NamesChecked(PydanticBaseSettingsSource):
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
        problems = unknown_variables(variables, self._where)
        if problems:
            raise UnknownSettings("\n  ".join(problems))
        return {k: v for k, v in self._source().items() if k in self._known}


def load_settings(config_file: Path | None = None, **overrides: Any) -> BrokerSettings:
    """Build the settings, translating every problem into one ``ConfigError``.

    The message names each bad setting as its environment variable, so the operator
    sees ``BROKER_QUEUES`` rather than a pydantic location.
    """
    settings_cls: type[BrokerSettings] = BrokerSettings
    if config_file is not None:
        values = _read_config_file(config_file)
        settings_cls = type("BrokerSettings", (BrokerSettings,), {"config_file_values": values})
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    except UnknownSettings as exc:
        raise ConfigError(f"invalid settings:\n  {exc}") from exc
    except SettingsError as exc:
        # pydantic-settings names the field, not the variable: "error parsing value for
        # field "queues" from source ..." — usually a value that is not valid JSON.
        match = re.search(r'field "(\w+)"', str(exc))
        setting = _setting_name(match.group(1)) if match else "a setting"
        raise ConfigError(
            f"{setting}: cannot parse the value (lists and objects are JSON): {exc}"
        ) from exc


def _read_config_file(path: Path) -> dict[str, Any]:
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


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        field = location[0] if location else ""
        setting = _setting_name(field)
        where = ".".join(location[1:])
        suffix = f" (at {where})" if where else ""
        lines.append(f"{setting}{suffix}: {error['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _setting_name(field: str) -> str:
    known = {"aws_region": "AWS_REGION", "aws_endpoint_url": "AWS_ENDPOINT_URL"}
    if field in known:
        return known[field]
    if field in BrokerSettings.model_fields:
        return ENV_PREFIX + field.upper()
    return field or "settings"
