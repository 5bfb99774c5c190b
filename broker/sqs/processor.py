"""One SQS message, one outcome: the design brief's outcome table, decided here only.

``MessageProcessor.process`` parses the envelope, hands the routed task to the shared
``core.step.Step`` (validate, run, complete) and then does one thing to the message
through its ``Delivery`` (``sqs.delivery``)::

    what happened                          Step Functions            the message
    body unreadable, no token              -                         dead_letter + delete
                                                                     (no DLQ: park)
    body unreadable, token known           fail InvalidInput         delete once settled
    same token in flight                   - (the first copy's)      delete / hide
    no handler for the type                fail UnknownMessageType   dead_letter + delete
    Succeeded / Failed                     succeed / fail            delete once settled
    Retry, attempts left                   -                         hide(backoff)
    Retry, last attempt (or NonRetryable)  fail                      dead_letter + delete
    Closed (the workflow gave up)          -                         delete
    Deferred (handed to a person)          - (the task stays open)   delete
    Busy (idempotent: claimed elsewhere,   -                         hide(backoff, at most
      or the table failed)                                           the claim's lease)

"Once settled": only after Step Functions confirmed the outcome, or said the task is
closed; otherwise the message is kept and comes back when its visibility lapses.

The message is held invisible by the queue's ``VisibilityKeeper`` from the start of
``process`` until its delete lands or it is hidden / handed back: while it waits behind
a copy in flight, while its handler runs and while its completion is sent.  A copy of a
token settled here a moment ago is deleted as a duplicate, and a copy of a token whose
verdict Step Functions did not confirm sends that verdict again without running the
handler (``sqs.memory``).

Cancellation is never swallowed.  What happened is said once, in the outcome event
(``note_error`` / ``note_detail`` feed it): no line of its own here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import assert_never

import anyio

from broker.core.completer import Confirmation
from broker.core.errors import ErrorName
from broker.core.router import Route, Router
from broker.core.step import Completion, Origin, Step
from broker.core.verdict import Busy, Closed, Deferred, Failed, Retry, Succeeded, Verdict
from broker.observability.events import note_detail, note_error, note_token, note_type
from broker.observability.redact import loggable
from broker.observability.stats import Outcome
from broker.sqs.delivery import Delivery
from broker.sqs.envelope import Envelope, Poison, parse_envelope
from broker.sqs.memory import TokenMemory

__all__ = ["MessageProcessor", "ProcessingDefaults"]


@dataclass(frozen=True, slots=True)
class ProcessingDefaults:
    """The broker-wide defaults a route's ``HandlerOptions`` can override."""

    max_attempts: int = 5
    retry_base_delay_s: float = 2.0
    retry_max_delay_s: float = 300.0


@dataclass(slots=True)
class _InFlight:
    """The first message of a token being processed; duplicates wait on ``done``."""

    done: anyio.Event
    settled: bool = False


class MessageProcessor:
    def __init__(
        self,
        router: Router,
        step: Step,
        defaults: ProcessingDefaults,
        memory: TokenMemory | None = None,
    ) -> None:
        self._router = router
        self._step = step
        self._defaults = defaults
        self._in_flight: dict[str, _InFlight] = {}
        #: Tokens settled here lately, and verdicts not confirmed yet.
        self.memory = memory if memory is not None else TokenMemory()

    async def process(self, delivery: Delivery) -> Outcome:
        message = delivery.message
        origin = Origin(
            delivery.queue.name, message.message_id, message.receive_count, message.attributes
        )
        return await self._step.observed(origin, lambda: self._decide(delivery, origin))

    async def _decide(self, delivery: Delivery, origin: Origin) -> Outcome:
        # Held invisible from now on, whatever it waits for (see the module's doc).
        keeper = delivery.queue.keeper
        keeper.track(delivery.message)
        try:
            return await self._decide_held(delivery, origin)
        finally:
            keeper.release(delivery.message)

    async def _decide_held(self, delivery: Delivery, origin: Origin) -> Outcome:
        message = delivery.message
        parsed = parse_envelope(message.body, message.raw_attributes, delivery.queue.runtime.spec)
        if isinstance(parsed, Poison) and parsed.token is not None:
            # Read no further (nested too deep), but the token is known: fail the task
            # now rather than leave the workflow waiting for its timeout.
            note_token(parsed.token)
            invalid = Failed(ErrorName.INVALID_INPUT, parsed.detail, Outcome.INVALID_INPUT)
            return await self._settled(delivery, parsed.token, invalid)
        if isinstance(parsed, Poison):
            return await self._poison(delivery, parsed)

        note_token(parsed.token)
        first = self._in_flight.get(parsed.token)
        if first is not None:
            self._note_copy_type(parsed)
            return await self._duplicate(delivery, first)
        if self.memory.is_settled(parsed.token):
            # Received again as (or just after) it was settled: its delete raced this
            # receive, or failed.  Nothing more to do for the task.
            self._note_copy_type(parsed)
            note_detail("a copy of a task settled here moments ago")
            await delivery.delete()
            return Outcome.DUPLICATE
        entry = self._in_flight[parsed.token] = _InFlight(anyio.Event())
        try:
            outcome = await self._decide_for_token(delivery, origin, parsed)
            entry.settled = outcome.settled
            if outcome.settled and delivery.deleted:
                self.memory.settled(parsed.token)
            return outcome
        finally:
            del self._in_flight[parsed.token]
            entry.done.set()

    def _note_copy_type(self, envelope: Envelope) -> None:
        """A duplicate's outcome line and metric name its type, as the first copy's do."""
        route = self._router.get(envelope.message_type) if envelope.message_type else None
        note_type(
            route.message_type if route else "unknown",
            asked=None if route else envelope.message_type,
        )

    async def _duplicate(self, delivery: Delivery, first: _InFlight) -> Outcome:
        """A second copy of a task in flight: never run the handler twice at once.  The
        copy is held invisible while it waits (``_decide``), so it is not received again."""
        await first.done.wait()
        if first.settled:
            await delivery.delete()
            return Outcome.DUPLICATE
        # The first copy will come back; this one too, in case the first is lost.
        await delivery.hide(self._retry_delay_s(delivery.message.receive_count))
        return Outcome.RETRY

    async def _decide_for_token(
        self, delivery: Delivery, origin: Origin, envelope: Envelope
    ) -> Outcome:
        route = self._router.get(envelope.message_type) if envelope.message_type else None
        if route is None:
            note_type("unknown", asked=envelope.message_type or None)
            return await self._unknown_type(delivery, envelope)
        note_type(route.message_type)
        known = self.memory.verdict(envelope.token)
        if known is not None:
            # Decided by an earlier delivery, not confirmed then: send it again rather
            # than repeat the handler's side effects.
            note_detail("verdict decided by an earlier delivery sent again; handler not run")
            return await self._settled(delivery, envelope.token, known)
        verdict = await self._step.run(
            route, envelope.token, envelope.payload, origin=origin, body=envelope.body
        )
        return await self._settle(delivery, route, envelope.token, verdict)

    async def _settle(
        self, delivery: Delivery, route: Route, token: str, verdict: Verdict
    ) -> Outcome:
        match verdict:
            case Succeeded() | Failed():
                return await self._settled(delivery, token, verdict)
            case Retry():
                return await self._retry_or_exhaust(delivery, route, token, verdict)
            case Closed():
                note_detail("handler cancelled: the workflow closed the task")
                await delivery.delete()
                return Outcome.TASK_CLOSED
            case Deferred():
                # The task waits in Step Functions for a decision link (or its timeout);
                # the message has done its work.
                if verdict.reason:
                    note_detail(loggable(verdict.reason))
                await delivery.delete()
                return Outcome.DEFERRED
            case Busy():
                return await self._busy(delivery, verdict)
            case _:
                assert_never(verdict)

    async def _busy(self, delivery: Delivery, busy: Busy) -> Outcome:
        """Another replica runs this task (or the idempotency table failed): come back,
        as an in-process duplicate does, without counting an attempt."""
        delay_s = self._retry_delay_s(delivery.message.receive_count)
        if busy.left_s is not None:
            # Back by the time the other run's lease lapses, if the backoff is longer.
            delay_s = min(delay_s, math.ceil(busy.left_s) + 1)
        # Never at once: a zero backoff (tests) would spin on the other run's claim.
        delay_s = max(delay_s, 1)
        if busy.error is not None:
            note_error(busy.error)
        await delivery.hide(delay_s)
        return Outcome.RETRY

    async def _settled(
        self, delivery: Delivery, token: str, verdict: Succeeded | Failed
    ) -> Outcome:
        """Complete the task; delete the message once Step Functions has the outcome."""
        completion = await self._step.complete(token, verdict)
        if completion.confirmation is Confirmation.UNCONFIRMED:
            self.memory.unconfirmed(token, verdict)
        return await self._delete_if_settled(delivery, token, completion)

    async def _delete_if_settled(
        self, delivery: Delivery, token: str, completion: Completion
    ) -> Outcome:
        if completion.settled:
            await delivery.delete()
        else:
            # Not confirmed: keep the message; it comes back when its visibility lapses.
            note_detail("not confirmed by Step Functions: kept for redelivery")
        return completion.outcome

    async def _retry_or_exhaust(
        self, delivery: Delivery, route: Route, token: str, retry: Retry
    ) -> Outcome:
        message = delivery.message
        max_attempts = route.options.max_attempts or self._defaults.max_attempts
        if retry.retryable and message.receive_count < max_attempts:
            note_error(retry.error)
            delay_s = (
                round(retry.delay_s)
                if retry.delay_s is not None
                else self._retry_delay_s(message.receive_count)
            )
            note_detail(f"attempt {message.receive_count}/{max_attempts}; retry in {delay_s}s")
            await delivery.hide(delay_s)
            return Outcome.RETRY
        note_detail(f"failed for good after {message.receive_count} attempt(s)")
        completion = await self._step.complete(token, retry.exhausted())
        if completion.confirmation is Confirmation.TASK_CLOSED and delivery.redriven:
            return await self._drop_redriven(delivery, token)
        if completion.settled and delivery.has_dead_letter_queue:
            detail = f"{retry.error}: {retry.cause}"
            if not await delivery.dead_letter("AttemptsExhausted", detail, token):
                # The task is failed, but the copy is what an operator re-drives: keep
                # the message, so that its next delivery makes the copy.
                return Outcome.EXHAUSTED
        return await self._delete_if_settled(delivery, token, completion)

    def _retry_delay_s(self, receive_count: int) -> int:
        ceiling = min(
            self._defaults.retry_max_delay_s,
            self._defaults.retry_base_delay_s * 2 ** max(0, receive_count - 1),
        )
        # Equal jitter: never less than half the backoff, so retries still back off.
        return round(random.uniform(ceiling / 2, ceiling))

    async def _unknown_type(self, delivery: Delivery, envelope: Envelope) -> Outcome:
        known = ", ".join(sorted(self._router.routes)) or "none"
        named = repr(envelope.message_type) if envelope.message_type else "no type"
        cause = f"message on queue {delivery.queue.name} has {named}; registered types: {known}"
        note_detail(f"registered types: {loggable(known)}")
        unknown = Failed(ErrorName.UNKNOWN_MESSAGE_TYPE, cause, Outcome.UNKNOWN_TYPE)
        completion = await self._step.complete(envelope.token, unknown)
        if not completion.settled:
            return Outcome.UNCONFIRMED
        if completion.confirmation is Confirmation.TASK_CLOSED and delivery.redriven:
            return await self._drop_redriven(delivery, envelope.token)
        copied = await delivery.dead_letter("UnknownMessageType", cause, envelope.token)
        if copied or not delivery.has_dead_letter_queue:
            await delivery.delete()
        return Outcome.UNKNOWN_TYPE

    async def _drop_redriven(self, delivery: Delivery, token: str) -> Outcome:
        """A redriven copy of a task that is closed already: its DLQ copy was made the
        first time; copying it again would only feed the next redrive (docs/errors.md).
        """
        note_detail("redriven, but its task is closed already: dropped")
        await delivery.delete()
        return Outcome.TASK_CLOSED

    async def _poison(self, delivery: Delivery, poison: Poison) -> Outcome:
        note_error(poison.reason.value)
        note_detail(loggable(poison.detail))
        if await delivery.dead_letter(poison.reason.value, poison.detail):
            await delivery.delete()
        elif not delivery.has_dead_letter_queue:
            # No DLQ of ours: hide it as long as allowed and let the queue's redrive
            # policy move it after maxReceiveCount receives.
            await delivery.park()
        return Outcome.POISON
