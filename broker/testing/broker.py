"""``TestBroker``: the real ``Broker`` on the in-memory fakes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import orjson
from anyio.abc import TaskGroup
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from broker.aws.protocols import AwsClients
from broker.core.errors import DecisionsNotConfigured
from broker.core.settings import BrokerSettings, QueueSettings
from broker.decisions.links import new_key
from broker.observability.tracing import Tracer
from broker.service import Broker
from broker.testing.dynamodb import FakeDynamoDb
from broker.testing.sfn import FakeSfn
from broker.testing.sns import FakeSns
from broker.testing.sqs import FakeSqs

__all__ = ["TestBroker"]

#: Where TestBroker's decision links point when the settings name no base URL.
_TEST_BASE_URL = "http://broker.test"
#: The decision topic (in ``sns``) when a route has ``notify=True`` and the settings name none.
_TEST_TOPIC = "decisions"
#: The idempotency table (in ``dynamodb``) when a route is ``idempotent=True`` and the
#: settings name none.
_TEST_TABLE = "broker-idempotency"


class _GivenOnly(BrokerSettings):
    """Settings from keyword arguments alone: no environment, no ``.env``, no file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _given_only(settings: BrokerSettings | None) -> BrokerSettings | None:
    """``settings`` without what the environment and ``.env`` put in when they were built:
    a test must pass or fail the same in any shell (one with the local loop's
    ``BROKER_HTTP_PORT`` or ``BROKER_DECISION_TOPIC`` exported, say)."""
    if settings is None or not settings.from_environment():
        return settings
    given = settings.model_fields_set - settings.from_environment()
    return _GivenOnly(**{name: getattr(settings, name) for name in given})


class TestBroker:
    """The real ``Broker`` on in-memory fakes.  An async context manager.

    ``settings`` defaults to one queue named ``"tasks"`` with a short long-poll and no
    retry backoff (``retry_base_delay_s`` 0): a handler that raises is retried at once,
    so a test of the retry path, or of attempts running out, takes milliseconds.  The
    other settings keep their defaults: a message the broker sets aside (poison without
    a dead-letter queue, a completion never confirmed) stays hidden for
    ``retry_max_delay_s``; a queue without ``dead_letter_queue`` is said at INFO, not
    warned about as a deployed one is (name one to test dead-lettering:
    ``tb.sqs.messages("dlq")``).  The fakes keep real time (speeding their clock up would also
    shorten the visibility timeouts a running handler relies on); pass your own settings
    to run with the production backoff (1 to 2 s before the first retry, doubling after)
    and give ``wait_idle`` a ``timeout_s`` that covers it.

    Its settings come only from what the test passes, whatever the shell or a ``.env``
    says: values that ``BROKER_*`` variables put into ``settings`` when it was built are
    left out (the defaults apply), and the default settings read no environment.

    Tracing is off unless ``tracer_provider`` (an OpenTelemetry ``TracerProvider``) is
    given, whatever the environment says.

    Decision links: when a route has ``decisions=True`` and the settings name no
    ``decision_keys``, a fresh key and the base URL ``http://broker.test`` are used; no
    decision listener is opened unless the settings set ``decision_port``.  ``decide``
    answers a link as the endpoint would, without HTTP.  ``task.notify()`` publishes to
    the FakeSns ``sns`` (``tb.sns.published``), to the topic ``decisions`` unless the
    settings name one.  ``idempotent=True`` routes keep their claims and verdicts in the
    FakeDynamoDb ``dynamodb``, in the table ``broker-idempotency`` unless the settings
    name one (``tb.dynamodb.items(table)``).  Two TestBrokers given the same ``sqs``,
    ``sfn`` and ``dynamodb`` (with ``dynamodb.add_table(...)`` done) play two replicas.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        router: Any,
        settings: BrokerSettings | None = None,
        *,
        sqs: FakeSqs | None = None,
        sfn: FakeSfn | None = None,
        sns: FakeSns | None = None,
        dynamodb: FakeDynamoDb | None = None,
        tracer_provider: Any = None,
    ) -> None:
        settings = _given_only(settings) or _GivenOnly(
            queues=(QueueSettings(name="tasks", wait_time_s=1),),
            entry_points=False,
            delete_linger_s=0.01,
            retry_base_delay_s=0,
        )
        if "http_port" not in settings.model_fields_set:
            # Many test brokers run at once: no HTTP server unless a test asks for one.
            settings = settings.model_copy(update={"http_port": None})
        if "decision_port" not in settings.model_fields_set:
            settings = settings.model_copy(update={"decision_port": None})
        if not settings.decision_keys and any(route.options.decisions for route in router):
            settings = settings.model_copy(
                update={
                    "decision_keys": (SecretStr(new_key()),),
                    "decision_base_url": settings.decision_base_url or _TEST_BASE_URL,
                }
            )
        self.settings = settings
        self.sqs = sqs or FakeSqs()
        self.sfn = sfn or FakeSfn()
        if not self.settings.decision_topic and any(route.options.notify for route in router):
            self.settings = self.settings.model_copy(update={"decision_topic": _TEST_TOPIC})
        self.sns = sns or FakeSns()
        topic = self.settings.decision_topic
        if sns is None and topic and not topic.startswith("arn:"):
            # The decision topic the settings name exists, unless the test brings its
            # own FakeSns (to start without it, say).
            self.sns.add_topic(topic)
        if not self.settings.idempotency_table and any(
            route.options.idempotent for route in router
        ):
            self.settings = self.settings.model_copy(update={"idempotency_table": _TEST_TABLE})
        self.dynamodb = dynamodb or FakeDynamoDb()
        table = self.settings.idempotency_table
        if dynamodb is None and table:
            # As with the topic: the table the settings name exists, unless the test
            # brings its own FakeDynamoDb.
            self.dynamodb.add_table(table)
        for queue in self.settings.queues:
            for name in (queue.name, queue.dead_letter_queue):
                if name and self.sqs._url(name) not in self.sqs.queues:
                    self.sqs.create_queue(name.rsplit("/", 1)[-1])
        for activity in self.settings.activities:
            if not activity.create_if_missing and not activity.name.startswith("arn:"):
                self.sfn.add_activity(activity.name)
        self.broker = Broker(
            self.settings,
            router,
            clients=self._clients,
            tracer=Tracer(tracer_provider),
            # The queues here are made for this test, not deployed: a queue without a
            # dead-letter queue is the test's choice (poison messages are parked, as
            # the class says), not a deployment mistake to warn every test about.
            no_dead_letter_level=logging.INFO,
        )
        self._group: TaskGroup | None = None

    @asynccontextmanager
    async def _clients(self, _: BrokerSettings) -> AsyncIterator[AwsClients]:
        yield AwsClients(sqs=self.sqs, sfn=self.sfn, sns=self.sns, dynamodb=self.dynamodb)

    async def __aenter__(self) -> Self:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        await self._group.start(self._run)
        return self

    async def _run(self, *, task_status: Any) -> None:
        await self.broker.run(task_status=task_status)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.broker.request_stop()
        assert self._group is not None
        return await self._group.__aexit__(exc_type, exc, tb)

    async def start_task(
        self,
        payload: Any,
        *,
        message_type: str | None = None,
        queue: str | None = None,
        token_field: str = "TaskToken",  # noqa: S107 - a field name
        payload_field: str = "input",
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """Put a callback message the way a state machine would; returns its token."""
        token = self.sfn.new_token()
        body: dict[str, Any] = {payload_field: payload, token_field: token}
        message_attributes = dict(attributes or {})
        if message_type is not None:
            message_attributes.setdefault("type", message_type)
        self.sqs.put(queue or self.settings.queues[0].name, orjson.dumps(body), message_attributes)
        return token

    def start_activity_task(self, input: Any, *, activity: str | None = None) -> str:
        """Schedule an activity task the way a state machine would; returns its token."""
        name = activity or self.settings.activities[0].name
        return self.sfn.schedule_activity_task(name, input)

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no handler runs and no message of a consumed queue is visible or
        due back within ``timeout_s`` (deletes flushed).

        A message a handler's exception sent back with a backoff is hidden, not settled:
        it counts as work until it has been redelivered and settled, if its backoff ends
        within the timeout.  A message hidden for longer (a completion Step Functions
        never confirmed waits out ``retry_max_delay_s``) is left to its visibility
        timeout.  ``TimeoutError`` if the broker is still busy after ``timeout_s``.
        """
        deadline = anyio.current_time() + timeout_s
        with anyio.fail_after(timeout_s):
            while True:
                await anyio.sleep(0.02)
                left_s = deadline - anyio.current_time()
                busy = (
                    self.broker.in_flight
                    or self.sfn.waiting_activity_tasks()
                    or any(self.sqs.due(q.name, left_s) for q in self.settings.queues)
                )
                if not busy:
                    # One linger more, so the last deletes are flushed.
                    await anyio.sleep(self.settings.delete_linger_s + 0.05)
                    if not self.broker.in_flight:
                        return

    async def decide(self, url_or_blob: str, *, method: str = "POST") -> int:
        """Answer a decision link as the decision endpoint would, without HTTP: the
        status it would send (200, 403, 405, 409, 410, 503).  POST decides through the
        broker's completer, so ``sfn.outcomes`` shows the decision afterwards."""
        decisions = self.broker.decisions
        if decisions is None:
            raise DecisionsNotConfigured(
                "TestBroker.decide: no decision keys (register a decisions=True route, or "
                "set decision_keys) and a running broker"
            )
        answer = await decisions.answer(method.upper(), decisions.codec.blob_of(url_or_blob))
        return answer.http_status
