"""A message whose handling raised inside the broker: its attempts still count.

``sqs.processor`` decides every outcome it knows; an exception it does not expect (a
pydantic validator raising ``KeyError``, which pydantic passes through; an output whose
encoding raises ``RecursionError``; a bug of ours) escapes it, whatever part of the path
raised.  Such a message used to be left for redelivery, forever.  Here it is settled
like any undecided failure: hidden with the retry backoff while attempts are left
(``max_attempts`` of its route, else the broker's), and on the last one the task is
failed with ``Broker.InternalError``, the message copied to the dead-letter queue
(reason ``InternalError``) and deleted.  The outcome is said once, as every outcome is,
with the exception's traceback beside it (the token redacted).
"""

from __future__ import annotations

import logging
import random

from broker.core.errors import ErrorName
from broker.core.router import Router
from broker.core.step import Origin, Step
from broker.core.verdict import Failed
from broker.observability.events import note_detail, note_error, note_token, note_type
from broker.observability.stats import Outcome
from broker.sqs.delivery import Delivery
from broker.sqs.envelope import Envelope, parse_envelope
from broker.sqs.processor import ProcessingDefaults

__all__ = ["InternalErrors"]

log = logging.getLogger("broker.consumer")

#: The dead-letter copy's ``broker.reason``.
_REASON = "InternalError"


class InternalErrors:
    """Settles the messages whose handling raised inside the broker (see the module)."""

    def __init__(self, router: Router, step: Step, defaults: ProcessingDefaults) -> None:
        self._router = router
        self._step = step
        self._defaults = defaults

    async def settle(self, delivery: Delivery, exc: Exception) -> Outcome:
        message = delivery.message
        origin = Origin(
            delivery.queue.name, message.message_id, message.receive_count, message.attributes
        )
        # Held invisible while it is settled, as the processor holds every message.
        keeper = delivery.queue.keeper
        keeper.track(message)
        try:
            return await self._step.observed(origin, lambda: self._decide(delivery, exc))
        finally:
            keeper.release(message)

    async def _decide(self, delivery: Delivery, exc: Exception) -> Outcome:
        message = delivery.message
        parsed = parse_envelope(message.body, message.raw_attributes, delivery.queue.runtime.spec)
        token = parsed.token
        if token is not None:
            note_token(token)  # from here the log redacts it, the traceback's included
        route = None
        if isinstance(parsed, Envelope) and parsed.message_type:
            route = self._router.get(parsed.message_type)
        note_type(route.message_type if route is not None else "unknown")
        max_attempts = (
            route.options.max_attempts if route is not None else None
        ) or self._defaults.max_attempts
        name = type(exc).__name__
        cause = f"{name} raised inside the broker while handling the message: {exc or repr(exc)}"
        note_error(ErrorName.INTERNAL_ERROR)
        log.error(
            "internal error handling message %s on %s (attempt %d/%d)",
            message.message_id,
            delivery.queue.name,
            message.receive_count,
            max_attempts,
            exc_info=exc,
        )
        if message.receive_count < max_attempts:
            delay_s = self._retry_delay_s(message.receive_count)
            note_detail(
                f"{name} inside the broker; attempt {message.receive_count}/{max_attempts}; "
                f"retry in {delay_s}s"
            )
            await delivery.hide(delay_s)
            return Outcome.RETRY
        note_detail(f"{name} inside the broker; failed for good after {max_attempts} attempt(s)")
        if token is None:
            # Nothing to fail: the copy is what is left of it.
            if await delivery.dead_letter(_REASON, cause) or not delivery.has_dead_letter_queue:
                await delivery.delete()
            return Outcome.EXHAUSTED
        completion = await self._step.complete(
            token, Failed(ErrorName.INTERNAL_ERROR, cause, Outcome.EXHAUSTED)
        )
        if not completion.settled:
            note_detail("not confirmed by Step Functions: kept for redelivery")
            return completion.outcome
        if delivery.has_dead_letter_queue and not await delivery.dead_letter(
            _REASON, f"{ErrorName.INTERNAL_ERROR}: {cause}", token
        ):
            return Outcome.EXHAUSTED  # kept: its next delivery makes the copy
        await delivery.delete()
        return completion.outcome

    def _retry_delay_s(self, receive_count: int) -> int:
        # The processor's backoff (equal jitter), from the same defaults.
        ceiling = min(
            self._defaults.retry_max_delay_s,
            self._defaults.retry_base_delay_s * 2 ** max(0, receive_count - 1),
        )
        return round(random.uniform(ceiling / 2, ceiling))
