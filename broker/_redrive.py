"""``broker redrive``: move dead-lettered messages back to the queue they came from.

Each copy the broker dead-letters names its source in ``broker.source_queue``; the
redrive sends the original body and attributes (without the ``broker.*`` ones) back
there, or to ``--to``, and deletes from the DLQ only what was sent.  A message that
names no source and has no ``--to`` is left in the DLQ and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._aws import SqsApi
from ._service import resolve_queue_url

__all__ = ["RedriveReport", "redrive"]

_SOURCE_ATTRIBUTE: Final = "broker.source_queue"
_BROKER_PREFIX: Final = "broker."
# Messages stay hidden this long while one batch is moved, so a second redrive running
# at the same time does not move them twice.
_HOLD_S: Final = 60


@dataclass
class RedriveReport:
    moved: Counter[str] = field(default_factory=Counter)  # destination queue → count
    no_destination: int = 0
    failed: int = 0

    @property
    def total_moved(self) -> int:
        return sum(self.moved.values())

    def lines(self) -> list[str]:
        out = [f"moved {count} message(s) to {queue}" for queue, count in self.moved.items()]
        out.append(f"moved {self.total_moved} in all")
        if self.no_destination:
            out.append(
                f"left {self.no_destination} message(s) that name no source queue (use --to)"
            )
        if self.failed:
            out.append(f"{self.failed} message(s) could not be sent back and stay in the DLQ")
        return out


async def redrive(
    sqs: SqsApi,
    dead_letter_queue: str,
    *,
    to: str | None = None,
    max_messages: int | None = None,
) -> RedriveReport:
    """Move messages from ``dead_letter_queue`` back, in batches of up to 10."""
    report = RedriveReport()
    dlq_url = await resolve_queue_url(sqs, dead_letter_queue)
    urls: dict[str, str] = {}
    seen: set[str] = set()
    while max_messages is None or report.total_moved + report.failed < max_messages:
        wanted = 10 if max_messages is None else min(10, max_messages - report.total_moved)
        response = await sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=max(1, wanted),
            WaitTimeSeconds=1,
            VisibilityTimeout=_HOLD_S,
            MessageAttributeNames=["All"],
        )
        messages = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not messages:
            break
        seen.update(m["MessageId"] for m in messages)
        by_destination: dict[str, list[Mapping[str, Any]]] = {}
        for message in messages:
            attributes = message.get("MessageAttributes") or {}
            destination = to or attributes.get(_SOURCE_ATTRIBUTE, {}).get("StringValue")
            if not destination:
                report.no_destination += 1
                continue
            by_destination.setdefault(destination, []).append(message)
        for destination, batch in by_destination.items():
            if destination not in urls:
                urls[destination] = await resolve_queue_url(sqs, destination)
            sent = await _send_back(sqs, urls[destination], batch)
            report.moved[destination] += len(sent)
            report.failed += len(batch) - len(sent)
            if sent:
                await sqs.delete_message_batch(
                    QueueUrl=dlq_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(sent)
                    ],
                )
    return report


async def _send_back(
    sqs: SqsApi, url: str, batch: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    entries = []
    for index, message in enumerate(batch):
        entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
        original = {
            name: value
            for name, value in (message.get("MessageAttributes") or {}).items()
            if not name.startswith(_BROKER_PREFIX)
        }
        if original:
            entry["MessageAttributes"] = original
        if url.endswith(".fifo"):
            entry["MessageGroupId"] = "broker-redrive"
            entry["MessageDeduplicationId"] = message["MessageId"]
        entries.append(entry)
    response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    ok = {entry["Id"] for entry in response.get("Successful", [])}
    return [message for index, message in enumerate(batch) if str(index) in ok]
