"""The broker: one root task group owning the pollers, the message tasks and the deleters.

Shutdown order (``request_stop``): stop polling at once, give running handlers
``shutdown_grace_s`` to finish, then flush the deletes of everything that settled.
A message whose handler is cut off is not deleted: it comes back after its visibility
timeout.  Nothing is lost; at worst something runs twice, which the completion of a
closed task answers harmlessly.

Activities (docs/activities.md) drain differently: their polls in flight are left to
return within the grace period (cancelling one could swallow a task), and an activity
task cut off is failed with ``Broker.ShuttingDown`` since nothing would redeliver it.
A handler ignoring its cancellation is waited for 1 s, then abandoned (``core.runs``):
the drain's bound holds whatever handlers do (``broker.shutdown`` enforces it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

import anyio
from anyio.abc import TaskStatus

from broker.activities.poller import ActivityPoller, activity_route_problems, resolve_activity
from broker.activities.processor import ActivityTaskProcessor
from broker.aws.clients import open_clients
from broker.aws.dynamo import open_store
from broker.aws.instrument import instrument
from broker.aws.protocols import AwsClients, SqsApi
from broker.aws.sns import open_topic
from broker.aws.startup import StartupRetry
from broker.core.completer import COMPLETION_APIS, Completer
from broker.core.errors import ConfigError
from broker.core.once import Once, idempotency_problems
from broker.core.ratelimit import AdaptiveParams, AdaptiveRates
from broker.core.router import Router
from broker.core.runs import HandlerRuns
from broker.core.settings import ENV_PREFIX, BrokerSettings, QueueSettings
from broker.core.step import Step
from broker.decisions.decide import Decisions
from broker.decisions.endpoint import serve_decisions
from broker.decisions.links import LinkMaker
from broker.decisions.wiring import decision_codec, decision_problems
from broker.observability.health import BrokerHealth
from broker.observability.probes import Health
from broker.observability.stats import Outcome, Stats
from broker.observability.tracing import Tracer
from broker.sqs.consumer import QueueConsumer
from broker.sqs.deleter import DeleteBatcher
from broker.sqs.delivery import SqsQueue
from broker.sqs.internal import InternalErrors
from broker.sqs.lookup import resolve_queue
from broker.sqs.message import QueueRuntime
from broker.sqs.processor import MessageProcessor, ProcessingDefaults

__all__ = ["Broker", "configuration_problems"]

log = logging.getLogger("broker")

_FLUSH_TIMEOUT_S: Final = 10.0

ClientFactory = Callable[[BrokerSettings], AbstractAsyncContextManager[AwsClients]]


class Broker:
    """Consume the configured queues with the handlers of ``router`` until stopped.

    ``clients`` is the transport seam: tests pass a factory yielding fakes.  ``tracer``
    defaults to what the OTEL_* environment asks for (docs/operations.md).
    ``no_dead_letter_level``: how a queue without ``dead_letter_queue`` is reported (a
    warning for a deployment; ``TestBroker`` makes it INFO, see there).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        router: Router,
        *,
        clients: ClientFactory = open_clients,
        tracer: Tracer | None = None,
        no_dead_letter_level: int = logging.WARNING,
    ) -> None:
        problems = configuration_problems(settings, router)
        if problems:
            raise problems[0]
        self.settings = settings
        self.router = router
        self.stats = Stats()
        self.tracer = tracer if tracer is not None else Tracer.from_environment()
        self._clients = clients
        self._no_dead_letter_level = no_dead_letter_level
        self._stop: anyio.Event | None = None
        self._stop_requested = False
        self._ready = False
        #: Where handlers run (``core.runs``); an abandoned run may outlive ``run``.
        self.runs = HandlerRuns()
        #: The port /livez /readyz /metrics listen on, once started (None: off).
        self.http_port: int | None = None
        self.consumers: list[QueueConsumer] = []
        self.activity_pollers: list[ActivityPoller] = []
        #: /livez /readyz /metrics, read from this broker when asked.
        self.health = BrokerHealth(self)
        #: Decision links (docs/decisions.md): None unless BROKER_DECISION_KEYS is set.
        self.codec = decision_codec(settings)
        #: Answers decision links once running (None without keys); ``decision_port`` is
        #: where the decision endpoint listens (None: not listening).
        self.decisions: Decisions | None = None
        self.decision_port: int | None = None
        #: Each SendTask* API's allowed rate, adapted to throttling (a metric).
        self.completion_rates = AdaptiveRates(
            AdaptiveParams(
                decrease=settings.completion_rate_decrease,
                increase_per_s=settings.completion_rate_increase_per_s,
                ceiling_per_s=settings.completion_rate_per_s,
            ),
            COMPLETION_APIS,
            enabled=settings.completion_rate_adaptive,
        )

    def request_stop(self) -> None:
        """Begin the drain.  Safe to call before ``run`` started and more than once."""
        self._stop_requested = True
        self._ready = False  # readiness goes false first, before anything else stops
        if self._stop is not None:
            self._stop.set()

    @property
    def ready(self) -> bool:
        """Started and not draining: what /readyz and ``broker_ready`` report."""
        return self._ready

    @property
    def draining(self) -> bool:
        return self._stop_requested

    def liveness(self) -> Health:
        return self.health.liveness()

    def readiness(self) -> Health:
        return self.health.readiness()

    @property
    def in_flight(self) -> int:
        return sum(consumer.in_flight for consumer in self.consumers) + sum(
            poller.in_flight for poller in self.activity_pollers
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stop = anyio.Event()
        if self._stop_requested:
            self._stop.set()
        try:
            async with anyio.create_task_group() as observers:
                if self.settings.http_port is not None:
                    self.http_port = await observers.start(self.health.serve)
                observers.start_soon(self.health.watch_event_loop)
                await self._run(task_status)
                observers.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The observers never fail on their own: callers get the broker's own error,
            # as they did before health and metrics ran beside it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        log.info("broker stopped: %s", self._summary())

    async def _run(self, task_status: TaskStatus[None]) -> None:
        settings = self.settings
        async with self._clients(settings) as raw_clients:
            clients = instrument(raw_clients, self.stats, self.tracer)
            # One deadline for every lookup of this start-up; not ready until they pass.
            retry = StartupRetry.from_settings(settings)
            # BROKER_DECISION_TOPIC found once (if a notify=True route needs it), before
            # the queues' deleters exist: a missing topic stops the start with nothing to close.
            topic = await open_topic(clients.sns, settings, retry, self.router)
            store = await open_store(clients.dynamodb, settings, retry)
            queues = [await self._open_queue(clients.sqs, q, retry) for q in settings.queues]
            completer = Completer(
                clients.sfn,
                concurrency=settings.completion_concurrency,
                rate_per_s=settings.completion_rate_per_s,
                burst=settings.completion_burst,
                max_attempts=settings.completion_max_attempts,
                rates=self.completion_rates,
            )
            links = (
                LinkMaker(self.codec, settings.decision_ttl_s)
                if self.codec is not None and settings.decision_base_url
                else None
            )
            total_slots = anyio.CapacityLimiter(settings.concurrency)
            # One step from handler to confirmation for every source.
            step = Step(
                completer,
                self.stats,
                handler_timeout_s=settings.handler_timeout_s,
                tracer=self.tracer,
                links=links,
                notify=None if topic is None else topic.publish,
                once=(
                    None
                    if store is None
                    else Once(store, handler_timeout_s=settings.handler_timeout_s)
                ),
                runs=self.runs,
            )
            self.runs.capacity = total_slots
            if self.codec is not None:
                self.decisions = Decisions(self.codec, completer, self.stats)
            defaults = ProcessingDefaults(
                settings.max_attempts, settings.retry_base_delay_s, settings.retry_max_delay_s
            )
            processor = MessageProcessor(self.router, step, defaults)
            internal = InternalErrors(self.router, step, defaults)
            self.consumers = [
                QueueConsumer(
                    q, processor, total_slots=total_slots, stats=self.stats, internal=internal
                )
                for q in queues
            ]
            self.activity_pollers = await self._activity_pollers(clients, step, total_slots, retry)
            async with anyio.create_task_group() as root:
                for queue in queues:
                    await root.start(queue.deleter.run)
                # Decisions are answered until the drain is over, then the listener goes.
                listener = anyio.CancelScope()
                if self.decisions is not None and settings.decision_port is not None:
                    self.decision_port = await root.start(
                        self._serve_decisions, self.decisions, listener
                    )
                try:
                    await self._consume(task_status)
                finally:
                    listener.cancel()
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_FLUSH_TIMEOUT_S):
                        for queue in queues:
                            await queue.deleter.close()

    async def _serve_decisions(
        self, decisions: Decisions, scope: anyio.CancelScope, *, task_status: TaskStatus[int]
    ) -> None:
        settings = self.settings
        with scope:
            await serve_decisions(
                decisions,
                settings.decision_host,
                settings.decision_port or 0,
                task_status=task_status,
            )

    async def _consume(self, task_status: TaskStatus[None]) -> None:
        assert self._stop is not None
        with anyio.CancelScope() as work_scope:
            async with anyio.create_task_group() as work:
                # Activity polls live in ``work``: at the stop they may still return a
                # task, which then runs under the grace period like any handler.
                for poller in self.activity_pollers:
                    work.start_soon(poller.run, work)
                async with anyio.create_task_group() as pollers:
                    for consumer in self.consumers:
                        pollers.start_soon(consumer.poll, work)
                    log.info(
                        "broker running: %d queue(s), %d activity poller(s), %d handler type(s), "
                        "concurrency %d",
                        len(self.consumers),
                        len(self.activity_pollers),
                        len(self.router),
                        self.settings.concurrency,
                    )
                    self._ready = not self._stop_requested
                    task_status.started()
                    await self._stop.wait()
                    # From here everything in ``work`` has the grace period.  A receive
                    # in flight is left open while handlers run (SQS may have taken
                    # messages for it; what it returns is handed back), cut once
                    # nothing else runs (it found nothing so far).
                    work_scope.deadline = anyio.current_time() + self.settings.shutdown_grace_s
                    for consumer in self.consumers:
                        consumer.stop()
                    for poller in self.activity_pollers:
                        poller.stop()
                    log.info(
                        "draining: %d handler(s) running, %d receive(s) and %d activity "
                        "poll(s) open, grace %.0fs",
                        self.in_flight,
                        sum(consumer.receiving for consumer in self.consumers),
                        sum(poller.polling for poller in self.activity_pollers),
                        self.settings.shutdown_grace_s,
                    )

                    async def cut_polls_once_nothing_else_runs() -> None:
                        # No event marks the last handler of every queue and activity
                        # ending; a look every 20 ms, within the grace, costs nothing.
                        while self.in_flight or any(  # noqa: ASYNC110 - see above
                            p.polling for p in self.activity_pollers
                        ):
                            await anyio.sleep(0.02)
                        pollers.cancel_scope.cancel()

                    if any(consumer.receiving for consumer in self.consumers):
                        pollers.start_soon(cut_polls_once_nothing_else_runs)
        if work_scope.cancelled_caught:
            self._say_grace_over()

    def _say_grace_over(self) -> None:
        """The grace period ran out: a warning if it cut a handler off, else one INFO line.

        An idle activity poll is the usual reason, not worth a warning: GetActivityTask
        is not cut early (a task it hands out would be swallowed, design brief) and waits
        up to 60 s, longer than the default grace.  A poll answered in the last instant
        is the one way a task can go astray: it waits in Step Functions for the state's
        HeartbeatSeconds / TimeoutSeconds, fails with States.Timeout, and its Retry runs it.
        """
        handlers = sum(c.cut_off for c in self.consumers) + sum(
            p.cut_off for p in self.activity_pollers
        )
        polls = sum(p.polls_cut for p in self.activity_pollers)
        if handlers:
            log.warning(
                "grace period over: %d handler(s) still running cancelled (messages go back "
                "to their queues, activity tasks are failed with Broker.ShuttingDown; %d idle "
                "activity poll(s) cut off)",
                handlers,
                polls,
            )
            return
        log.info(
            "grace period over: no handler was running; %d idle activity poll(s) cut off "
            "(GetActivityTask is not cut before the grace ends: a task it hands out in the "
            "last instant waits for the state's heartbeat/timeout, then its Retry)",
            polls,
        )

    async def _activity_pollers(
        self,
        clients: AwsClients,
        step: Step,
        total_slots: anyio.CapacityLimiter,
        retry: StartupRetry,
    ) -> list[ActivityPoller]:
        processor = ActivityTaskProcessor(self.router, step, self.stats)
        pollers = []
        for settings in self.settings.activities:
            activity = await resolve_activity(clients.sfn, settings, retry=retry)
            pollers += [
                ActivityPoller(
                    activity,
                    clients.activity_sfn,
                    processor,
                    total_slots=total_slots,
                    stats=self.stats,
                )
                for _ in range(settings.pollers)
            ]
        return pollers

    async def _open_queue(self, sqs: SqsApi, queue: QueueSettings, retry: StartupRetry) -> SqsQueue:
        found = await resolve_queue(sqs, queue, retry)
        url, attributes, dead_letter_url = found.url, found.attributes, found.dead_letter_url
        if dead_letter_url is None:
            redrive = "with" if "RedrivePolicy" in attributes else "WITHOUT"
            log.log(
                self._no_dead_letter_level,
                "queue %s has no dead_letter_queue setting: poison messages are left to the "
                "queue's redrive policy (the queue has been found %s one)",
                queue.name,
                redrive,
            )
        runtime = QueueRuntime(
            settings=queue,
            url=url,
            spec=queue.envelope_spec(),
            dead_letter_url=dead_letter_url,
            visibility_timeout_s=int(attributes.get("VisibilityTimeout", 30)),
            fifo=attributes.get("FifoQueue") == "true",
        )
        return SqsQueue(
            runtime,
            sqs,
            DeleteBatcher(sqs, url, linger_s=self.settings.delete_linger_s),
            park_s=int(self.settings.retry_max_delay_s),
        )

    def _summary(self) -> str:
        parts = [f"{outcome.value}={self.stats.total(outcome)}" for outcome in Outcome]
        return ", ".join(p for p in parts if not p.endswith("=0")) or "no messages"


def configuration_problems(settings: BrokerSettings, router: Router) -> list[ConfigError]:
    """What the broker refuses to start with, before any AWS call (``check`` lists all)."""
    problems = []
    if not settings.queues and not settings.activities:
        problems.append(
            ConfigError(f"{ENV_PREFIX}QUEUES: no queue configured (and no {ENV_PREFIX}ACTIVITIES)")
        )
    problems += activity_route_problems(settings.activities, router)
    problems += idempotency_problems(settings, router)
    return problems + decision_problems(settings, router)
