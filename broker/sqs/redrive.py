"""``broker redrive``: move dead-lettered messages back to the queue they came from.

Each copy the broker dead-letters names its source in ``broker.source_queue``; the
redrive sends the original body and attributes (without the ``broker.*`` ones) back
there, or to ``--to``, and deletes from the DLQ only what was sent.  A message that
names no source and has no ``--to`` is left in the DLQ and counted.

Anyone who can send to a queue can send a message carrying ``broker.source_queue``, and
SQS's own redrive moves it to the DLQ as it is: the attribute is a producer's word, not
the broker's.  So a copy goes back only to a queue the settings name (``sources``, the
queues ``broker run`` consumes); one naming any other queue is left in the DLQ and
reported.  ``--to`` is the operator's word and goes anywhere.

A broker may be consuming the destination while the redrive runs, and dead-letter a
moved message again (poison, an unknown type).  So that the two never pass messages back
and forth, a run moves at most what the DLQ held when it started, and marks every copy
it sends with ``broker.redriven`` (a run id): a broker carries that mark onto any new
dead-letter copy, and the run leaves such a copy in the DLQ.  A broker that gets a
completion answered "task closed" for a marked message drops it instead of copying it
again (``sqs.processor``).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from broker.aws.errors import error_code
from broker.aws.protocols import SqsApi
from broker.core.errors import QueueNotFound, StartupError
from broker.sqs.deadletter import (
    REDRIVEN_ATTRIBUTE,
    redriven_by,
    sent_back_attributes,
    source_queue,
)
from broker.sqs.lookup import queue_depth, resolve_queue_url

__all__ = ["REDRIVEN_ATTRIBUTE", "RedriveReport", "redrive"]

log = logging.getLogger("broker.redrive")

# Messages stay hidden this long while one batch is moved, so a second redrive running
# at the same time does not move them twice.
_HOLD_S: Final = 60
#: How long handing back the messages left in the DLQ may take at the end (shielded).
_RELEASE_TIMEOUT_S: Final = 10
#: Characters of a refused destination the report shows (a producer wrote it).
_SHOWN: Final = 200


@dataclass
class RedriveReport:
    moved: Counter[str] = field(default_factory=Counter)  # destination queue → count
    no_destination: int = 0
    #: Left in the DLQ: ``broker.source_queue`` names a queue the settings do not.
    not_allowed: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    #: Visible messages in the DLQ when the run started: the most it moves.
    at_start: int = 0
    #: Copies this run sent that a broker dead-lettered again during the run.
    came_back: int = 0

    @property
    def total_moved(self) -> int:
        return sum(self.moved.values())

    @property
    def handled(self) -> int:
        """Messages of the starting set this run dealt with, one way or another."""
        return self.total_moved + self.failed + self.no_destination + sum(self.not_allowed.values())

    def lines(self) -> list[str]:
        out = [f"the DLQ held {self.at_start} visible message(s) at the start"]
        out.extend(f"moved {count} message(s) to {queue}" for queue, count in self.moved.items())
        out.append(f"moved {self.total_moved} in all")
        if self.no_destination:
            out.append(
                f"left {self.no_destination} message(s) that name no source queue (use --to)"
            )
        for queue, count in self.not_allowed.items():
            out.append(
                f"left {count} message(s) whose broker.source_queue names {queue[:_SHOWN]!r}, "
                "a queue the settings do not name (BROKER_QUEUES; or choose one with --to)"
            )
        if self.failed:
            out.append(f"{self.failed} message(s) could not be sent back and stay in the DLQ")
        if self.came_back:
            out.append(
                f"{self.came_back} moved message(s) were dead-lettered again during this run "
                "and were left in the DLQ"
            )
        return out


async def redrive(
    sqs: SqsApi,
    dead_letter_queue: str,
    *,
    sources: Collection[str],
    to: str | None = None,
    max_messages: int | None = None,
) -> RedriveReport:
    """Move messages from ``dead_letter_queue`` back, in batches of up to 10.

    Without ``to``, each message goes to its ``broker.source_queue`` if that is one of
    ``sources`` (queue names or URLs, as the settings give them; a name and its URL are
    the same queue).  ``QueueNotFound`` before anything is received if the DLQ or
    ``to`` is missing.
    """
    report = RedriveReport()
    dlq_url = await resolve_queue_url(sqs, dead_letter_queue)
    allowed = _Allowed(sqs, sources)
    report.at_start = await queue_depth(sqs, dlq_url, dead_letter_queue)
    urls: dict[str, str | None] = {}
    if to is not None:
        # Checked first: a missing destination must not hide the DLQ's messages.
        to_url = urls[to] = await resolve_queue_url(sqs, to)
        await queue_depth(sqs, to_url, to)
    run_id = uuid.uuid4().hex[:16]
    # Received and left in the DLQ: handed back (made visible) when the run ends.
    kept: dict[str, str] = {}
    seen: set[str] = set()
    try:
        while (left := _left_to_do(report, max_messages)) > 0:
            response = await sqs.receive_message(
                QueueUrl=dlq_url,
                MaxNumberOfMessages=min(10, left),
                WaitTimeSeconds=1,
                VisibilityTimeout=_HOLD_S,
                MessageAttributeNames=["All"],
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            by_destination: dict[str, list[Mapping[str, Any]]] = {}
            for message in messages:
                message_id = message["MessageId"]
                if message_id in seen:
                    # Left in the DLQ earlier and visible again after its hold: keep it
                    # hidden until the run ends, under its newest receipt handle.
                    kept[message_id] = message["ReceiptHandle"]
                    await _hold(sqs, dlq_url, message["ReceiptHandle"])
                    continue
                seen.add(message_id)
                attributes = message.get("MessageAttributes") or {}
                if redriven_by(attributes) == run_id:
                    # Moved by this run and dead-lettered again: moving it again would
                    # only start the same round trip.
                    report.came_back += 1
                    kept[message_id] = message["ReceiptHandle"]
                    continue
                destination = to or source_queue(attributes)
                if not destination:
                    report.no_destination += 1
                    kept[message_id] = message["ReceiptHandle"]
                    continue
                if to is None and not await allowed.contains(destination):
                    report.not_allowed[destination] += 1
                    kept[message_id] = message["ReceiptHandle"]
                    continue
                by_destination.setdefault(destination, []).append(message)
            for destination, batch in by_destination.items():
                if destination not in urls:
                    urls[destination] = await _url_or_none(sqs, destination)
                url = urls[destination]
                sent = await _send_back(sqs, url, batch, run_id) if url else []
                if sent:
                    report.moved[destination] += len(sent)
                report.failed += len(batch) - len(sent)
                sent_ids = {m["MessageId"] for m in sent}
                kept.update(
                    (m["MessageId"], m["ReceiptHandle"])
                    for m in batch
                    if m["MessageId"] not in sent_ids
                )
                if sent:
                    await sqs.delete_message_batch(
                        QueueUrl=dlq_url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                            for i, m in enumerate(sent)
                        ],
                    )
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S):
            await _release(sqs, dlq_url, kept.values())
    return report


class _Allowed:
    """The queues a message's own ``broker.source_queue`` may send it back to."""

    def __init__(self, sqs: SqsApi, sources: Collection[str]) -> None:
        self._sqs = sqs
        self._sources = frozenset(sources)
        self._urls: set[str] | None = None

    async def contains(self, queue: str) -> bool:
        if queue in self._sources:
            return True  # as the broker wrote it: the queue's name in the settings
        # The settings may name by URL what a copy names by name, or the other way round.
        urls = await self._source_urls()
        if _is_url(queue):
            return queue in urls
        if not any(url.rsplit("/", 1)[-1] == queue for url in urls):
            return False  # no call for a name no configured queue has
        # The same name may be another account's queue: this one's URL must match.
        url = await _resolved_or_none(self._sqs, queue)
        return url is not None and url in urls

    async def _source_urls(self) -> set[str]:
        if self._urls is None:
            found = [await _resolved_or_none(self._sqs, source) for source in self._sources]
            self._urls = {url for url in found if url is not None}
        return self._urls


def _is_url(queue: str) -> bool:
    return queue.startswith(("https://", "http://"))


async def _resolved_or_none(sqs: SqsApi, queue: str) -> str | None:
    try:
        return await resolve_queue_url(sqs, queue)
    except StartupError as exc:  # QueueNotFound included: that queue cannot match
        log.warning("cannot look queue %r up: %s", queue, exc)
        return None


def _left_to_do(report: RedriveReport, max_messages: int | None) -> int:
    left = report.at_start - report.handled
    if max_messages is not None:
        left = min(left, max_messages - report.total_moved - report.failed)
    return left


async def _url_or_none(sqs: SqsApi, name: str) -> str | None:
    """The URL of a source queue a message names, or None (counted as failed) if missing."""
    try:
        url = await resolve_queue_url(sqs, name)
        await queue_depth(sqs, url, name)
    except QueueNotFound as exc:
        log.error("cannot send messages back to %s: %s", name, exc)
        return None
    return url


async def _hold(sqs: SqsApi, url: str, receipt_handle: str) -> None:
    try:
        await sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=receipt_handle, VisibilityTimeout=_HOLD_S
        )
    except Exception as exc:  # noqa: BLE001 - worst case: it is received once more
        log.warning("could not keep a DLQ message hidden (%s)", error_code(exc) or exc)


async def _release(sqs: SqsApi, url: str, receipt_handles: Iterable[str]) -> None:
    """Make the messages left in the DLQ visible again at once, for the next run."""
    for receipt_handle in receipt_handles:
        try:
            await sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=receipt_handle, VisibilityTimeout=0
            )
        except Exception as exc:  # noqa: BLE001 - it becomes visible after its hold anyway
            log.warning("could not hand a DLQ message back (%s)", error_code(exc) or exc)


async def _send_back(
    sqs: SqsApi, url: str, batch: Sequence[Mapping[str, Any]], run_id: str
) -> list[Mapping[str, Any]]:
    entries = []
    for index, message in enumerate(batch):
        entry: dict[str, Any] = {"Id": str(index), "MessageBody": message["Body"]}
        attributes = sent_back_attributes(message.get("MessageAttributes") or {}, run_id)
        if attributes:
            entry["MessageAttributes"] = attributes
        if url.endswith(".fifo"):
            entry["MessageGroupId"] = "broker-redrive"
            entry["MessageDeduplicationId"] = message["MessageId"]
        entries.append(entry)
    response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    ok = {entry["Id"] for entry in response.get("Successful", [])}
    return [message for index, message in enumerate(batch) if str(index) in ok]
