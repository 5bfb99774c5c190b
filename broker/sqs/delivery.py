"""What can be done to one received SQS message: every arrow of the outcome table's last
column, so that ``sqs.processor`` decides and this module acts.

``SqsQueue`` is one consumed queue's live side: its settings as resolved at start-up
(the frozen ``QueueRuntime``), the SQS client and the queue's ``DeleteBatcher``.  It
wraps each received message in a ``Delivery``:

- ``delete()``: once the outcome is durable in Step Functions (batched);
- ``hide(delay_s)``: ChangeMessageVisibility, the retry backoff;
- ``hand_back()``: visible again now, for another consumer;
- ``park()``: hidden as long as retries back off at most, for the queue's redrive policy;
- ``dead_letter(reason, detail)``: a copy in the queue's DLQ saying why (``sqs.deadletter``);
- ``queue.keeper``: keeps the message invisible while this process holds it
  (``sqs.visibility``): the processor tracks it at once; ``delete`` keeps it tracked
  until the deleter confirms, ``hide`` / ``hand_back`` / ``park`` let go of it first.

None of them raises for an AWS error: each is logged, and the worst case is a
redelivery, never a lost task.
"""

from __future__ import annotations

import logging
import random
from typing import Final

import anyio

from broker.aws.errors import ErrorKind, classify, error_name
from broker.aws.protocols import SqsApi
from broker.observability.events import current_token
from broker.observability.redact import redact_token
from broker.sqs.deadletter import dead_letter_copy, is_redriven
from broker.sqs.deleter import DeleteBatcher
from broker.sqs.message import QueueRuntime, ReceivedMessage
from broker.sqs.visibility import MAX_VISIBILITY_S, VisibilityKeeper

__all__ = ["Delivery", "SqsQueue"]

log = logging.getLogger("broker.delivery")

#: Tries of one dead-letter copy on throttling/5xx/network errors (on top of botocore's).
_DLQ_ATTEMPTS: Final = 4
_DLQ_BACKOFF_S: Final = 0.1


class SqsQueue:
    """A consumed queue and the live things that act on it."""

    def __init__(
        self, runtime: QueueRuntime, sqs: SqsApi, deleter: DeleteBatcher, *, park_s: int
    ) -> None:
        self.runtime = runtime
        self.sqs = sqs
        self.deleter = deleter
        #: How long ``Delivery.park`` hides a message (the longest retry delay).
        self.park_s = park_s
        #: Keeps the messages this process holds invisible (one timer for the queue).
        self.keeper = VisibilityKeeper(runtime, sqs)
        # A delete that keeps failing keeps its message invisible until it lands.
        deleter.on_done = self.keeper.untrack_handle

    @property
    def name(self) -> str:
        return self.runtime.name

    def delivery(self, message: ReceivedMessage) -> Delivery:
        return Delivery(self, message)


class Delivery:
    """One received message of one queue, and what the outcome table may do to it."""

    __slots__ = ("deleted", "message", "queue")

    def __init__(self, queue: SqsQueue, message: ReceivedMessage) -> None:
        self.queue = queue
        self.message = message
        #: ``delete`` was called: the message's work is done.
        self.deleted = False

    @property
    def has_dead_letter_queue(self) -> bool:
        return self.queue.runtime.dead_letter_url is not None

    @property
    def redriven(self) -> bool:
        """A copy ``broker redrive`` sent back from a dead-letter queue."""
        return is_redriven(self.message)

    async def delete(self) -> None:
        """Queue the delete (batched): only once the outcome is durable.  The message
        stays invisible until SQS confirms it."""
        self.deleted = True
        self.queue.keeper.deleting(self.message)
        await self.queue.deleter.delete(self.message.receipt_handle)

    async def hide(self, delay_s: int) -> None:
        """Make the message visible again in ``delay_s`` seconds (0..43,200)."""
        await self._change_visibility(max(0, min(delay_s, MAX_VISIBILITY_S)), "hide")

    async def hand_back(self) -> None:
        """Make the message visible again now, for whichever consumer polls next."""
        await self._change_visibility(0, "hand back")

    async def park(self) -> None:
        """Hide the message as long as a retry waits at most: with no copy of ours, the
        queue's own redrive policy moves it after maxReceiveCount receives."""
        await self.hide(self.queue.park_s)

    async def dead_letter(self, reason: str, detail: str, token: str | None = None) -> bool:
        """Copy the message to the queue's DLQ with why; False if there is none, the copy
        failed, or it cannot say why within SQS's size limit (then it is parked)."""
        dead_letter_url = self.queue.runtime.dead_letter_url
        if dead_letter_url is None:
            return False
        # The detail is often an exception's message, which may quote the token.
        detail = redact_token(detail, token or current_token() or "")
        copy = dead_letter_copy(self.message, self.queue.name, reason, detail)
        if not copy.fits:
            # The body alone nearly fills SQS's limit, so the copy cannot say why.  Never
            # truncate a body: hide the message instead and let the queue's redrive
            # policy move it as it is.
            log.error(
                "message %s (%s on %s) is too large to copy to the dead-letter queue with "
                "its reason; left to the queue's redrive policy",
                self.message.message_id,
                reason,
                self.queue.name,
            )
            await self.park()
            return False
        params = copy.send_params(dead_letter_url, self.message)
        attempt = 1
        while True:
            try:
                await self.queue.sqs.send_message(**params)
            except Exception as exc:  # noqa: BLE001 - the message stays; logged
                if attempt < _DLQ_ATTEMPTS and classify(exc) is ErrorKind.TRANSIENT:
                    await anyio.sleep(random.uniform(0, _DLQ_BACKOFF_S * 2**attempt))
                    attempt += 1
                    continue
                log.error(
                    "copy of message %s to the dead-letter queue failed (%s); kept for redelivery",
                    self.message.message_id,
                    error_name(exc),
                )
                return False
            else:
                return True

    async def _change_visibility(self, timeout_s: int, doing: str) -> None:
        # Let go first: the keeper must not override the new timeout.
        self.queue.keeper.untrack(self.message)
        try:
            await self.queue.sqs.change_message_visibility(
                QueueUrl=self.queue.runtime.url,
                ReceiptHandle=self.message.receipt_handle,
                VisibilityTimeout=timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - worst case: the queue's own timeout applies
            log.warning(
                "ChangeMessageVisibility (%s) failed for message %s on %s (%s)",
                doing,
                self.message.message_id,
                self.queue.name,
                error_name(exc),
            )
