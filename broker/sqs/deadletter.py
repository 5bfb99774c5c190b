"""The dead-letter contract: what a copy in a DLQ says about itself, written and read here.

A copy the broker dead-letters carries the original body and, beside the original
attributes (as many as SQS's limit of 10 leaves room for), these (docs/errors.md):

- ``broker.reason``: why (``InvalidJson``, ``UnknownMessageType``, ``AttemptsExhausted``…);
- ``broker.source_queue``: the queue it came from, where ``broker redrive`` sends it back;
- ``broker.receive_count``: its receives when it was copied;
- ``broker.detail``: a line of detail (an error, a cause), without the task token;
- ``broker.redriven``: set by ``broker redrive`` on what it sends back (the run's id) and
  carried onto a new copy of such a message, so a run knows its own round trips.

``sqs.delivery`` sends the copy; ``sqs.redrive`` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from broker.sqs.message import MAX_MESSAGE_BYTES, ReceivedMessage, message_size, without_surrogates

__all__ = [
    "BROKER_PREFIX",
    "REDRIVEN_ATTRIBUTE",
    "DeadLetterCopy",
    "dead_letter_copy",
    "is_redriven",
    "redriven_by",
    "sent_back_attributes",
    "source_queue",
]

BROKER_PREFIX: Final = "broker."
REASON_ATTRIBUTE: Final = "broker.reason"
SOURCE_QUEUE_ATTRIBUTE: Final = "broker.source_queue"
RECEIVE_COUNT_ATTRIBUTE: Final = "broker.receive_count"
DETAIL_ATTRIBUTE: Final = "broker.detail"
REDRIVEN_ATTRIBUTE: Final = "broker.redriven"

#: SQS allows at most 10 message attributes.
MAX_ATTRIBUTES: Final = 10
_MAX_DETAIL_CHARS: Final = 1024


@dataclass(frozen=True, slots=True)
class DeadLetterCopy:
    body: str
    attributes: dict[str, Any]

    @property
    def fits(self) -> bool:
        """Within SQS's message size limit (a body alone can nearly fill it)."""
        return message_size(self.body, self.attributes) <= MAX_MESSAGE_BYTES

    def send_params(self, dead_letter_url: str, message: ReceivedMessage) -> dict[str, Any]:
        params: dict[str, Any] = {
            "QueueUrl": dead_letter_url,
            "MessageBody": self.body,
            "MessageAttributes": self.attributes,
        }
        if dead_letter_url.endswith(".fifo"):
            params["MessageGroupId"] = message.group_id or "broker-dead-letters"
            params["MessageDeduplicationId"] = message.message_id
        return params


def dead_letter_copy(
    message: ReceivedMessage, source_queue: str, reason: str, detail: str
) -> DeadLetterCopy:
    """The copy of ``message`` to send to a DLQ (``detail`` already without the token).

    Check ``fits`` before sending: a copy that cannot say why is not sent at all.
    """
    # SQS cannot carry a lone surrogate (a fake can hand one over): the copy gets
    # U+FFFD in its place rather than fail for ever.
    body = without_surrogates(message.body) or "(empty body)"
    if body != (message.body or "(empty body)"):
        detail = f"{detail} (lone surrogates in the body replaced by U+FFFD in this copy)"
    attributes: dict[str, Any] = {
        REASON_ATTRIBUTE: _string(reason),
        SOURCE_QUEUE_ATTRIBUTE: _string(source_queue),
        RECEIVE_COUNT_ATTRIBUTE: {"DataType": "Number", "StringValue": str(message.receive_count)},
        DETAIL_ATTRIBUTE: _string(without_surrogates(detail)[:_MAX_DETAIL_CHARS] or "-"),
    }
    redriven = message.raw_attributes.get(REDRIVEN_ATTRIBUTE)
    if redriven is not None:
        # First among the originals: the redrive that sent it knows it by this mark.
        attributes[REDRIVEN_ATTRIBUTE] = _copyable(redriven)
    for name, value in message.raw_attributes.items():
        if len(attributes) >= MAX_ATTRIBUTES:
            break
        attributes.setdefault(without_surrogates(name), _copyable(value))
    return DeadLetterCopy(body, _fit_in_one_message(body, attributes))


def is_redriven(message: ReceivedMessage) -> bool:
    """True for a copy ``broker redrive`` sent back from a dead-letter queue."""
    return REDRIVEN_ATTRIBUTE in message.raw_attributes


def redriven_by(attributes: Mapping[str, Any]) -> str | None:
    """The id of the redrive run that sent this message back, if one did."""
    return _read(attributes, REDRIVEN_ATTRIBUTE)


def source_queue(attributes: Mapping[str, Any]) -> str | None:
    """The queue a dead-lettered copy came from (None if it does not say)."""
    return _read(attributes, SOURCE_QUEUE_ATTRIBUTE)


def sent_back_attributes(attributes: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The original attributes of a copy (the ``broker.*`` ones dropped), marked as sent
    back by the redrive run ``run_id`` when there is room for the mark."""
    kept = {name: value for name, value in attributes.items() if not name.startswith(BROKER_PREFIX)}
    if len(kept) < MAX_ATTRIBUTES:
        kept[REDRIVEN_ATTRIBUTE] = _string(run_id)
    return kept


def _read(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name, {}).get("StringValue")
    return str(value) if value else None


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _fit_in_one_message(body: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """Drop what can go so that the copy fits: the original attributes, then the detail.

    The reason, source queue and receive count are always kept.
    """
    if message_size(body, attributes) <= MAX_MESSAGE_BYTES:
        return attributes
    kept = {name: value for name, value in attributes.items() if name.startswith(BROKER_PREFIX)}
    if message_size(body, kept) > MAX_MESSAGE_BYTES:
        kept[DETAIL_ATTRIBUTE] = _string("-")
    return kept


def _copyable(value: Mapping[str, Any]) -> dict[str, Any]:
    copy = {key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value}
    if isinstance(copy.get("StringValue"), str):
        copy["StringValue"] = without_surrogates(copy["StringValue"])
    return copy
