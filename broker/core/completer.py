"""Sending task outcomes to Step Functions: many calls in flight, bounded and rate-limited.

Step Functions has no batch API.  "Batching" completions means keeping many
SendTaskSuccess / SendTaskFailure calls in flight under one concurrency cap and one
client-side rate limit, retrying throttling, 5xx and network errors with jittered
backoff.  Each API's rate adapts to throttling (``broker.core.ratelimit.AdaptiveRate``),
so the replicas of a fleet share Step Functions' quota without a storm of retries.  The
caller learns exactly one of four answers and decides what to do with the SQS message;
nothing here touches SQS.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import anyio

from broker.aws.errors import (
    HEARTBEAT_CLOSED_CODES,
    ErrorKind,
    classify,
    error_code,
    error_name,
    is_throttle,
)
from broker.aws.protocols import SfnApi
from broker.core.ratelimit import AdaptiveRate, AdaptiveRates, TokenBucket
from broker.observability.events import note_error
from broker.observability.redact import redact_token, token_ref
from broker.sqs.message import without_surrogates

__all__ = [
    "COMPLETION_APIS",
    "MAX_CAUSE_CHARS",
    "MAX_ERROR_CHARS",
    "Completer",
    "Confirmation",
    "truncate",
]

log = logging.getLogger("broker.completer")

MAX_ERROR_CHARS: Final = 256
MAX_CAUSE_CHARS: Final = 32_768
#: The calls this module makes, each its own token bucket in Step Functions.
COMPLETION_APIS: Final = ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")


class Confirmation(Enum):
    """What Step Functions said, from the point of view of the SQS message."""

    #: The outcome is durable in Step Functions: delete the message.
    CONFIRMED = "confirmed"
    #: The task was already closed (or never existed): delete the message.
    TASK_CLOSED = "task_closed"
    #: Step Functions refused the output as invalid: fail the task instead.
    INVALID_OUTPUT = "invalid_output"
    #: Retries ran out or the call was refused: keep the message, let it come back.
    UNCONFIRMED = "unconfirmed"
    #: A heartbeat answered InvalidToken: not proof that the task is closed (see
    #: ``Completer.heartbeat``), so the work goes on and its completion decides.
    HEARTBEAT_REFUSED = "heartbeat_refused"

    @property
    def settled(self) -> bool:
        return self in (Confirmation.CONFIRMED, Confirmation.TASK_CLOSED)


@dataclass(frozen=True, slots=True)
class _Backoff:
    base_s: float = 0.1
    max_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        # Full jitter: spreads retries of a throttled burst instead of re-synchronising it.
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    marker = "…[truncated]"
    return text[: limit - len(marker)] + marker


class Completer:
    """The one component that calls SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat."""

    def __init__(
        self,
        sfn: SfnApi,
        *,
        concurrency: int,
        rate_per_s: float | None = None,
        burst: int | None = None,
        max_attempts: int = 6,
        backoff: _Backoff | None = None,
        rates: AdaptiveRates | None = None,
    ) -> None:
        self._sfn = sfn
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._bucket = TokenBucket(rate_per_s, burst) if rate_per_s else None
        #: Per API; None for an API that does not adapt (``rates`` off or absent).
        self._rates: dict[str, AdaptiveRate | None] = {
            api: None if rates is None else rates.get(api) for api in COMPLETION_APIS
        }
        self._max_attempts = max_attempts
        self._backoff = backoff or _Backoff()

    @property
    def in_flight(self) -> int:
        return int(self._limiter.borrowed_tokens)

    async def succeed(self, token: str, output: str) -> Confirmation:
        """SendTaskSuccess.  ``output`` must already be checked JSON within the size limit."""
        return await self._call(
            "SendTaskSuccess", self._sfn.send_task_success, token, taskToken=token, output=output
        )

    async def fail(self, token: str, error: str, cause: str) -> Confirmation:
        """SendTaskFailure, with ``error`` and ``cause`` cut to what the API accepts."""
        note_error(error)
        return await self._call(
            "SendTaskFailure",
            self._sfn.send_task_failure,
            token,
            taskToken=token,
            # A lone surrogate cannot be sent at all (UTF-8): it would leave the task open.
            error=truncate(without_surrogates(error), MAX_ERROR_CHARS),
            # A handler may quote its own token in a message: never send it on.
            cause=truncate(without_surrogates(redact_token(cause, token)), MAX_CAUSE_CHARS),
        )

    async def heartbeat(self, token: str) -> Confirmation:
        """SendTaskHeartbeat.  Only ``TaskTimedOut`` / ``TaskDoesNotExist`` mean closed.

        AWS answers a heartbeat for a closed task with ``TaskTimedOut``.  ``InvalidToken``
        comes from the emulators for a state without ``HeartbeatSeconds`` (and, for a
        moment, right after the message lands): cancelling the work on it would leave
        the workflow waiting for a task nobody runs any more.
        """
        return await self._call(
            "SendTaskHeartbeat",
            self._sfn.send_task_heartbeat,
            token,
            closed_codes=HEARTBEAT_CLOSED_CODES,
            taskToken=token,
        )

    async def _call(
        self,
        api: str,
        method: Callable[..., Awaitable[Mapping[str, Any]]],
        token: str,
        closed_codes: frozenset[str] | None = None,
        **params: Any,
    ) -> Confirmation:
        failure: Exception | None = None
        limiter = self._limiter
        rate = self._rates[api]
        epoch = 0
        for attempt in range(self._max_attempts):
            try:
                # A free slot is taken without a checkpoint (the call awaits anyway).
                limiter.acquire_nowait()
            except anyio.WouldBlock:
                await limiter.acquire()
            try:
                if self._bucket is not None:
                    await self._bucket.acquire()
                if rate is not None:
                    # The common case, never throttled: a counter, no await.
                    sent_in = rate.try_acquire()
                    epoch = await rate.acquire() if sent_in is None else sent_in
                await method(**params)
            except Exception as exc:  # noqa: BLE001 - classified just below
                failure = exc
            else:
                return Confirmation.CONFIRMED
            finally:
                limiter.release()
            if rate is not None and is_throttle(error_name(failure)):
                rate.throttled(epoch)
            kind = classify(failure)
            if (
                kind is ErrorKind.TASK_CLOSED
                and closed_codes is not None
                and error_code(failure) not in closed_codes
            ):
                return Confirmation.HEARTBEAT_REFUSED
            if kind is ErrorKind.TASK_CLOSED:
                log.info(
                    "%s: task already closed (%s) %s", api, error_code(failure), token_ref(token)
                )
                return Confirmation.TASK_CLOSED
            if kind is ErrorKind.INVALID_OUTPUT:
                return Confirmation.INVALID_OUTPUT
            if kind is ErrorKind.PERMANENT:
                log.error("%s refused for %s: %s", api, token_ref(token), _describe(failure))
                return Confirmation.UNCONFIRMED
            if attempt + 1 < self._max_attempts:
                delay_s = self._backoff.delay_s(attempt)
                log.debug(
                    "%s transient failure for %s (%s), retry in %.2fs",
                    api,
                    token_ref(token),
                    _describe(failure),
                    delay_s,
                )
                await anyio.sleep(delay_s)
        log.warning(
            "%s not confirmed after %d attempts for %s (%s); the message will come back",
            api,
            self._max_attempts,
            token_ref(token),
            _describe(failure),
        )
        return Confirmation.UNCONFIRMED


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    code = error_code(exc)
    # Error messages from Step Functions can quote the token: show the code only.
    return code if code else type(exc).__name__
