"""The per-source settings: one SQS queue, one Step Functions activity.

Items of ``BROKER_QUEUES`` and ``BROKER_ACTIVITIES``; import them from
``broker.core.settings`` (or ``broker``), which holds ``BrokerSettings``.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker.sqs.envelope import DEFAULT_PAYLOAD_FIELDS, DEFAULT_TOKEN_FIELDS, EnvelopeSpec

__all__ = ["ENV_PREFIX", "ActivitySettings", "QueueSettings"]

ENV_PREFIX = "BROKER_"


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
