"""The message shapes ``broker local deploy --shape`` puts on a queue.

A shape is the ``MessageBody`` a ``.waitForTaskToken`` task sends and the ``BROKER_QUEUES``
options that read it. ``broker`` (the default) is the broker's own contract with its
default settings: ``{"input": …, "TaskToken": …}``, the type as the SQS message attribute
``type`` when ``--type`` names one, else the ``type`` field of the input. The others are the
seed documents' bodies (seeds 000, 001 and 004), defined here once: ``local.definitions``
and ``local.flows`` build the seed flows from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["DEFAULT_SHAPE", "SHAPES", "Shape"]

_UNTYPED: Final[Mapping[str, Any]] = {"type_attribute": None, "type_field": None}


@dataclass(frozen=True)
class Shape:
    name: str
    summary: str
    #: The task's ``MessageBody``, with Step Functions' ``.$`` paths.
    body: Mapping[str, str]
    #: ``--type`` travels as the message attribute ``type``; else the queue's default handler.
    type_as_attribute: bool
    #: The type must be given: the body names none.
    type_required: bool
    #: ``BROKER_QUEUES`` options beyond the name and the dead-letter queue.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def queue_row(
        self, name: str, dead_letter_queue: str | None, message_type: str | None
    ) -> dict[str, Any]:
        """The ``BROKER_QUEUES`` row that reads this shape from the queue ``name``."""
        row: dict[str, Any] = {"name": name, **self.settings}
        if message_type is not None and not self.type_as_attribute:
            row["default_handler"] = message_type
        if dead_letter_queue is not None:
            row["dead_letter_queue"] = dead_letter_queue
        return row


SHAPES: Final[Mapping[str, Shape]] = {
    shape.name: shape
    for shape in (
        Shape(
            "broker",
            'the broker\'s contract: {"input", "TaskToken"}, type attribute or input "type"',
            {"input.$": "$", "TaskToken.$": "$$.Task.Token"},
            type_as_attribute=True,
            type_required=False,
        ),
        Shape(
            "seed-000",
            'seed 000: {"input", "MyTaskToken"}; --type is the queue\'s default handler',
            {"input.$": "$", "MyTaskToken.$": "$$.Task.Token"},
            type_as_attribute=False,
            type_required=True,
            settings={"token_fields": ["MyTaskToken"], "payload_fields": ["input"], **_UNTYPED},
        ),
        Shape(
            "seed-001",
            'seed 001: {"input", "TaskToken"}, --type as the attribute `type`, no body type',
            {"input.$": "$", "TaskToken.$": "$$.Task.Token"},
            type_as_attribute=True,
            type_required=True,
            settings={
                "token_fields": ["TaskToken"],
                "payload_fields": ["input"],
                "type_attribute": "type",
                "type_field": None,
            },
        ),
        Shape(
            "seed-004",
            'seed 004: {"Payload", "TaskToken"}; --type is the queue\'s default handler',
            {"Payload.$": "$", "TaskToken.$": "$$.Task.Token"},
            type_as_attribute=False,
            type_required=True,
            settings={"token_fields": ["TaskToken"], "payload_fields": ["Payload"], **_UNTYPED},
        ),
    )
}
DEFAULT_SHAPE: Final = "broker"
