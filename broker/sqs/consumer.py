"""The long-poll loops of one queue: reserve free slots, receive that many, start them.

A loop asks SQS only for as many messages as it has reserved handler slots, so the
process never holds a message it cannot start at once.  Slots come from two
``CapacityLimiter``s, the queue's and the broker-wide one; anyio serves waiters first
come first served, so a busy queue cannot starve a quiet one.

A queue has ``receivers`` such loops: one ReceiveMessage returns at most 10 messages, so
with 20 ms per call a single loop tops out near 400 messages/s whatever the concurrency.
A loop that finds no free slot waits for one, so extra loops cost nothing when busy.

At the stop (``stop``) no poll starts any more, but a ReceiveMessage in flight is not
cancelled by it: SQS may already have taken messages for it, and cancelling it would
hide them until their visibility timeout.  The broker cancels it (``poll``'s scope) only
when nothing else keeps the drain going, or at the grace deadline.  What such a poll
returns is not started: it is handed back (ChangeMessageVisibilityBatch to 0) for
another replica as soon as the queue's last open poll has returned.  Not before: a
message made visible while a sibling loop still polls would be received again by it,
and each receive counts against the message's attempts.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from anyio.abc import TaskGroup

from broker.aws.errors import error_name
from broker.core.slots import PollBackoff, Slot
from broker.observability.stats import Outcome, Stats
from broker.sqs.delivery import Delivery, SqsQueue
from broker.sqs.internal import InternalErrors
from broker.sqs.message import ReceivedMessage
from broker.sqs.processor import MessageProcessor

__all__ = ["QueueConsumer"]

log = logging.getLogger("broker.consumer")

MAX_RECEIVE: Final = 10
#: Consecutive ReceiveMessage failures after which the queue counts as unreachable.
_FAILING_AFTER: Final = 3
#: Default receive loops: one per this many of the queue's slots, at most the max.
_SLOTS_PER_AUTO_RECEIVER: Final = 16
_AUTO_RECEIVERS_MAX: Final = 4
_RELEASE_TIMEOUT_S: Final = 2.0


class QueueConsumer:
    def __init__(
        self,
        queue: SqsQueue,
        processor: MessageProcessor,
        *,
        total_slots: anyio.CapacityLimiter,
        stats: Stats,
        internal: InternalErrors | None = None,
    ) -> None:
        self.queue = queue
        #: Settles a message whose handling raised inside the broker (``sqs.internal``).
        self._internal = internal
        #: The queue as resolved at start-up (frozen).
        self.runtime = queue.runtime
        self._sqs = queue.sqs
        self._processor = processor
        self._total_slots = total_slots
        # A queue without a concurrency of its own is bounded by the broker-wide limiter
        # alone: a second limiter of the same size would bound nothing (two acquisitions
        # per message for no effect).
        own = self.runtime.settings.concurrency
        self._queue_slots: anyio.CapacityLimiter | None = (
            anyio.CapacityLimiter(own) if own is not None else None
        )
        self._slot_count = own if own is not None else int(total_slots.total_tokens)
        self._stats = stats
        self._processing = 0
        #: When each loop's ReceiveMessage in flight began (loop index → time).
        self._receiving_since: dict[int, float] = {}
        self._backoff = PollBackoff("ReceiveMessage", queue.name, log)
        self._stopping = False
        #: Messages received after the stop, handed back once every poll has returned.
        self._drained: list[ReceivedMessage] = []
        #: Each loop's cancel scope, which ``stop`` uses unless the loop is receiving.
        self._scopes: dict[int, anyio.CancelScope] = {}
        #: ReceiveMessage calls cut off in the drain, said once per queue at the end.
        self._cut_receives = 0
        #: Handlers cancelled by the end of the drain's grace period (the broker warns).
        self.cut_off = 0

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled (slots reserved for a poll excluded)."""
        return self._processing

    @property
    def free_slots(self) -> int:
        """Handler slots of this queue not running a handler (a pending poll's included)."""
        return self._slot_count - self._processing

    @property
    def receiving(self) -> int:
        """ReceiveMessage calls in flight."""
        return len(self._receiving_since)

    @property
    def failing(self) -> bool:
        """ReceiveMessage has failed several times in a row (readiness reports it)."""
        return self._backoff.failures >= _FAILING_AFTER

    @property
    def receivers(self) -> int:
        """ReceiveMessage loops of this queue (see ``QueueSettings.receivers``)."""
        if self.runtime.fifo:
            return 1  # one receive at a time keeps a FIFO queue's batches in group order
        if self.runtime.settings.receivers is not None:
            return self.runtime.settings.receivers
        return max(1, min(_AUTO_RECEIVERS_MAX, self._slot_count // _SLOTS_PER_AUTO_RECEIVER))

    def stuck_for_s(self) -> float | None:
        """How long a ReceiveMessage has gone unanswered past any sane bound, else None."""
        if not self._receiving_since:
            return None
        waited_s = anyio.current_time() - min(self._receiving_since.values())
        # The SDK's read timeout is the long poll + 10 s, tried up to 3 times.
        bound_s = 3 * (self.runtime.settings.wait_time_s + 10) + 10
        return waited_s if waited_s > bound_s else None

    def stop(self) -> None:
        """Start no more polls: loops waiting for a slot or backing off end now, and a
        ReceiveMessage in flight is left to return (then what it returns is handed back)."""
        self._stopping = True
        self.queue.keeper.wake()
        for index, scope in self._scopes.items():
            if index not in self._receiving_since:
                scope.cancel()

    async def poll(self, work: TaskGroup) -> None:
        """Run the queue's receive loops until ``stop`` (and their last receives returned)
        or cancelled; messages start as tasks in ``work``."""
        # The visibility timer lives in ``work``: it outlasts the polls, as the handlers do.
        work.start_soon(self.queue.keeper.run, lambda: self._stopping)
        try:
            async with anyio.create_task_group() as loops:
                for index in range(self.receivers):
                    loops.start_soon(self._poll_loop, index, work)
        finally:
            if self._cut_receives:
                # The broker cuts receives only once nothing else runs (they found
                # nothing in their whole wait so far) or at the grace deadline, which
                # it warns about itself: one line per queue, not one per loop.
                log.info(
                    "drain: %d of %d ReceiveMessage call(s) on %s cut off while waiting; a "
                    "message SQS handed out in that instant comes back after its "
                    "visibility timeout",
                    self._cut_receives,
                    self.receivers,
                    self.queue.name,
                )
                self._cut_receives = 0
            drained, self._drained = self._drained, []
            await self._hand_back(drained)

    async def _poll_loop(self, index: int, work: TaskGroup) -> None:
        with anyio.CancelScope() as self._scopes[index]:
            while not self._stopping:
                await self._poll_once(index, work)

    async def _poll_once(self, index: int, work: TaskGroup) -> None:
        slots = await self._reserve()
        if self._stopping:
            self._release(slots)
            return
        self._receiving_since[index] = anyio.current_time()
        try:
            messages = await self._receive(len(slots))
        except Exception as exc:  # noqa: BLE001 - a poll error must not stop the broker
            self._release(slots)
            del self._receiving_since[index]
            delay_s = self._backoff.failed(exc)
            if not self._stopping:
                await anyio.sleep(delay_s)
            return
        except BaseException:
            self._release(slots)
            del self._receiving_since[index]
            if self._stopping:
                self._cut_receives += 1  # said once for the queue, in ``poll``
            raise
        del self._receiving_since[index]
        self._backoff.succeeded()
        if self._stopping:
            # The broker stops: start nothing; ``poll`` hands these back for another
            # replica once no loop of this queue polls any more.
            self._drained += messages
            self._release(slots)
            return
        self._stats.received[self.queue.name] += len(messages)
        held = [
            (self.queue.delivery(message), slot)
            for message, slot in zip(messages, slots, strict=False)
        ]
        self._processing += len(held)
        self._release(slots[len(messages) :])
        if self.runtime.fifo:
            # SQS hands out a group's messages in order and holds back the rest of
            # the group while any is in flight; keeping that order is ours to do.
            for group in _by_group(held):
                work.start_soon(self._handle_in_order, group)
        else:
            for delivery, slot in held:
                work.start_soon(self._handle, delivery, slot)

    async def _hand_back(self, messages: list[ReceivedMessage]) -> None:
        """Make messages received during the drain visible again now (shielded, bounded)."""
        if not messages:
            return
        failed: list[str] = []
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S) as scope:
            for start in range(0, len(messages), MAX_RECEIVE):
                batch = messages[start : start + MAX_RECEIVE]
                try:
                    response = await self._sqs.change_message_visibility_batch(
                        QueueUrl=self.runtime.url,
                        Entries=[
                            {
                                "Id": str(number),
                                "ReceiptHandle": message.receipt_handle,
                                "VisibilityTimeout": 0,
                            }
                            for number, message in enumerate(batch)
                        ],
                    )
                    failed += [str(entry.get("Code")) for entry in response.get("Failed", [])]
                except Exception as exc:  # noqa: BLE001 - they return when their visibility lapses
                    failed += [error_name(exc)] * len(batch)
        if scope.cancelled_caught:
            failed = ["timeout"] * len(messages)
        log.info(
            "drain: %d message(s) a poll returned after the stop handed back to %s%s",
            len(messages) - len(failed),
            self.queue.name,
            f"; {len(failed)} not ({', '.join(sorted(set(failed)))}): they come back after "
            "their visibility timeout"
            if failed
            else "",
        )

    async def _reserve(self) -> list[Slot]:
        queue_slots, total_slots = self._queue_slots, self._total_slots
        first = Slot()
        if queue_slots is not None:
            await queue_slots.acquire_on_behalf_of(first)
        try:
            await total_slots.acquire_on_behalf_of(first)
        except BaseException:
            if queue_slots is not None:
                queue_slots.release_on_behalf_of(first)
            raise
        slots = [first]
        # Top up without waiting: a long poll for 1 message when 10 slots are free
        # would leave throughput on the table.
        while len(slots) < MAX_RECEIVE:
            slot = Slot()
            try:
                if queue_slots is not None:
                    queue_slots.acquire_on_behalf_of_nowait(slot)
            except anyio.WouldBlock:
                break
            try:
                total_slots.acquire_on_behalf_of_nowait(slot)
            except anyio.WouldBlock:
                if queue_slots is not None:
                    queue_slots.release_on_behalf_of(slot)
                break
            slots.append(slot)
        return slots

    def _release(self, slots: list[Slot]) -> None:
        for slot in slots:
            self._total_slots.release_on_behalf_of(slot)
            if self._queue_slots is not None:
                self._queue_slots.release_on_behalf_of(slot)

    async def _receive(self, count: int) -> list[ReceivedMessage]:
        params: dict[str, object] = {
            "QueueUrl": self.runtime.url,
            "MaxNumberOfMessages": count,
            "WaitTimeSeconds": self.runtime.settings.wait_time_s,
            "MessageAttributeNames": ["All"],
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "MessageGroupId"],
        }
        if self.runtime.settings.visibility_timeout_s is not None:
            params["VisibilityTimeout"] = self.runtime.settings.visibility_timeout_s
        response = await self._sqs.receive_message(**params)
        return [ReceivedMessage.from_sqs(raw) for raw in response.get("Messages", [])]

    async def _handle_in_order(self, group: list[tuple[Delivery, Slot]]) -> None:
        for index, (delivery, slot) in enumerate(group):
            rest = group[index + 1 :]
            try:
                outcome = await self._handle(delivery, slot)
            except BaseException:
                self._give_back(rest)
                raise
            if (outcome is None or not outcome.settled) and rest:
                # The message will come back: the ones after it must not overtake it.
                await self._return_to_queue(rest)
                return

    async def _return_to_queue(
        self, rest: list[tuple[Delivery, Slot]], *, release_slots: bool = True
    ) -> None:
        try:
            for delivery, _ in rest:
                await delivery.hand_back()
        finally:
            if release_slots:
                self._give_back(rest)

    def _give_back(self, unstarted: list[tuple[Delivery, Slot]]) -> None:
        self._processing -= len(unstarted)
        self._release([slot for _, slot in unstarted])

    async def _handle(self, delivery: Delivery, slot: Slot) -> Outcome | None:
        try:
            return await self._processor.process(delivery)
        except anyio.get_cancelled_exc_class():
            # Cut off by the drain's grace period: hand the message back now rather
            # than after its visibility timeout.  Shielded, bounded, then re-raised.
            self.cut_off += 1
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S):
                await delivery.hand_back()
            raise
        except Exception as exc:  # noqa: BLE001 - settled in ``_internal_error``
            # Raised inside the broker (a bug, or a model's validator raising KeyError):
            # the message still counts its attempts and ends like an exhausted one.
            return await self._internal_error(delivery, exc)
        finally:
            self._processing -= 1
            self._release([slot])

    async def _internal_error(self, delivery: Delivery, exc: Exception) -> Outcome | None:
        if self._internal is not None:
            try:
                return await self._internal.settle(delivery, exc)
            except Exception as settling:  # noqa: BLE001 - the last resort below
                exc = settling
        log.error(
            "internal error processing message %s on %s; it will be redelivered",
            delivery.message.message_id,
            self.queue.name,
            exc_info=exc,
        )
        return None


def _by_group(held: list[tuple[Delivery, Slot]]) -> list[list[tuple[Delivery, Slot]]]:
    """Split a FIFO receive into its message groups, each in receive order."""
    groups: dict[str | None, list[tuple[Delivery, Slot]]] = {}
    for delivery, slot in held:
        groups.setdefault(delivery.message.group_id, []).append((delivery, slot))
    return list(groups.values())
