"""One message, one outcome: the design brief's outcome table, decided in this module only.

``MessageProcessor.process`` parses the envelope, runs the handler, tells Step
Functions, and then — only once Step Functions confirmed — deletes the message.  Every
branch ends in exactly one ``Outcome``.  Cancellation is never swallowed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
from pydantic import ValidationError

from broker.aws.errors import ErrorKind, classify, error_code
from broker.aws.protocols import SqsApi
from broker.core.completer import Completer, Confirmation
from broker.core.errors import ErrorName, NonRetryable, RetryLater
from broker.core.handling import (
    MAX_OUTPUT_BYTES,
    encode_output,
    heartbeat_or_raise,
    invalid_input_cause,
    run_supervised,
    unexpected_failure,
)
from broker.core.handling import Failure as _Failure
from broker.core.handling import TimedOut as _TimedOut
from broker.core.handling import WorkflowGaveUp as _WorkflowGaveUp
from broker.core.router import Route, Router
from broker.core.task import Task
from broker.observability.events import (
    current_token,
    message_record,
    note_error,
    note_token,
    note_type,
    settled,
)
from broker.observability.redact import redact_token, token_ref
from broker.observability.stats import Outcome, Stats
from broker.observability.tracing import Tracer, annotate
from broker.sqs.envelope import Envelope, Poison, parse_envelope
from broker.sqs.message import (
    MAX_MESSAGE_BYTES,
    REDRIVEN_ATTRIBUTE,
    QueueRuntime,
    ReceivedMessage,
    message_size,
    without_surrogates,
)

__all__ = ["MAX_OUTPUT_BYTES", "MessageProcessor", "ProcessingDefaults", "encode_output"]

log = logging.getLogger("broker.processing")

_DLQ_ATTRIBUTE_LIMIT: Final = 10
#: Tries of one dead-letter copy on throttling/5xx/network errors (on top of botocore's).
_DLQ_ATTEMPTS: Final = 4
_DLQ_BACKOFF_S: Final = 0.1  # SQS allows at most 10 message attributes


@dataclass(frozen=True, slots=True)
class ProcessingDefaults:
    """The broker-wide defaults a route's ``HandlerOptions`` can override."""

    max_attempts: int = 5
    handler_timeout_s: float | None = 900.0
    retry_base_delay_s: float = 2.0
    retry_max_delay_s: float = 300.0


@dataclass(slots=True)
class _InFlight:
    """The first message of a token being processed; duplicates wait on ``done``."""

    done: anyio.Event
    settled: bool = False


#: Never extend a message's visibility past this long after its receive (SQS's limit).
_MAX_VISIBILITY_S: Final = 43_200
_VISIBILITY_MARGIN_S: Final = 5


class MessageProcessor:
    def __init__(
        self,
        router: Router,
        completer: Completer,
        sqs: SqsApi,
        stats: Stats,
        defaults: ProcessingDefaults,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or Tracer(None)
        self._router = router
        self._completer = completer
        self._sqs = sqs
        self._stats = stats
        self._defaults = defaults
        self._in_flight: dict[str, _InFlight] = {}

    async def process(self, queue: QueueRuntime, message: ReceivedMessage) -> Outcome:
        with (
            message_record(queue.name, message.message_id, message.receive_count) as record,
            self._tracer.message_span(queue.name, message.message_id, message.attributes) as span,
        ):
            outcome = await self._decide(queue, message)
            settled(record, outcome, self._stats)
            annotate(
                span,
                type=record.message_type,
                outcome=outcome.value,
                error=record.error,
                receive_count=message.receive_count,
            )
        return outcome

    async def _decide(self, queue: QueueRuntime, message: ReceivedMessage) -> Outcome:
        parsed = parse_envelope(message.body, message.attributes, queue.spec)
        if isinstance(parsed, Poison) and parsed.token is not None:
            # Read no further (nested too deep), but the token is known: fail the task
            # now rather than leave the workflow waiting for its timeout.
            note_token(parsed.token)
            return await self._fail(
                queue,
                message,
                parsed.token,
                ErrorName.INVALID_INPUT,
                parsed.detail,
                Outcome.INVALID_INPUT,
            )
        if isinstance(parsed, Poison):
            return await self._poison(queue, message, parsed)

        note_token(parsed.token)
        first = self._in_flight.get(parsed.token)
        if first is not None:
            return await self._duplicate(queue, message, parsed.token, first)
        entry = self._in_flight[parsed.token] = _InFlight(anyio.Event())
        try:
            outcome = await self._decide_for_token(queue, message, parsed)
            entry.settled = outcome.settled
            return outcome
        finally:
            del self._in_flight[parsed.token]
            entry.done.set()

    async def _duplicate(
        self, queue: QueueRuntime, message: ReceivedMessage, token: str, first: _InFlight
    ) -> Outcome:
        """A second copy of a task in flight: never run the handler twice at once."""
        await first.done.wait()
        if first.settled:
            await queue.deleter.delete(message.receipt_handle)
            return Outcome.DUPLICATE
        # The first copy will come back; this one too, in case the first is lost.
        await self._change_visibility(queue, message, self._retry_delay_s(message.receive_count))
        return Outcome.RETRY

    async def _decide_for_token(
        self, queue: QueueRuntime, message: ReceivedMessage, parsed: Envelope
    ) -> Outcome:
        route = self._router.get(parsed.message_type) if parsed.message_type else None
        if route is None:
            note_type("unknown")
            return await self._unknown_type(queue, message, parsed)
        note_type(route.message_type)

        payload: Any = parsed.payload
        if route.payload_adapter is not None:
            try:
                payload = route.payload_adapter.validate_python(parsed.payload)
            except ValidationError as exc:
                cause = invalid_input_cause(exc)
                return await self._fail(
                    queue,
                    message,
                    parsed.token,
                    ErrorName.INVALID_INPUT,
                    cause,
                    Outcome.INVALID_INPUT,
                )

        task: Task[Any] = Task(
            payload=payload,
            message_type=route.message_type,
            token=parsed.token,
            source=queue.name,
            message_id=message.message_id,
            receive_count=message.receive_count,
            attributes=message.attributes,
            body=parsed.body,
            _send_heartbeat=lambda: self._heartbeat(parsed.token),
        )
        started = anyio.current_time()
        with self._tracer.span(f"handler {route.message_type}"):
            result = await self._run_supervised(queue, message, route, task)
        self._stats.handler_seconds[route.message_type].observe(anyio.current_time() - started)
        return await self._settle(queue, message, route, parsed, result)

    async def _run_supervised(
        self, queue: QueueRuntime, message: ReceivedMessage, route: Route, task: Task[Any]
    ) -> Any:
        """Run the handler while keeping its message invisible and its task alive."""
        return await run_supervised(
            self._completer,
            route,
            task,
            self._defaults.handler_timeout_s,
            alongside=lambda: self._keep_invisible(queue, message),
        )

    async def _keep_invisible(self, queue: QueueRuntime, message: ReceivedMessage) -> None:
        """Extend the message's visibility at half-life, so a slow handler is not run twice."""
        visibility_s = queue.settings.visibility_timeout_s or queue.visibility_timeout_s
        if visibility_s <= 0:
            return
        started = anyio.current_time()
        while True:
            await anyio.sleep(visibility_s / 2)
            left_s = _MAX_VISIBILITY_S - _VISIBILITY_MARGIN_S - (anyio.current_time() - started)
            extend_s = min(visibility_s, int(left_s))
            if extend_s <= 0:
                log.warning(
                    "message %s on %s reached the 12 h visibility limit; it will be redelivered",
                    message.message_id,
                    queue.name,
                )
                return
            await self._change_visibility(queue, message, extend_s)

    async def _settle(
        self,
        queue: QueueRuntime,
        message: ReceivedMessage,
        route: Route,
        envelope: Envelope,
        result: Any,
    ) -> Outcome:
        token = envelope.token
        if isinstance(result, _WorkflowGaveUp):
            log.info(
                "handler %s cancelled: the workflow closed the task (message %s, %s)",
                route.message_type,
                message.message_id,
                token_ref(token),
            )
            await queue.deleter.delete(message.receipt_handle)
            return Outcome.TASK_CLOSED
        if isinstance(result, _Failure):
            return await self._fail(
                queue, message, token, result.error, result.cause, Outcome.FAILED
            )
        if isinstance(result, _TimedOut | Exception):
            return await self._retry_or_exhaust(queue, message, route, token, result)

        output = encode_output(result)
        if isinstance(output, _Failure):
            return await self._fail(
                queue, message, token, output.error, output.cause, Outcome.INVALID_OUTPUT
            )
        confirmation = await self._completer.succeed(token, output)
        if confirmation is Confirmation.INVALID_OUTPUT:
            return await self._fail(
                queue,
                message,
                token,
                ErrorName.INVALID_OUTPUT,
                "Step Functions refused the handler's output (InvalidOutput)",
                Outcome.INVALID_OUTPUT,
            )
        return await self._after_completion(queue, message, token, confirmation, Outcome.SUCCEEDED)

    async def _retry_or_exhaust(
        self,
        queue: QueueRuntime,
        message: ReceivedMessage,
        route: Route,
        token: str,
        result: _TimedOut | Exception,
    ) -> Outcome:
        failure = unexpected_failure(result)
        error, cause = failure.error, failure.cause
        max_attempts = route.options.max_attempts or self._defaults.max_attempts
        final = isinstance(result, NonRetryable) or message.receive_count >= max_attempts
        if isinstance(result, RetryLater):
            error, cause = ErrorName.RETRIES_EXHAUSTED, result.reason or "retries requested"
        if not final:
            note_error(error)
            delay_s = (
                round(result.delay_s)
                if isinstance(result, RetryLater)
                else self._retry_delay_s(message.receive_count)
            )
            log.warning(
                "handler %s raised %s on attempt %d/%d (message %s, %s); retry in %ds",
                route.message_type,
                error,
                message.receive_count,
                max_attempts,
                message.message_id,
                token_ref(token),
                delay_s,
            )
            await self._change_visibility(queue, message, delay_s)
            return Outcome.RETRY
        log.error(
            "handler %s failed for good with %s after %d attempt(s) (message %s, %s)",
            route.message_type,
            error,
            message.receive_count,
            message.message_id,
            token_ref(token),
        )
        confirmation = await self._completer.fail(token, error, cause)
        if confirmation is Confirmation.TASK_CLOSED and _redriven(message):
            return await self._drop_redriven(queue, message, token)
        if confirmation.settled and queue.dead_letter_url is not None:
            detail = f"{error}: {cause}"
            if not await self._dead_letter(queue, message, "AttemptsExhausted", detail, token):
                # The task is failed, but the copy is what an operator re-drives: keep
                # the message, so that its next delivery makes the copy.
                return Outcome.EXHAUSTED
        return await self._after_completion(queue, message, token, confirmation, Outcome.EXHAUSTED)

    def _retry_delay_s(self, receive_count: int) -> int:
        ceiling = min(
            self._defaults.retry_max_delay_s,
            self._defaults.retry_base_delay_s * 2 ** max(0, receive_count - 1),
        )
        # Equal jitter: never less than half the backoff, so retries still back off.
        return round(random.uniform(ceiling / 2, ceiling))

    async def _fail(
        self,
        queue: QueueRuntime,
        message: ReceivedMessage,
        token: str,
        error: str,
        cause: str,
        outcome: Outcome,
    ) -> Outcome:
        log.info(
            "task failed with %s (queue %s, message %s, %s)",
            error,
            queue.name,
            message.message_id,
            token_ref(token),
        )
        confirmation = await self._completer.fail(token, error, cause)
        return await self._after_completion(queue, message, token, confirmation, outcome)

    async def _after_completion(
        self,
        queue: QueueRuntime,
        message: ReceivedMessage,
        token: str,
        confirmation: Confirmation,
        outcome: Outcome,
    ) -> Outcome:
        if confirmation is Confirmation.CONFIRMED:
            await queue.deleter.delete(message.receipt_handle)
            return outcome
        if confirmation is Confirmation.TASK_CLOSED:
            await queue.deleter.delete(message.receipt_handle)
            return Outcome.TASK_CLOSED
        # Not confirmed: keep the message; it comes back when its visibility lapses.
        log.warning(
            "outcome of message %s not confirmed by Step Functions (%s); kept for redelivery",
            message.message_id,
            token_ref(token),
        )
        return Outcome.UNCONFIRMED

    async def _unknown_type(
        self, queue: QueueRuntime, message: ReceivedMessage, envelope: Envelope
    ) -> Outcome:
        known = ", ".join(sorted(self._router.routes)) or "none"
        named = repr(envelope.message_type) if envelope.message_type else "no type"
        cause = f"message on queue {queue.name} has {named}; registered types: {known}"
        log.warning("unknown message type: %s (message %s)", cause, message.message_id)
        confirmation = await self._completer.fail(
            envelope.token, ErrorName.UNKNOWN_MESSAGE_TYPE, cause
        )
        if not confirmation.settled:
            return Outcome.UNCONFIRMED
        if confirmation is Confirmation.TASK_CLOSED and _redriven(message):
            return await self._drop_redriven(queue, message, envelope.token)
        copied = await self._dead_letter(
            queue, message, "UnknownMessageType", cause, envelope.token
        )
        if copied or queue.dead_letter_url is None:
            await queue.deleter.delete(message.receipt_handle)
        return Outcome.UNKNOWN_TYPE

    async def _drop_redriven(
        self, queue: QueueRuntime, message: ReceivedMessage, token: str
    ) -> Outcome:
        """A redriven copy of a task that is closed already: its DLQ copy was made the
        first time; copying it again would only feed the next redrive (docs/errors.md).
        """
        log.info(
            "message %s on %s was redriven, but its task is closed already (%s): dropped",
            message.message_id,
            queue.name,
            token_ref(token),
        )
        await queue.deleter.delete(message.receipt_handle)
        return Outcome.TASK_CLOSED

    async def _poison(
        self, queue: QueueRuntime, message: ReceivedMessage, poison: Poison
    ) -> Outcome:
        note_error(poison.reason.value)
        log.warning(
            "poison message %s on %s: %s (%s)",
            message.message_id,
            queue.name,
            poison.reason.value,
            poison.detail,
        )
        if await self._dead_letter(queue, message, poison.reason.value, poison.detail):
            await queue.deleter.delete(message.receipt_handle)
        elif queue.dead_letter_url is None:
            # No DLQ of ours: hide it as long as allowed and let the queue's redrive
            # policy move it after maxReceiveCount receives.
            await self._change_visibility(queue, message, int(self._defaults.retry_max_delay_s))
        return Outcome.POISON

    async def _dead_letter(
        self,
        queue: QueueRuntime,
        message: ReceivedMessage,
        reason: str,
        detail: str,
        token: str | None = None,
    ) -> bool:
        """Copy the message to the queue's DLQ with why; False if none or it failed."""
        if queue.dead_letter_url is None:
            return False
        # SQS cannot carry a lone surrogate (a fake can hand one over): the copy gets
        # U+FFFD in its place rather than fail for ever.
        body = without_surrogates(message.body) or "(empty body)"
        if body != (message.body or "(empty body)"):
            detail = f"{detail} (lone surrogates in the body replaced by U+FFFD in this copy)"
        # The detail is often an exception's message, which may quote the token.
        detail = without_surrogates(redact_token(detail, token or current_token() or ""))
        attributes: dict[str, Any] = {
            "broker.reason": {"DataType": "String", "StringValue": reason},
            "broker.source_queue": {"DataType": "String", "StringValue": queue.name},
            "broker.receive_count": {
                "DataType": "Number",
                "StringValue": str(message.receive_count),
            },
            "broker.detail": {"DataType": "String", "StringValue": detail[:1024] or "-"},
        }
        redriven = message.raw_attributes.get(REDRIVEN_ATTRIBUTE)
        if redriven is not None:
            # First among the originals: the redrive that sent it knows it by this mark.
            attributes[REDRIVEN_ATTRIBUTE] = _copyable(redriven)
        for name, value in message.raw_attributes.items():
            if len(attributes) >= _DLQ_ATTRIBUTE_LIMIT:
                break
            attributes.setdefault(without_surrogates(name), _copyable(value))
        attributes = _fit_in_one_message(body, attributes)
        if message_size(body, attributes) > MAX_MESSAGE_BYTES:
            # The body alone nearly fills SQS's limit, so the copy cannot say why.  Never
            # truncate a body: hide the message instead and let the queue's redrive
            # policy move it as it is.
            log.error(
                "message %s (%s on %s) is too large to copy to the dead-letter queue with "
                "its reason; left to the queue's redrive policy",
                message.message_id,
                reason,
                queue.name,
            )
            await self._change_visibility(queue, message, int(self._defaults.retry_max_delay_s))
            return False
        params: dict[str, Any] = {
            "QueueUrl": queue.dead_letter_url,
            "MessageBody": body,
            "MessageAttributes": attributes,
        }
        if queue.dead_letter_url.endswith(".fifo"):
            params["MessageGroupId"] = message.group_id or "broker-dead-letters"
            params["MessageDeduplicationId"] = message.message_id
        attempt = 1
        while True:
            try:
                await self._sqs.send_message(**params)
            except Exception as exc:  # noqa: BLE001 - the message stays; logged
                if attempt < _DLQ_ATTEMPTS and classify(exc) is ErrorKind.TRANSIENT:
                    await anyio.sleep(random.uniform(0, _DLQ_BACKOFF_S * 2**attempt))
                    attempt += 1
                    continue
                log.error(
                    "copy of message %s to the dead-letter queue failed (%s); kept for redelivery",
                    message.message_id,
                    error_code(exc) or type(exc).__name__,
                )
                return False
            else:
                return True

    async def _change_visibility(
        self, queue: QueueRuntime, message: ReceivedMessage, delay_s: int
    ) -> None:
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=queue.url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=max(0, min(delay_s, 43_200)),
            )
        except Exception as exc:  # noqa: BLE001 - worst case: the queue's own timeout applies
            log.warning(
                "ChangeMessageVisibility failed for message %s (%s)",
                message.message_id,
                error_code(exc) or type(exc).__name__,
            )

    async def _heartbeat(self, token: str) -> None:
        await heartbeat_or_raise(self._completer, token)


def _fit_in_one_message(body: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """Drop what can go so that the copy fits: the original attributes, then the detail.

    The reason, source queue and receive count are always kept.
    """
    if message_size(body, attributes) <= MAX_MESSAGE_BYTES:
        return attributes
    kept = {name: value for name, value in attributes.items() if name.startswith("broker.")}
    if message_size(body, kept) > MAX_MESSAGE_BYTES:
        kept["broker.detail"] = {"DataType": "String", "StringValue": "-"}
    return kept


def _copyable(value: Mapping[str, Any]) -> dict[str, Any]:
    copy = {key: value[key] for key in ("DataType", "StringValue", "BinaryValue") if key in value}
    if isinstance(copy.get("StringValue"), str):
        copy["StringValue"] = without_surrogates(copy["StringValue"])
    return copy


def _redriven(message: ReceivedMessage) -> bool:
    """True for a copy ``broker redrive`` sent back from a dead-letter queue."""
    return REDRIVEN_ATTRIBUTE in message.raw_attributes
