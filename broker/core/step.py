"""The one step from a routed task to its confirmation, shared by every source.

A source (an SQS message, an activity task, later a decision link) finds the route and
then hands over to ``Step``:

1. ``observed``: the task's outcome event (``observability.events``), its trace span
   and its count, the same for every source;
2. ``run``: validate the payload against the handler's model, build the ``Task``, run
   the handler under its timeout with heartbeats (and whatever the source keeps alive
   beside it), time it, and reduce what happened to a ``Verdict``; an
   ``idempotent=True`` route's run goes through ``core.once`` (claimed first, its
   verdict recorded, or a recorded verdict replayed, or ``Busy``);
3. ``complete``: send a ``Succeeded`` or ``Failed`` verdict through the ``Completer`` and
   read Step Functions' answer into one ``Completion`` (confirmation and outcome).

What a source does with ``Retry``, ``Closed`` and ``Busy``, and with its message once the
completion is known (delete, hide, dead-letter, or nothing), is the source's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from broker.core.completer import Completer, Confirmation
from broker.core.errors import ErrorName, TaskClosed
from broker.core.once import Once
from broker.core.payloads import encode_output, invalid_input_cause
from broker.core.router import Route
from broker.core.runs import HandlerRuns
from broker.core.task import Task
from broker.core.verdict import Closed, Failed, Succeeded, Verdict
from broker.observability.events import message_record, settled
from broker.observability.redact import token_ref
from broker.observability.stats import Outcome, Stats
from broker.observability.tracing import Tracer, annotate

if TYPE_CHECKING:
    from broker.decisions.links import LinkMaker

#: ``task.notify``'s implementation: publish (message, subject), return the MessageId.
Notifier = Callable[[Mapping[str, str], str | None], Awaitable[str]]

__all__ = [
    "Completion",
    "Notifier",
    "Origin",
    "Step",
    "heartbeat_or_raise",
    "run_handler",
    "run_supervised",
    "send_heartbeats",
]

log = logging.getLogger("broker.step")

#: Sent when Step Functions refuses an output the broker found valid.
_REFUSED_OUTPUT = "Step Functions refused the handler's output (InvalidOutput)"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a task came from: what its ``Task``, outcome event and span name."""

    #: The queue or activity name.
    source: str
    message_id: str
    receive_count: int = 1
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: The span's ``messaging.system``.
    system: str = "aws_sqs"


@dataclass(frozen=True, slots=True)
class Completion:
    """Step Functions' answer to one completion, read once.

    ``outcome`` is the verdict's when confirmed, ``TASK_CLOSED`` when the task was closed
    already, ``UNCONFIRMED`` otherwise (the source decides what that means for it).
    """

    confirmation: Confirmation
    outcome: Outcome

    @property
    def settled(self) -> bool:
        """The task's outcome is durable (or it was closed): the source may let go."""
        return self.confirmation.settled


def _read(confirmation: Confirmation, outcome: Outcome) -> Completion:
    if confirmation is Confirmation.CONFIRMED:
        return Completion(confirmation, outcome)
    if confirmation is Confirmation.TASK_CLOSED:
        return Completion(confirmation, Outcome.TASK_CLOSED)
    return Completion(confirmation, Outcome.UNCONFIRMED)


class Step:
    """Runs and completes tasks for one broker (one per source kind is fine too)."""

    def __init__(
        self,
        completer: Completer,
        stats: Stats,
        *,
        handler_timeout_s: float | None,
        tracer: Tracer | None = None,
        links: LinkMaker | None = None,
        notify: Notifier | None = None,
        once: Once | None = None,
        runs: HandlerRuns | None = None,
    ) -> None:
        self._completer = completer
        #: Where handlers run (the broker's, which withholds a slot per abandoned run).
        self.runs = runs or HandlerRuns()
        self._stats = stats
        self._handler_timeout_s = handler_timeout_s
        self._tracer = tracer or Tracer(None)
        #: What ``decisions=True`` / ``notify=True`` routes' tasks get (start-up checked
        #: that the settings they need are there).
        self._links = links
        self._notify = notify
        #: The idempotency table's side of ``idempotent=True`` routes (start-up checked
        #: that it is there when such a route is).
        self._once = once

    async def observed(self, origin: Origin, decide: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """``decide()`` inside the task's outcome record and span; counted and logged once."""
        if not self._tracer.enabled:  # no span work at all when tracing is off
            with message_record(origin.source, origin.message_id, origin.receive_count) as record:
                outcome = await decide()
                settled(record, outcome, self._stats)
            return outcome
        with (
            message_record(origin.source, origin.message_id, origin.receive_count) as record,
            self._tracer.message_span(
                origin.source, origin.message_id, origin.attributes, system=origin.system
            ) as span,
        ):
            outcome = await decide()
            settled(record, outcome, self._stats)
            annotate(
                span,
                type=record.message_type,
                outcome=outcome.value,
                error=record.error,
                receive_count=origin.receive_count,
            )
        return outcome

    async def run(
        self,
        route: Route,
        token: str,
        payload: Any,
        *,
        origin: Origin,
        body: Mapping[str, Any],
        alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> Verdict:
        """Validate, run the handler (``alongside`` beside it) and say what it decided."""
        if route.payload_adapter is not None:
            try:
                payload = route.payload_adapter.validate_python(payload)
            except ValidationError as exc:
                return Failed(
                    ErrorName.INVALID_INPUT, invalid_input_cause(exc), Outcome.INVALID_INPUT
                )
        task: Task[Any] = Task(
            payload=payload,
            message_type=route.message_type,
            token=token,
            source=origin.source,
            message_id=origin.message_id,
            receive_count=origin.receive_count,
            attributes=origin.attributes,
            body=body,
            _send_heartbeat=lambda: heartbeat_or_raise(self._completer, token),
        )
        if route.options.decisions and self._links is not None:
            task._decision_links = self._links.links
        if route.options.notify and self._notify is not None:
            task._notify = self._notify
        if route.options.idempotent and self._once is not None:
            # The route given back wraps the handler: the claim follows its coroutine.
            return await self._once.run(route, token, lambda run: self._timed(run, task, alongside))
        return await self._timed(route, task, alongside)

    async def _timed(
        self,
        route: Route,
        task: Task[Any],
        alongside: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> Verdict:
        # perf_counter: uvloop's loop clock ticks in whole milliseconds.
        started = time.perf_counter()
        # Not started until awaited: the span (when tracing is on) covers the whole run.
        supervised = run_supervised(
            self._completer,
            route,
            task,
            self._handler_timeout_s,
            alongside=alongside,
            runs=self.runs,
        )
        if self._tracer.enabled:
            with self._tracer.span(f"handler {route.message_type}"):
                verdict = await supervised
        else:  # no span work at all when tracing is off
            verdict = await supervised
        self._stats.handler_seconds[route.message_type].observe(time.perf_counter() - started)
        return verdict

    async def complete(self, token: str, verdict: Succeeded | Failed) -> Completion:
        """SendTaskSuccess (an output that cannot be sent fails the task instead) or
        SendTaskFailure, and what Step Functions answered."""
        if isinstance(verdict, Succeeded):
            output = (
                verdict.encoded if verdict.encoded is not None else encode_output(verdict.output)
            )
            if isinstance(output, str):
                confirmation = await self._completer.succeed(token, output)
                if confirmation is not Confirmation.INVALID_OUTPUT:
                    return _read(confirmation, Outcome.SUCCEEDED)
                output = Failed(ErrorName.INVALID_OUTPUT, _REFUSED_OUTPUT, Outcome.INVALID_OUTPUT)
            verdict = output
        # Said once, by the task's outcome event (the error is noted by the completer).
        confirmation = await self._completer.fail(token, verdict.error, verdict.cause)
        return _read(confirmation, verdict.outcome)


async def run_handler(
    route: Route,
    task: Task[Any],
    default_timeout_s: float | None,
    runs: HandlerRuns | None = None,
) -> Verdict:
    """What the handler decided, under its timeout.  Never raises, except cancellation
    from outside, which is re-raised rather than turned into a verdict.

    Whatever the handler raises (``SystemExit`` included) or ignores (its cancellation),
    this returns within its timeout plus ``ABANDON_MARGIN_S`` (``core.runs``).
    """
    timeout_s = route.options.timeout_s or default_timeout_s
    return await (runs or HandlerRuns()).run(route, task, timeout_s)


async def run_supervised(
    completer: Completer,
    route: Route,
    task: Task[Any],
    default_timeout_s: float | None,
    *,
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
    runs: HandlerRuns | None = None,
) -> Verdict:
    """``run_handler`` while heartbeats (if the route asks) and ``alongside`` run beside it.

    ``Closed`` when a heartbeat found the task closed: the handler was cancelled.
    """
    if alongside is None and not route.options.heartbeat_s:
        # Nothing to run beside the handler: no task group (a cancel scope and a task
        # fewer per message).
        return await run_handler(route, task, default_timeout_s, runs)
    gave_up = False
    verdict: Verdict = Closed()
    async with anyio.create_task_group() as supervisor:

        def on_closed() -> None:
            # The workflow timed out or was stopped: the work is unwanted.
            nonlocal gave_up
            gave_up = True
            supervisor.cancel_scope.cancel()

        if alongside is not None:
            supervisor.start_soon(alongside)
        if route.options.heartbeat_s:
            supervisor.start_soon(
                send_heartbeats, completer, task.token, route.options.heartbeat_s, on_closed
            )
        verdict = await run_handler(route, task, default_timeout_s, runs)
        supervisor.cancel_scope.cancel()
    return Closed() if gave_up else verdict


async def send_heartbeats(
    completer: Completer, token: str, interval_s: float, on_closed: Callable[[], None]
) -> None:
    """SendTaskHeartbeat every ``interval_s``; call ``on_closed`` and return once the
    workflow closed the task (timed out, stopped): the work is unwanted from then on.
    """
    while True:
        await anyio.sleep(interval_s)
        confirmation = await completer.heartbeat(token)
        if confirmation is Confirmation.TASK_CLOSED:
            on_closed()
            return
        if confirmation is Confirmation.HEARTBEAT_REFUSED:
            log.warning(
                "heartbeats for %s stopped: Step Functions answered InvalidToken (the "
                "emulators do when the state sets no HeartbeatSeconds); the handler goes on",
                token_ref(token),
            )
            return


async def heartbeat_or_raise(completer: Completer, token: str) -> None:
    """``task.heartbeat()``: SendTaskHeartbeat; ``TaskClosed`` once the workflow gave up."""
    confirmation = await completer.heartbeat(token)
    if confirmation is Confirmation.TASK_CLOSED:
        raise TaskClosed(f"task {token_ref(token)} is closed; the workflow gave up")
