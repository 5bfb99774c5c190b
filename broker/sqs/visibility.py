"""One visibility keeper per queue: a message stays invisible for as long as it is held.

A message is held from its receive until its fate is handed to SQS: waiting behind an
in-process duplicate, while its handler runs, while its completion is sent (however
long Step Functions takes), and after its delete was queued until SQS confirmed it.
``Delivery.hide`` / ``hand_back`` / ``park`` let go of it first, so that the keeper
never overrides a retry's backoff.

Its visibility is extended every third of the visibility timeout.  One task per queue
schedules it for all of them (rather than one task and cancel scope per message): the
held messages are kept in the order they fall due, which is the order they were tracked
or last extended in, since every one of a queue is due a third of its visibility timeout
after that.  The messages due together are extended by ChangeMessageVisibilityBatch
calls of 10, several in flight at once (``_CALLS_IN_FLIGHT``): one slow call holds up
neither the others nor the next round, since a message's next extension falls due a
third of a visibility after the call was *sent*, answered or not.  A third, not a half:
when one call does not land in time, the next one still lands before the visibility
given by the one before lapses.  So 5,000 messages held with a 10 s visibility and 30 ms
per call are one round of 500 calls every 3.3 s, about 1 s of it with 16 in flight.
Extensions stop at SQS's 12 h limit after the receive.

An extension of a message settled meanwhile (its delete landed first) fails with
ReceiptHandleIsInvalid: an expected race, said at DEBUG; only a failure for a message
still held is a WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
from anyio.abc import TaskGroup

from broker.aws.errors import error_code, error_name
from broker.aws.protocols import SqsApi
from broker.sqs.message import QueueRuntime, ReceivedMessage

__all__ = ["MAX_VISIBILITY_S", "VisibilityKeeper"]

log = logging.getLogger("broker.delivery")

#: SQS's longest visibility timeout, and how long after its receive a message may stay
#: invisible at most.
MAX_VISIBILITY_S: Final = 43_200
_VISIBILITY_MARGIN_S: Final = 5
_MAX_BATCH: Final = 10
#: ChangeMessageVisibility(Batch) calls in flight per queue at most.
_CALLS_IN_FLIGHT: Final = 16
#: A message falls due this share of the visibility timeout after its last extension.
_EXTEND_EVERY: Final = 1 / 3
#: What SQS answers for a handle whose message was deleted (or received again).
_GONE_CODES: Final = frozenset(
    {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}
)


@dataclass(slots=True)
class _Held:
    message: ReceivedMessage
    tracked_at: float
    due: float
    #: Its delete is queued: kept invisible until SQS confirms it, but the drain does
    #: not wait for it (the deleter's flush is bounded on its own).
    deleting: bool = False


class VisibilityKeeper:
    """Extends the visibility of a queue's held messages (``run`` is its one task)."""

    def __init__(self, runtime: QueueRuntime, sqs: SqsApi) -> None:
        self._runtime = runtime
        self._sqs = sqs
        self.visibility_s = runtime.settings.visibility_timeout_s or runtime.visibility_timeout_s
        #: Held messages by receipt handle, in the order they fall due.
        self._held: dict[str, _Held] = {}
        #: Held messages whose delete is not queued yet (the drain waits for these).
        self._handling = 0
        self._wake = anyio.Event()
        self._calls = anyio.Semaphore(_CALLS_IN_FLIGHT)
        #: Extension calls sent, and messages extended (tests and the scale figures).
        self.calls = 0
        self.extended = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def track(self, message: ReceivedMessage) -> None:
        """Keep ``message`` invisible from now until ``untrack`` (or its delete lands)."""
        if self.visibility_s <= 0 or message.receipt_handle in self._held:
            return
        now = anyio.current_time()
        if not self._held:
            self._wake.set()  # the timer sleeps without a deadline
        due = now + self.visibility_s * _EXTEND_EVERY
        self._held[message.receipt_handle] = _Held(message, now, due)
        self._handling += 1

    def deleting(self, message: ReceivedMessage) -> None:
        """Its delete is queued: keep it invisible until ``untrack_handle`` says it landed."""
        held = self._held.get(message.receipt_handle)
        if held is not None and not held.deleting:
            held.deleting = True
            self._handling -= 1
            if not self._handling:
                self._wake.set()  # ``run`` may be done

    def untrack(self, message: ReceivedMessage) -> None:
        self.untrack_handle(message.receipt_handle)

    def release(self, message: ReceivedMessage) -> None:
        """The processing of ``message`` is over: untrack it unless its delete is pending."""
        held = self._held.get(message.receipt_handle)
        if held is not None and not held.deleting:
            self.untrack_handle(message.receipt_handle)

    def untrack_handle(self, receipt_handle: str) -> None:
        held = self._held.pop(receipt_handle, None)
        if held is not None and not held.deleting:
            self._handling -= 1
        if not self._handling:
            self._wake.set()  # nothing left: ``run`` may be done

    def wake(self) -> None:
        """Have ``run`` look at its ``done`` condition again (the queue stops)."""
        self._wake.set()

    async def run(self, done: Callable[[], bool]) -> None:
        """Extend what falls due, until ``done()`` and no handling holds a message."""
        async with anyio.create_task_group() as calls:
            while self._handling or not done():
                now = anyio.current_time()
                first = next(iter(self._held.values()), None)
                if first is None or first.due > now:
                    self._wake = anyio.Event()
                    with anyio.move_on_after(first.due - now if first else 1.0):
                        await self._wake.wait()
                    continue
                await self._extend_due(now, calls)
            # What is left waits for its delete, which the deleter's flush bounds.
            calls.cancel_scope.cancel()

    async def _extend_due(self, now: float, calls: TaskGroup) -> None:
        # Take what falls due within a little while too: fewer, fuller batches.
        horizon = now + min(1.0, self.visibility_s / 10)
        due: list[tuple[ReceivedMessage, int]] = []
        for handle, held in list(self._held.items()):
            if held.due > horizon:
                break
            del self._held[handle]
            left_s = MAX_VISIBILITY_S - _VISIBILITY_MARGIN_S - (now - held.tracked_at)
            extend_s = min(self.visibility_s, int(left_s))
            if extend_s <= 0:
                log.warning(
                    "message %s on %s reached the 12 h visibility limit; it will be redelivered",
                    held.message.message_id,
                    self._runtime.name,
                )
                if not held.deleting:
                    self._handling -= 1
                continue
            # Due again a third of a visibility after this call is sent, answered or not.
            held.due = now + self.visibility_s * _EXTEND_EVERY
            self._held[handle] = held  # to the end: due last
            due.append((held.message, extend_s))
        for start in range(0, len(due), _MAX_BATCH):
            # Bounded: a round waits here only when every call slot is taken.
            await self._calls.acquire()
            calls.start_soon(self._extend, due[start : start + _MAX_BATCH])

    async def _extend(self, batch: list[tuple[ReceivedMessage, int]]) -> None:
        try:
            # A call unanswered for a whole visibility has been overtaken by the next
            # round long since: give its slot to another.
            with anyio.move_on_after(max(1.0, self.visibility_s)):
                await self._send(batch)
        finally:
            self._calls.release()

    async def _send(self, batch: list[tuple[ReceivedMessage, int]]) -> None:
        url = self._runtime.url
        self.calls += 1
        try:
            if len(batch) == 1:
                [(message, extend_s)] = batch
                try:
                    await self._sqs.change_message_visibility(
                        QueueUrl=url,
                        ReceiptHandle=message.receipt_handle,
                        VisibilityTimeout=extend_s,
                    )
                except Exception as exc:  # a message settled meanwhile, read just below
                    if error_code(exc) in _GONE_CODES:
                        self._failed(message, error_code(exc))
                        return
                    raise
                self.extended += 1
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
        failed = response.get("Failed", [])
        self.extended += len(batch) - len(failed)
        for entry in failed:
            self._failed(batch[int(entry.get("Id", 0))][0], str(entry.get("Code")))

    def _failed(self, message: ReceivedMessage, code: str | None) -> None:
        held = self._held.get(message.receipt_handle)
        if code in _GONE_CODES and (held is None or held.deleting):
            # Settled meanwhile: its delete landed (or is landing) before the extension.
            log.debug(
                "extension of message %s on %s after it was settled (%s)",
                message.message_id,
                self._runtime.name,
                code,
            )
            return
        log.warning(
            "ChangeMessageVisibility (extend) failed for message %s on %s (%s)",
            message.message_id,
            self._runtime.name,
            code,
        )
