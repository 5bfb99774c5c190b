"""One activity task, one outcome: route, then the shared ``core.step.Step``.

The activity counterpart of ``sqs.processor``: the same step (validation, handler
timeout, heartbeats, error names, spans, outcome events), minus everything SQS (no
message to hide, delete or dead-letter).  Activities have no redelivery: every outcome
is final, so a ``Retry`` verdict (an exception, a timeout) fails the task at once (state
machines retry it with ``Retry``).  A task cut off by the drain is failed with
``Broker.ShuttingDown`` rather than left to time out, one whose idempotency claim could
not be made with ``Broker.IdempotencyUnavailable``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, assert_never

import anyio
import orjson

from broker.core.errors import ErrorName
from broker.core.router import Route, Router
from broker.core.settings import ActivitySettings
from broker.core.step import Completion, Origin, Step
from broker.core.verdict import Busy, Closed, Deferred, Failed, Retry, Succeeded, Verdict
from broker.observability.events import note_detail, note_error, note_token, note_type
from broker.observability.redact import loggable, token_ref
from broker.observability.stats import Outcome, Stats
from broker.sqs.envelope import MAX_JSON_DEPTH, is_too_deep, load_json, lookup_path

__all__ = ["ActivityRuntime", "ActivityTaskProcessor"]

log = logging.getLogger("broker.activities")

#: How long a task cut off by the drain may take to be failed (shielded); with the
#: handler's 1 s to end (``core.runs``), 5 s of the drain's 15 s past the grace.
_SHUTDOWN_FAIL_TIMEOUT_S: Final = 4.0
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
    def __init__(self, router: Router, step: Step, stats: Stats) -> None:
        self._router = router
        self._step = step
        self._stats = stats

    async def process(
        self, activity: ActivityRuntime, token: str, raw_input: str | None
    ) -> Outcome:
        if anyio.current_effective_deadline() <= anyio.current_time():
            # Handed out as the drain's grace period ended: starting the handler would
            # only have it cut off.  Fail at once with the retryable name.
            await self._shut_down(activity, token)
            return Outcome.FAILED
        origin = Origin(activity.name, token_ref(token), system="aws_stepfunctions")

        async def decide() -> Outcome:
            note_token(token)
            try:
                return await self._decide(activity, origin, token, raw_input)
            except anyio.get_cancelled_exc_class():
                # Cut off by the drain's grace period.  There is no redelivery for an
                # activity: fail it now rather than leave the workflow to its timeout.
                await self._shut_down(activity, token)
                raise

        return await self._step.observed(origin, decide)

    async def _shut_down(self, activity: ActivityRuntime, token: str) -> None:
        """SendTaskFailure(Broker.ShuttingDown), shielded and bounded: we are stopping."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_FAIL_TIMEOUT_S):
            log.warning(
                "activity %s: task %s cut off by shutdown; failing it with %s",
                activity.name,
                token_ref(token),
                ErrorName.SHUTTING_DOWN,
            )
            await self._step.complete(token, Failed(ErrorName.SHUTTING_DOWN, _SHUTDOWN_CAUSE))
            self._stats.count(activity.name, Outcome.FAILED)

    async def internal_error(self, activity: ActivityRuntime, token: str, exc: Exception) -> None:
        """``process`` raised inside the broker: fail the task with ``Broker.InternalError``
        (shielded, bounded), counted and said as an outcome."""
        origin = Origin(activity.name, token_ref(token), system="aws_stepfunctions")
        name = type(exc).__name__
        cause = f"{name} raised inside the broker while handling the task: {exc or repr(exc)}"

        async def decide() -> Outcome:
            note_token(token)  # the log redacts it from here, the traceback's included
            note_error(ErrorName.INTERNAL_ERROR)
            note_detail(f"{name} inside the broker; failed at once: no redelivery for activities")
            log.error(
                "internal error handling task %s of activity %s",
                token_ref(token),
                activity.name,
                exc_info=exc,
            )
            internal = Failed(ErrorName.INTERNAL_ERROR, cause, Outcome.EXHAUSTED)
            return await self._settled(activity, token, internal)

        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_FAIL_TIMEOUT_S):
                await self._step.observed(origin, decide)
        except Exception:
            log.exception(
                "internal error processing task %s of activity %s, and failing it failed too",
                token_ref(token),
                activity.name,
            )

    async def _decide(
        self, activity: ActivityRuntime, origin: Origin, token: str, raw_input: str | None
    ) -> Outcome:
        try:
            payload: Any = load_json(raw_input or "null")
        except orjson.JSONDecodeError as exc:
            if is_too_deep(exc):
                # Valid JSON, nested deeper than the broker reads.
                cause = f"input is nested deeper than {MAX_JSON_DEPTH} levels"
                invalid = Failed(ErrorName.INVALID_INPUT, cause, Outcome.INVALID_INPUT)
                return await self._settled(activity, token, invalid)
            # Step Functions only hands out JSON; this is a defensive branch.
            not_json = Failed(ErrorName.INVALID_INPUT, f"input is not JSON: {exc}")
            return await self._settled(activity, token, not_json)
        route = self._route(activity.settings, payload)
        if route is None:
            field = activity.settings.type_field
            named = lookup_path(payload, field) if field else None
            note_type("unknown", asked=named if isinstance(named, str) and named else None)
            return await self._unknown_type(activity, token, payload)
        note_type(route.message_type)
        body = payload if isinstance(payload, dict) else {"input": payload}
        verdict = await self._step.run(route, token, payload, origin=origin, body=body)
        return await self._settle(activity, route, token, verdict)

    def _route(self, settings: ActivitySettings, payload: Any) -> Route | None:
        # The type field first (a per-task choice), then the configured handler.
        if settings.type_field:
            named = lookup_path(payload, settings.type_field)
            if isinstance(named, str) and named:
                return self._router.get(named)
        return self._router.get(settings.handler) if settings.handler else None

    async def _settle(
        self, activity: ActivityRuntime, route: Route, token: str, verdict: Verdict
    ) -> Outcome:
        match verdict:
            case Succeeded() | Failed():
                return await self._settled(activity, token, verdict)
            case Retry():
                failure = verdict.at_once()
                note_detail("failed at once: no redelivery for activities")
                return await self._settled(activity, token, failure)
            case Closed():
                note_detail("handler cancelled: the workflow closed the task")
                return Outcome.TASK_CLOSED
            case Deferred():
                # Left open for a decision link (or the state's timeout) to complete.
                if verdict.reason:
                    note_detail(loggable(verdict.reason))
                return Outcome.DEFERRED
            case Busy(error=None):
                # Another run holds the token's claim: it completes the task.
                return Outcome.DUPLICATE
            case Busy(error=error):
                # Nothing ran (fail closed) and nothing redelivers an activity task:
                # fail it with a name the state machine's Retry can match.
                cause = f"the idempotency table could not be asked ({error}); nothing ran"
                return await self._settled(
                    activity, token, Failed(ErrorName.IDEMPOTENCY_UNAVAILABLE, cause)
                )
            case _:
                assert_never(verdict)

    async def _unknown_type(self, activity: ActivityRuntime, token: str, payload: Any) -> Outcome:
        settings = activity.settings
        named = lookup_path(payload, settings.type_field) if settings.type_field else None
        known = ", ".join(sorted(self._router.routes)) or "none"
        cause = (
            f"task of activity {activity.name} has type {named!r} "
            f"(field {settings.type_field!r}); registered types: {known}"
        )
        note_detail(f"registered types: {loggable(known)}")
        unknown = Failed(ErrorName.UNKNOWN_MESSAGE_TYPE, cause, Outcome.UNKNOWN_TYPE)
        return await self._settled(activity, token, unknown)

    async def _settled(
        self, activity: ActivityRuntime, token: str, verdict: Succeeded | Failed
    ) -> Outcome:
        completion: Completion = await self._step.complete(token, verdict)
        if not completion.settled:
            # Nothing comes back for an activity: the workflow waits for its heartbeat
            # or timeout, and its Retry decides.  Say so loudly.
            note_detail(
                "not confirmed by Step Functions: the workflow will see its heartbeat/timeout "
                "expire"
            )
        return completion.outcome
