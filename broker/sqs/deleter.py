"""Batched deletes: one per queue, up to 10 receipt handles per DeleteMessageBatch.

A message is handed here only once its outcome is durable in Step Functions.  A delete
that fails on throttling, 5xx or the network is tried again with backoff (at most
``_RETRY_MAX_S`` apart) for as long as the broker runs, while the queue's visibility
keeper keeps the message invisible: a completed task is not redelivered, so its handler
does not run again.  ``on_done`` tells the keeper when a handle is no longer held
(deleted, or refused for good).  Only at the close does a failing delete give up: the
message reappears after its visibility timeout, is known as settled for a while
(``sqs.memory``) or its completion is answered "task closed", and it is deleted then.
So a lost delete costs at most one redelivery, never a task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker.aws.errors import ErrorKind, classify, error_name
from broker.aws.protocols import SqsApi

__all__ = ["MAX_BATCH", "DeleteBatcher"]

log = logging.getLogger("broker.deleter")

MAX_BATCH: Final = 10
_CALL_ATTEMPTS: Final = 3
#: The longest wait between two tries of a delete that keeps failing.
_RETRY_MAX_S: Final = 5.0


class DeleteBatcher:
    """Collects receipt handles and flushes them by count (10) or after ``linger_s``."""

    def __init__(
        self,
        sqs: SqsApi,
        queue_url: str,
        *,
        linger_s: float = 0.05,
        flushes_in_flight: int = 8,
        buffer: int = 1000,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._linger_s = linger_s
        # A semaphore, not a CapacityLimiter: the flush task releases what run() acquired.
        self._flush_slots = anyio.Semaphore(flushes_in_flight)
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        self._send, self._receive = anyio.create_memory_object_stream[str](buffer)
        #: Called with each handle no longer ours to keep invisible.
        self.on_done = on_done
        self._closing = False
        self.deleted = 0
        self.failed = 0
        self.batches = 0
        #: Tries of a batch after its first failed (a persistent fault's figure).
        self.retries = 0

    async def delete(self, receipt_handle: str) -> None:
        """Queue one message for deletion (waits only when the buffer is full)."""
        await self._send.send(receipt_handle)

    async def close(self) -> None:
        """No more deletes: ``run`` flushes what is queued (one round of tries) and returns."""
        self._closing = True
        await self._send.aclose()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._receive, anyio.create_task_group() as flushes:
            task_status.started()
            while True:
                batch = await self._next_batch()
                if not batch:
                    break
                await self._flush_slots.acquire()
                flushes.start_soon(self._flush, batch)

    async def _next_batch(self) -> list[str]:
        try:
            batch = [await self._receive.receive()]
        except anyio.EndOfStream:
            return []
        with anyio.move_on_after(self._linger_s if self._linger_s > 0 else math.inf):
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except anyio.WouldBlock:
                    if self._linger_s <= 0:
                        break
                    try:
                        batch.append(await self._receive.receive())
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
        return batch

    async def _flush(self, batch: list[str]) -> None:
        try:
            rounds = 0
            while batch:
                batch = await self._try(batch)
                if not batch or self._closing:
                    break
                # Keep deleting: the keeper keeps these invisible meanwhile.
                rounds += 1
                self.retries += 1
                await anyio.sleep(min(_RETRY_MAX_S, 0.5 * 2 ** min(rounds, 8)))
            if batch:  # the close came while they were failing
                self.failed += len(batch)
                self._done(batch)
        finally:
            self._flush_slots.release()

    async def _try(self, batch: list[str]) -> list[str]:
        """One round of tries; the handles still to delete (transient failures)."""
        entries = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(batch)]
        for attempt in range(_CALL_ATTEMPTS):
            try:
                response = await self._sqs.delete_message_batch(
                    QueueUrl=self._queue_url, Entries=entries
                )
            except Exception as exc:  # noqa: BLE001 - classified just below
                transient = classify(exc) is ErrorKind.TRANSIENT
                if transient and attempt + 1 < _CALL_ATTEMPTS:
                    await anyio.sleep(0.1 * 2**attempt)
                    continue
                keep = transient and not self._closing
                if not keep:
                    self.failed += len(entries)
                log.warning(
                    "DeleteMessageBatch of %d failed on %s (%s); %s",
                    len(entries),
                    self._queue_url,
                    error_name(exc),
                    "kept invisible and tried again" if keep else "they will be redelivered",
                )
                if not keep:
                    self._done(batch)
                    return []
                return batch
            self.batches += 1
            failed = response.get("Failed", [])
            again: list[str] = []
            for entry in failed:
                handle = batch[int(entry.get("Id", 0))]
                if not entry.get("SenderFault", True) and not self._closing:
                    again.append(handle)  # SQS's own fault: try again
                    continue
                self.failed += 1
                # Typically ReceiptHandleIsInvalid: the message was redelivered meanwhile.
                log.warning(
                    "delete of one message on %s failed: %s %s",
                    self._queue_url,
                    entry.get("Code"),
                    entry.get("Message", ""),
                )
            self.deleted += len(entries) - len(failed)
            self._done([handle for handle in batch if handle not in again])
            return again
        return batch  # unreachable: the last attempt returns

    def _done(self, handles: list[str]) -> None:
        """Deleted or given up: either way no longer ours to keep invisible."""
        if self.on_done is not None:
            for handle in handles:
                self.on_done(handle)
