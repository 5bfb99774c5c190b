"""A received SQS message, reduced to what the broker needs, and the queue it came from."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from broker.core.settings import QueueSettings
from broker.sqs.envelope import EnvelopeSpec

__all__ = [
    "MAX_MESSAGE_BYTES",
    "QueueRuntime",
    "ReceivedMessage",
    "message_size",
    "without_surrogates",
]

#: SQS's limit on one message: body plus every attribute's name, type and value.
MAX_MESSAGE_BYTES: Final = 1_048_576


def message_size(body: str, attributes: Mapping[str, Any]) -> int:
    """Bytes SQS counts against ``MAX_MESSAGE_BYTES`` for this body and attributes.

    Never raises: a lone surrogate (which SQS refuses, but a fake or a handler can
    produce) counts as the 3 bytes of the U+FFFD that replaces it in a copy.
    """
    size = _utf8_len(body)
    for name, value in attributes.items():
        size += _utf8_len(name) + _utf8_len(str(value.get("DataType", "")))
        if "StringValue" in value:
            size += _utf8_len(str(value["StringValue"]))
        if "BinaryValue" in value:
            size += len(value["BinaryValue"])
    return size


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD: what SQS can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    #: String-valued message attributes, for routing.
    attributes: Mapping[str, str]
    #: The attributes as SQS gave them (all data types), for the dead-letter copy.
    raw_attributes: Mapping[str, Any] = field(repr=False)
    receive_count: int = 1
    group_id: str | None = None

    @classmethod
    def from_sqs(cls, raw: Mapping[str, Any]) -> ReceivedMessage:
        raw_attributes: Mapping[str, Any] = raw.get("MessageAttributes") or {}
        system = raw.get("Attributes") or {}
        return cls(
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            body=raw.get("Body", ""),
            attributes={
                name: value["StringValue"]
                for name, value in raw_attributes.items()
                if "StringValue" in value
            },
            raw_attributes=raw_attributes,
            receive_count=int(system.get("ApproximateReceiveCount", 1)),
            group_id=system.get("MessageGroupId"),
        )


@dataclass(frozen=True, slots=True)
class QueueRuntime:
    """A configured queue once resolved at start-up (its live side: ``sqs.delivery.SqsQueue``)."""

    settings: QueueSettings
    url: str
    spec: EnvelopeSpec
    dead_letter_url: str | None
    visibility_timeout_s: int
    fifo: bool

    @property
    def name(self) -> str:
        return self.settings.name
