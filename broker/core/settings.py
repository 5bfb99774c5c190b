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

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from broker.core.errors import ConfigError
from broker.core.settings_errors import describe
from broker.core.settings_models import ENV_PREFIX, ActivitySettings, QueueSettings
from broker.core.settings_origins import ORIGINS, Given, OriginsKept, field_of
from broker.core.settings_sources import (
    ALLOWED_FOREIGN_VARIABLES,
    NamesChecked,
    UnknownSettings,
    UnparsableSetting,
    read_config_file,
    variable_names,
)
from broker.core.settings_sources import unknown_variables as _unknown_among

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


def _level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"unknown log level {value!r}")
    return level


class BrokerSettings(OriginsKept):
    """Every setting of the broker.  Environment variables are ``BROKER_`` + the name."""

    # extra="forbid" catches unknown keyword arguments and config-file keys; the
    # environment and .env are checked by name in NamesChecked (other programs'
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
    entry_points: bool | tuple[str, ...] = Field(
        default=True,
        description="Load Routers from the 'callback_broker.handlers' entry points: true "
        'all, false none, or a JSON list of the entry points to load (["billing"]).',
    )
    concurrency: int = Field(
        default=128, ge=1, description="Handlers in flight, all queues and activities."
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
    completion_rate_adaptive: bool = Field(
        default=True,
        description="Adapt each SendTask* API's rate to throttling, so that replicas share "
        "the account's quota: cut on ThrottlingException, probe upward slowly "
        "(docs/fleet.md). The cap above stays the ceiling.",
    )
    completion_rate_decrease: float = Field(
        default=0.7,
        gt=0,
        lt=1,
        description="Adaptive rate: the factor it is multiplied by on a throttle.",
    )
    completion_rate_increase_per_s: float = Field(
        default=10.0,
        gt=0,
        description="Adaptive rate: calls/s it gains per second while it holds calls back.",
    )
    aws_client: Literal["lean", "botocore"] = Field(
        default="lean",
        description="lean: the hot calls (receive, delete, visibility, SendTask*) signed and "
        "sent by the broker on what botocore resolved; botocore: every call through "
        "aiobotocore (an escape hatch, about twice the CPU per task).",
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
        description='JSON object of per-logger levels, e.g. {"broker.outcome": "WARNING"}.',
    )
    http_host: str = Field(default="0.0.0.0", description="Address of /livez /readyz /metrics.")  # noqa: S104 - a container's probes come from outside
    http_port: int | None = Field(
        default=8080, ge=0, le=65_535, description="Port of /livez /readyz /metrics (null: off)."
    )
    decision_keys: tuple[SecretStr, ...] = Field(
        default=(),
        description="JSON list of decision-link keys (32 random bytes, URL-safe base64 each: "
        "`broker decisions keygen`); the first makes links, all open them. Never printed.",
    )
    decision_base_url: str | None = Field(
        default=None,
        description="The public http(s) URL in front of the decision listener; links are "
        "<this>/decisions/<blob>.",
    )
    decision_ttl_s: float = Field(
        default=86_400.0, gt=0, description="Default lifetime of a decision link."
    )
    decision_host: str = Field(default="0.0.0.0", description="Address of the decision listener.")  # noqa: S104 - reached through the proxy in front
    decision_port: int | None = Field(
        default=8081,
        ge=0,
        le=65_535,
        description="Port of the decision listener, started when decision_keys are set "
        "(null: off).",
    )
    decision_topic: str | None = Field(
        default=None, description="SNS topic (name or ARN) that task.notify() publishes to."
    )
    idempotency_table: str | None = Field(
        default=None,
        description="DynamoDB table (name or ARN) of the idempotent=True handlers' claims and "
        "verdicts (`broker idempotency create-table NAME`; docs/fleet.md).",
    )
    idempotency_ttl_s: float = Field(
        default=86_400.0,
        ge=60,
        le=31_536_000,
        description="How long a recorded verdict is replayed to a later copy of its task "
        "(the table's TTL attribute).",
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

    @field_validator("entry_points", mode="before")
    @classmethod
    def _entry_point_selection(cls, value: Any) -> Any:
        # A bare true/false from the environment or .env; a list names entry points.
        if isinstance(value, str):
            word = value.strip().lower()
            if word in {"true", "1", "yes", "on"}:
                return True
            if word in {"false", "0", "no", "off"}:
                return False
            raise ValueError('true, false, or a JSON list of entry-point names (["billing"])')
        if isinstance(value, list | tuple) and not all(
            isinstance(name, str) and name for name in value
        ):
            raise ValueError("a list of entry-point names (non-empty strings)")
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
        "decision_port",
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

    @field_validator("decision_base_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.strip().rstrip("/")

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
        config_file = Given(settings_cls, cls.config_file_values, "file")
        return (
            init_settings,
            NamesChecked(settings_cls, env_settings, where=""),
            NamesChecked(settings_cls, dotenv_settings, where=" (in .env)"),
            config_file,
        )

    # Filled by load_settings() on a throwaway subclass; empty for the base class.
    config_file_values: ClassVar[dict[str, Any]] = {}


def setting_variables() -> tuple[str, ...]:
    """Every environment variable name that sets a ``BrokerSettings`` field."""
    return variable_names(BrokerSettings)


def unknown_variables(variables: Mapping[str, str | None], where: str = "") -> list[str]:
    """One line per ``BROKER_*`` name in ``variables`` that sets nothing."""
    return _unknown_among(variables, setting_variables(), where)


def load_settings(config_file: Path | None = None, **overrides: Any) -> BrokerSettings:
    """Build the settings, translating every problem into one ``ConfigError``.

    Each message names where the bad value came from: the environment variable (or
    ``.env``), or the config file and the key in it, with the closest valid name for an
    unknown one and the position of a JSON error.
    """
    settings_cls: type[BrokerSettings] = BrokerSettings
    values: dict[str, Any] = {}
    if config_file is not None:
        values = read_config_file(config_file)
        settings_cls = type("BrokerSettings", (BrokerSettings,), {"config_file_values": values})
    origins: dict[str, str] = {}
    token = ORIGINS.set(origins)
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        message = describe(
            exc,
            fields=list(BrokerSettings.model_fields),
            field_of=lambda key: field_of(BrokerSettings, key),
            origins=origins,
            config_file=config_file,
            file_values=values,
        )
        raise ConfigError(message) from exc
    except (UnknownSettings, UnparsableSetting) as exc:
        raise ConfigError(f"invalid settings:\n  {exc}") from exc
    except SettingsError as exc:
        raise ConfigError(f"settings: cannot parse a value: {exc.__cause__ or exc}") from exc
    finally:
        ORIGINS.reset(token)
