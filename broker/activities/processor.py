"""One activity task, one outcome: route, validate, run, complete.

The activity counterpart of ``sqs.processor``: the same router, ``Task[Model]`` validation,
handler timeout, heartbeats and error names, minus everything SQS (no message to hide,
delete or dead-letter).  Activities have no redelivery: every outcome is final, so a
handler's exception or timeout fails the task at once (state machines retry it with
``Retry``).  A task cut off by the drain is failed with ``Broker.ShuttingDown`` rather
than left to time out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import anyio
import orjson
from pydantic import ValidationError

from broker.core.completer import Completer, Confirmation
from broker.core.errors import ErrorName
from broker.core.handling import (
    Failure,
    TimedOut,
    WorkflowGaveUp,
    encode_output,
    heartbeat_or_raise,
    invalid_input_cause,
    run_supervised,
    unexpected_failure,
)
from broker.core.router import Route, Router
from broker.core.settings import ActivitySettings
from broker.core.task import Task
from broker.observability.events import message_record, note_token, note_type, settled
from broker.observability.redact import token_ref
from broker.observability.stats import Outcome, Stats
from broker.sqs.envelope import MAX_JSON_DEPTH, is_too_deep, load_json, lookup_path

__all__ = ["ActivityRuntime", "ActivityTaskProcessor"]

log = logging.getLogger("broker.activities")

#: How long a task cut off by the drain may take to be failed (shielded).
_SHUTDOWN_FAIL_TIMEOUT_S: Final = 5.0
_SHUTDOWN_CAUSE: Final = "the broker stopped before the task finished; it is safe to retry"


@dataclass(frozen=True, slots=True)
class ActivityRuntime:
    """A configured activity once resolved at start-up."""

    settings: ActivitySettings
    arn: str
    worker_name: str

    @property
    def name(self) -> str:
        return self.settings.name


class ActivityTaskProcessor:
    def __init__(
        self,
        router: Router,
        completer: Completer,
        stats: Stats,
        *,
        handler_timeout_s: float | None,
    ) -> None:
        self._router = router
        self._completer = completer
        self._stats = stats
        self._handler_timeout_s = handler_timeout_s

    async def process(
        self, activity: ActivityRuntime, token: str, raw_input: str | None
    ) -> Outcome:
        if anyio.current_effective_deadline() <= anyio.current_time():
            # Handed out as the drain's grace period ended: starting the handler would
            # only have it cut off.  Fail at once with the retryable name.
            await self._shut_down(activity, token)
            return Outcome.FAILED
        with message_record(activity.name, token_ref(token), 1) as record:
            note_token(token)
            try:
                outcome = await self._decide(activity, token, raw_input)
            except anyio.get_cancelled_exc_class():
                # Cut off by the drain's grace period.  There is no redelivery for an
                # activity: fail it now rather than leave the workflow to its timeout.
                await self._shut_down(activity, token)
                raise
            settled(record, outcome, self._stats)
        return outcome

    async def _shut_down(self, activity: ActivityRuntime, token: str) -> None:
        """SendTaskFailure(Broker.ShuttingDown), shielded and bounded: we are stopping."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_FAIL_TIMEOUT_S):
            log.warning(
                "activity %s: task %s cut off by shutdown; failing it with %s",
                activity.name,
                token_ref(token),
                ErrorName.SHUTTING_DOWN,
            )
            await self._completer.fail(token, ErrorName.SHUTTING_DOWN, _SHUTDOWN_CAUSE)
            self._stats.count(activity.name, Outcome.FAILED)

    async def _decide(
        self, activity: ActivityRuntime, token: str, raw_input: str | None
    ) -> Outcome:
        try:
            payload: Any = load_json(raw_input or "null")
        except orjson.JSONDecodeError as exc:
            if is_too_deep(exc):
                # Valid JSON, nested deeper than the broker reads.
                cause = f"input is nested deeper than {MAX_JSON_DEPTH} levels"
                return await self._fail(
                    activity, token, ErrorName.INVALID_INPUT, cause, Outcome.INVALID_INPUT
                )
            # Step Functions only hands out JSON; this is a defensive branch.
            return await self._fail(
                activity, token, ErrorName.INVALID_INPUT, f"input is not JSON: {exc}"
            )
        route = self._route(activity.settings, payload)
        if route is None:
            note_type("unknown")
            return await self._unknown_type(activity, token, payload)
        note_type(route.message_type)
        document = payload
        if route.payload_adapter is not None:
            try:
                payload = route.payload_adapter.validate_python(payload)
            except ValidationError as exc:
                cause = invalid_input_cause(exc)
                return await self._fail(
                    activity, token, ErrorName.INVALID_INPUT, cause, Outcome.INVALID_INPUT
                )
        task: Task[Any] = Task(
            payload=payload,
            message_type=route.message_type,
            token=token,
            source=activity.name,
            message_id=token_ref(token),
            body=document if isinstance(document, dict) else {"input": document},
            _send_heartbeat=lambda: heartbeat_or_raise(self._completer, token),
        )
        started = anyio.current_time()
        result = await run_supervised(self._completer, route, task, self._handler_timeout_s)
        self._stats.handler_seconds[route.message_type].observe(anyio.current_time() - started)
        return await self._settle(activity, route, token, result)

    def _route(self, settings: ActivitySettings, payload: Any) -> Route | None:
        # The type field first (a per-task choice), then the configured handler.
        if settings.type_field:
            named = lookup_path(payload, settings.type_field)
            if isinstance(named, str) and named:
                return self._router.get(named)
        return self._router.get(settings.handler) if settings.handler else None

    async def _settle(
        self, activity: ActivityRuntime, route: Route, token: str, result: Any
    ) -> Outcome:
        if isinstance(result, WorkflowGaveUp):
            log.info(
                "activity %s: handler %s cancelled: the workflow closed task %s",
                activity.name,
                route.message_type,
                token_ref(token),
            )
            return Outcome.TASK_CLOSED
        if isinstance(result, Failure):
            return await self._fail(activity, token, result.error, result.cause)
        if isinstance(result, TimedOut | Exception):
            failure = unexpected_failure(result)
            log.error(
                "activity %s: handler %s failed with %s (%s); no redelivery for activities",
                activity.name,
                route.message_type,
                failure.error,
                token_ref(token),
            )
            return await self._fail(
                activity, token, failure.error, failure.cause, Outcome.EXHAUSTED
            )
        output = encode_output(result)
        if isinstance(output, Failure):
            return await self._fail(
                activity, token, output.error, output.cause, Outcome.INVALID_OUTPUT
            )
        confirmation = await self._completer.succeed(token, output)
        if confirmation is Confirmation.INVALID_OUTPUT:
            return await self._fail(
                activity,
                token,
                ErrorName.INVALID_OUTPUT,
                "Step Functions refused the handler's output (InvalidOutput)",
                Outcome.INVALID_OUTPUT,
            )
        return self._confirmed(activity, token, confirmation, Outcome.SUCCEEDED)

    async def _unknown_type(self, activity: ActivityRuntime, token: str, payload: Any) -> Outcome:
        settings = activity.settings
        named = lookup_path(payload, settings.type_field) if settings.type_field else None
        known = ", ".join(sorted(self._router.routes)) or "none"
        cause = (
            f"task of activity {activity.name} has type {named!r} "
            f"(field {settings.type_field!r}); registered types: {known}"
        )
        log.warning("unknown activity task type: %s (%s)", cause, token_ref(token))
        return await self._fail(
            activity, token, ErrorName.UNKNOWN_MESSAGE_TYPE, cause, Outcome.UNKNOWN_TYPE
        )

    async def _fail(
        self,
        activity: ActivityRuntime,
        token: str,
        error: str,
        cause: str,
        outcome: Outcome = Outcome.FAILED,
    ) -> Outcome:
        log.info("activity %s: task %s failed with %s", activity.name, token_ref(token), error)
        confirmation = await self._completer.fail(token, error, cause)
        return self._confirmed(activity, token, confirmation, outcome)

    def _confirmed(
        self, activity: ActivityRuntime, token: str, confirmation: Confirmation, outcome: Outcome
    ) -> Outcome:
        if confirmation is Confirmation.CONFIRMED:
            return outcome
        if confirmation is Confirmation.TASK_CLOSED:
            return Outcome.TASK_CLOSED
        # Nothing comes back for an activity: the workflow waits for its heartbeat or
        # timeout, and its Retry decides.  Say so loudly.
        log.error(
            "activity %s: outcome of task %s not confirmed by Step Functions; the workflow "
            "will see its heartbeat/timeout expire",
            activity.name,
            token_ref(token),
        )
        return Outcome.UNCONFIRMED
