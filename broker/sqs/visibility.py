"""One visibility timer per queue: every message whose handler runs stays invisible.

A message's visibility is extended at half-life while its handler runs, so that a slow
handler is not run twice.  One task per queue does it for all of them (rather than one
task and cancel scope per message): the running messages are kept in the order they
fall due, which is the order they were tracked in, since every one of a queue is due
half its visibility timeout after it was tracked or last extended.  The messages due
together are extended by one ChangeMessageVisibilityBatch per 10 (one alone by
ChangeMessageVisibility), up to SQS's 12 h limit after their receive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio

from broker.aws.errors import error_name
from broker.aws.protocols import SqsApi
from broker.sqs.message import QueueRuntime, ReceivedMessage

__all__ = ["MAX_VISIBILITY_S", "VisibilityKeeper"]

log = logging.getLogger("broker.delivery")

#: SQS's longest visibility timeout, and how long after its receive a message may stay
#: invisible at most.
MAX_VISIBILITY_S: Final = 43_200
_VISIBILITY_MARGIN_S: Final = 5
_MAX_BATCH: Final = 10


@dataclass(slots=True)
class _Running:
    message: ReceivedMessage
    tracked_at: float
    due: float


class VisibilityKeeper:
    """Extends the visibility of a queue's running messages (``run`` is its one task)."""

    def __init__(self, runtime: QueueRuntime, sqs: SqsApi) -> None:
        self._runtime = runtime
        self._sqs = sqs
        self.visibility_s = runtime.settings.visibility_timeout_s or runtime.visibility_timeout_s
        #: Running messages by receipt handle, in the order they fall due.
        self._running: dict[str, _Running] = {}
        self._wake = anyio.Event()

    def track(self, message: ReceivedMessage) -> None:
        """Keep ``message`` invisible from now until ``untrack``."""
        if self.visibility_s <= 0:
            return
        now = anyio.current_time()
        if not self._running:
            self._wake.set()  # the timer sleeps without a deadline
        self._running[message.receipt_handle] = _Running(message, now, now + self.visibility_s / 2)

    def untrack(self, message: ReceivedMessage) -> None:
        self._running.pop(message.receipt_handle, None)
        if not self._running:
            self._wake.set()  # nothing left: ``run`` may be done

    def wake(self) -> None:
        """Have ``run`` look at its ``done`` condition again (the queue stops)."""
        self._wake.set()

    async def run(self, done: Callable[[], bool]) -> None:
        """Extend what falls due, until ``done()`` and nothing runs any more."""
        while self._running or not done():
            now = anyio.current_time()
            first = next(iter(self._running.values()), None)
            if first is None or first.due > now:
                self._wake = anyio.Event()
                with anyio.move_on_after(first.due - now if first else 1.0):
                    await self._wake.wait()
                continue
            await self._extend_due(now)

    async def _extend_due(self, now: float) -> None:
        # Take what falls due within a little while too: fewer, fuller batches.
        horizon = now + min(1.0, self.visibility_s / 10)
        due: list[tuple[ReceivedMessage, int]] = []
        for handle, running in list(self._running.items()):
            if running.due > horizon:
                break
            del self._running[handle]
            left_s = MAX_VISIBILITY_S - _VISIBILITY_MARGIN_S - (now - running.tracked_at)
            extend_s = min(self.visibility_s, int(left_s))
            if extend_s <= 0:
                log.warning(
                    "message %s on %s reached the 12 h visibility limit; it will be redelivered",
                    running.message.message_id,
                    self._runtime.name,
                )
                continue
            running.due = now + self.visibility_s / 2
            self._running[handle] = running  # to the end: due last
            due.append((running.message, extend_s))
        for start in range(0, len(due), _MAX_BATCH):
            await self._extend(due[start : start + _MAX_BATCH])

    async def _extend(self, batch: list[tuple[ReceivedMessage, int]]) -> None:
        url = self._runtime.url
        try:
            if len(batch) == 1:
                [(message, extend_s)] = batch
                await self._sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=extend_s
                )
                return
            response = await self._sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {
                        "Id": str(number),
                        "ReceiptHandle": message.receipt_handle,
                        "VisibilityTimeout": extend_s,
                    }
                    for number, (message, extend_s) in enumerate(batch)
                ],
            )
        except Exception as exc:  # noqa: BLE001 - worst case: the queue's own timeout applies
            log.warning(
                "ChangeMessageVisibility (extend) failed for %d message(s) on %s (%s)",
                len(batch),
                self._runtime.name,
                error_name(exc),
            )
            return
        for entry in response.get("Failed", []):
            message = batch[int(entry.get("Id", 0))][0]
            log.warning(
                "ChangeMessageVisibility (extend) failed for message %s on %s (%s)",
                message.message_id,
                self._runtime.name,
                entry.get("Code"),
            )
