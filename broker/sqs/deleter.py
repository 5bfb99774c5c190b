"""Batched deletes: one per queue, up to 10 receipt handles per DeleteMessageBatch.

A message is handed here only once its outcome is durable in Step Functions.  A delete
that fails is logged, not retried forever: the message reappears after its visibility
timeout, its completion is answered "task closed", and it is deleted then.  So a lost
delete costs one redelivery, never a task.
"""

from __future__ import annotations

import logging
import math
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
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._linger_s = linger_s
        # A semaphore, not a CapacityLimiter: the flush task releases what run() acquired.
        self._flush_slots = anyio.Semaphore(flushes_in_flight)
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        self._send, self._receive = anyio.create_memory_object_stream[str](buffer)
        self.deleted = 0
        self.failed = 0
        self.batches = 0

    async def delete(self, receipt_handle: str) -> None:
        """Queue one message for deletion (waits only when the buffer is full)."""
        await self._send.send(receipt_handle)

    async def close(self) -> None:
        """No more deletes: ``run`` flushes what is queued and returns."""
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
            entries = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(batch)]
            for attempt in range(_CALL_ATTEMPTS):
                try:
                    response = await self._sqs.delete_message_batch(
                        QueueUrl=self._queue_url, Entries=entries
                    )
                except Exception as exc:  # noqa: BLE001 - classified just below
                    if classify(exc) is not ErrorKind.TRANSIENT or attempt + 1 == _CALL_ATTEMPTS:
                        self.failed += len(entries)
                        log.warning(
                            "DeleteMessageBatch of %d failed on %s (%s); they will be redelivered",
                            len(entries),
                            self._queue_url,
                            error_name(exc),
                        )
                        return
                    await anyio.sleep(0.1 * 2**attempt)
                    continue
                self.batches += 1
                failed = response.get("Failed", [])
                self.deleted += len(entries) - len(failed)
                self.failed += len(failed)
                for entry in failed:
                    # Typically ReceiptHandleIsInvalid: the message was redelivered meanwhile.
                    log.warning(
                        "delete of one message on %s failed: %s %s",
                        self._queue_url,
                        entry.get("Code"),
                        entry.get("Message", ""),
                    )
                return
        finally:
            self._flush_slots.release()
