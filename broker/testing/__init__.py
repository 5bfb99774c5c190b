"""In-memory SQS and Step Functions for testing handlers and the broker without AWS.

The fakes keep the semantics the broker relies on — visibility timeouts, receive
counts, receipt handles, long polls, per-entry batch failures, a closed task answering
``TaskTimedOut``, and the size limits real Step Functions enforces (which neither moto
nor LocalStack does) — and can inject faults and latency.

For handler authors::

    from broker.testing import TestBroker

    async def test_purchase() -> None:
        async with TestBroker(router) as broker:
            token = await broker.start_task({"TransactionType": "PURCHASE"}, message_type="buy")
            await broker.wait_idle()
        assert broker.sfn.outcomes[token].status == "success"
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import orjson
from anyio.abc import TaskGroup
from botocore.exceptions import ClientError

from broker.aws.protocols import AwsClients
from broker.core.settings import BrokerSettings, QueueSettings
from broker.observability.tracing import Tracer
from broker.service import Broker
from broker.sqs.message import MAX_MESSAGE_BYTES, message_size

__all__ = [
    "FakeSfn",
    "FakeSqs",
    "TaskOutcome",
    "TestBroker",
    "client_error",
]

_MAX_OUTPUT_BYTES = 262_144


def client_error(
    code: str, message: str = "", *, status: int = 400, op: str = "Call"
) -> ClientError:
    """A botocore ``ClientError`` as AWS would raise it."""
    response: Any = {
        "Error": {"Code": code, "Message": message or code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, op)


class _Faults:
    """Scripted failures and latency shared by both fakes."""

    def __init__(self) -> None:
        self.latency_s = 0.0
        self.calls: Counter[str] = Counter()
        self._scripted: dict[str, list[BaseException]] = defaultdict(list)
        self._in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()

    def fail_next(self, api: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``api`` (botocore name) raise ``error``."""
        self._scripted[api].extend([error] * times)

    @asynccontextmanager
    async def _call(self, api: str) -> AsyncIterator[None]:
        self.calls[api] += 1
        self._in_flight[api] += 1
        self.max_in_flight[api] = max(self.max_in_flight[api], self._in_flight[api])
        try:
            if self.latency_s:
                await anyio.sleep(self.latency_s)
            if self._scripted[api]:
                raise self._scripted[api].pop(0)
            yield
        finally:
            self._in_flight[api] -= 1


# --------------------------------------------------------------------------- SQS


@dataclass
class _Stored:
    message_id: str
    body: str
    attributes: dict[str, Any]
    group_id: str | None
    sent_at: float
    receive_count: int = 0
    visible_at: float = 0.0
    receipt_handle: str | None = None


@dataclass
class _Queue:
    name: str
    url: str
    visibility_timeout_s: int
    messages: dict[str, _Stored] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)


class FakeSqs(_Faults):
    """An in-memory SQS with the calls the broker makes."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        account: str = "000000000000",
        answer_latency_s: float = 0.0,
    ) -> None:
        super().__init__()
        #: How long a ReceiveMessage answer takes to reach the caller once its messages
        #: are in flight: a poll cancelled meanwhile hides them until their visibility
        #: lapses, as on AWS (the race the broker's drain must not lose).
        self.answer_latency_s = answer_latency_s
        self._base = f"https://sqs.{region}.amazonaws.com/{account}"
        self.queues: dict[str, _Queue] = {}
        self.receive_sizes: list[int] = []
        self.delete_batch_sizes: list[int] = []
        self._ids = itertools.count(1)

    # -- set-up helpers (synchronous, not part of the SQS API)
    def create_queue(self, name: str, *, visibility_timeout_s: int = 30, **attributes: str) -> str:
        """Create a queue; a name ending in ``.fifo`` makes a FIFO queue."""
        url = f"{self._base}/{name}"
        if name.endswith(".fifo"):
            attributes.setdefault("FifoQueue", "true")
        self.queues[url] = _Queue(name, url, visibility_timeout_s, attributes=dict(attributes))
        return url

    def url_of(self, name: str) -> str:
        return f"{self._base}/{name}"

    def put(
        self,
        queue: str,
        body: str | bytes,
        attributes: Mapping[str, str] | None = None,
        *,
        group_id: str | None = None,
    ) -> str:
        """Add a message directly (no latency, no faults); returns its id."""
        stored = self._queue(self._url(queue))
        message_id = f"m-{next(self._ids):06d}"
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        stored.messages[message_id] = _Stored(
            message_id,
            text,
            {k: {"DataType": "String", "StringValue": v} for k, v in (attributes or {}).items()},
            group_id,
            sent_at=anyio.current_time(),
        )
        return message_id

    def visible(self, queue: str) -> int:
        now = anyio.current_time()
        return sum(
            1 for m in self._queue(self._url(queue)).messages.values() if m.visible_at <= now
        )

    def due(self, queue: str, within_s: float) -> int:
        """Messages visible now or again within ``within_s`` (a retry waiting its backoff)."""
        by = anyio.current_time() + within_s
        return sum(1 for m in self._queue(self._url(queue)).messages.values() if m.visible_at <= by)

    def count(self, queue: str) -> int:
        """Messages in the queue, visible or in flight."""
        return len(self._queue(self._url(queue)).messages)

    def bodies(self, queue: str) -> list[str]:
        return [m.body for m in self._queue(self._url(queue)).messages.values()]

    def messages(self, queue: str) -> list[_Stored]:
        return list(self._queue(self._url(queue)).messages.values())

    # -- the SQS API
    async def get_queue_url(self, *, QueueName: str) -> dict[str, Any]:
        async with self._call("get_queue_url"):
            url = self.url_of(QueueName)
            self._queue(url)
            return {"QueueUrl": url}

    async def get_queue_attributes(
        self,
        *,
        QueueUrl: str,
        AttributeNames: Sequence[str] = (),
    ) -> dict[str, Any]:
        async with self._call("get_queue_attributes"):
            queue = self._queue(QueueUrl)
            return {
                "Attributes": {
                    "VisibilityTimeout": str(queue.visibility_timeout_s),
                    "ApproximateNumberOfMessages": str(len(queue.messages)),
                    **queue.attributes,
                }
            }

    async def send_message(
        self,
        *,
        QueueUrl: str,
        MessageBody: str,
        MessageAttributes: Mapping[str, Any] | None = None,
        MessageGroupId: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        async with self._call("send_message"):
            if len(MessageAttributes or {}) > 10:
                raise client_error("InvalidParameterValue", "too many message attributes")
            if message_size(MessageBody, MessageAttributes or {}) > MAX_MESSAGE_BYTES:
                raise client_error(
                    "InvalidParameterValue",
                    "One or more parameters are invalid. Reason: Message must be shorter "
                    f"than {MAX_MESSAGE_BYTES} bytes.",
                )
            queue = self._queue(QueueUrl)
            message_id = f"m-{next(self._ids):06d}"
            queue.messages[message_id] = _Stored(
                message_id,
                MessageBody,
                dict(MessageAttributes or {}),
                MessageGroupId,
                sent_at=anyio.current_time(),
            )
            return {"MessageId": message_id}

    async def send_message_batch(
        self,
        *,
        QueueUrl: str,
        Entries: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        if not 1 <= len(Entries) <= 10:
            raise client_error("TooManyEntriesInBatchRequest", "1..10 entries")
        successful = []
        for entry in Entries:
            sent = await self.send_message(
                QueueUrl=QueueUrl,
                MessageBody=entry["MessageBody"],
                MessageAttributes=entry.get("MessageAttributes"),
                MessageGroupId=entry.get("MessageGroupId"),
            )
            successful.append({"Id": entry["Id"], "MessageId": sent["MessageId"]})
        return {"Successful": successful, "Failed": []}

    async def receive_message(
        self,
        *,
        QueueUrl: str,
        MaxNumberOfMessages: int = 1,
        WaitTimeSeconds: int = 0,
        VisibilityTimeout: int | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        if not 1 <= MaxNumberOfMessages <= 10:
            raise client_error("InvalidParameterValue", "MaxNumberOfMessages must be 1..10")
        self.receive_sizes.append(MaxNumberOfMessages)
        async with self._call("receive_message"):
            queue = self._queue(QueueUrl)
            deadline = anyio.current_time() + WaitTimeSeconds
            while True:
                now = anyio.current_time()
                ready = self._deliverable(queue, now)
                if ready or now >= deadline:
                    break
                await anyio.sleep(min(0.005, deadline - now))
            out = []
            for stored in ready[:MaxNumberOfMessages]:
                stored.receive_count += 1
                stored.receipt_handle = uuid.uuid4().hex
                timeout_s = (
                    VisibilityTimeout
                    if VisibilityTimeout is not None
                    else queue.visibility_timeout_s
                )
                stored.visible_at = now + timeout_s
                system = {"ApproximateReceiveCount": str(stored.receive_count)}
                if stored.group_id:
                    system["MessageGroupId"] = stored.group_id
                raw: dict[str, Any] = {
                    "MessageId": stored.message_id,
                    "ReceiptHandle": stored.receipt_handle,
                    "Body": stored.body,
                    "Attributes": system,
                }
                if stored.attributes:
                    raw["MessageAttributes"] = stored.attributes
                out.append(raw)
            if out and self.answer_latency_s:
                await anyio.sleep(self.answer_latency_s)
            return {"Messages": out} if out else {}

    async def delete_message_batch(
        self,
        *,
        QueueUrl: str,
        Entries: Sequence[Mapping[str, str]],
    ) -> dict[str, Any]:
        async with self._call("delete_message_batch"):
            if not 1 <= len(Entries) <= 10:
                raise client_error("TooManyEntriesInBatchRequest", "1..10 entries")
            self.delete_batch_sizes.append(len(Entries))
            queue = self._queue(QueueUrl)
            successful, failed = [], []
            for entry in Entries:
                found = self._by_handle(queue, entry["ReceiptHandle"])
                if found is None:
                    failed.append(
                        {"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True}
                    )
                else:
                    del queue.messages[found.message_id]
                    successful.append({"Id": entry["Id"]})
            return {"Successful": successful, "Failed": failed}

    async def change_message_visibility(
        self,
        *,
        QueueUrl: str,
        ReceiptHandle: str,
        VisibilityTimeout: int,
    ) -> dict[str, Any]:
        async with self._call("change_message_visibility"):
            found = self._by_handle(self._queue(QueueUrl), ReceiptHandle)
            if found is None:
                raise client_error("ReceiptHandleIsInvalid")
            found.visible_at = anyio.current_time() + VisibilityTimeout
            return {}

    async def change_message_visibility_batch(
        self,
        *,
        QueueUrl: str,
        Entries: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        async with self._call("change_message_visibility_batch"):
            if not 1 <= len(Entries) <= 10:
                raise client_error("TooManyEntriesInBatchRequest", "1..10 entries")
            queue = self._queue(QueueUrl)
            successful, failed = [], []
            for entry in Entries:
                found = self._by_handle(queue, entry["ReceiptHandle"])
                if found is None:
                    failed.append(
                        {"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True}
                    )
                else:
                    found.visible_at = anyio.current_time() + int(entry["VisibilityTimeout"])
                    successful.append({"Id": entry["Id"]})
            return {"Successful": successful, "Failed": failed}

    def _url(self, queue: str) -> str:
        return queue if queue.startswith("https://") else self.url_of(queue)

    def _queue(self, url: str) -> _Queue:
        try:
            return self.queues[url]
        except KeyError:
            raise client_error(
                "AWS.SimpleQueueService.NonExistentQueue", "The specified queue does not exist."
            ) from None

    @staticmethod
    def _deliverable(queue: _Queue, now: float) -> list[_Stored]:
        if queue.attributes.get("FifoQueue") != "true":
            return [m for m in queue.messages.values() if m.visible_at <= now]
        # FIFO: in send order, and nothing of a group while one of its messages is in flight.
        ready, blocked = [], set()
        for stored in queue.messages.values():
            if stored.group_id in blocked:
                continue
            if stored.visible_at > now:
                blocked.add(stored.group_id)
            else:
                ready.append(stored)
        return ready

    @staticmethod
    def _by_handle(queue: _Queue, handle: str) -> _Stored | None:
        return next((m for m in queue.messages.values() if m.receipt_handle == handle), None)


# --------------------------------------------------------------------- Step Functions


@dataclass
class TaskOutcome:
    """What a fake task was completed with (the first completion wins, as in AWS)."""

    status: Literal["success", "failure"]
    output: Any = None
    error: str | None = None
    cause: str | None = None


@dataclass
class _Activity:
    name: str
    arn: str
    #: Tasks scheduled and not yet handed out: (token, input JSON).
    waiting: list[tuple[str, str]] = field(default_factory=list)
    #: workerName of each GetActivityTask call, in call order.
    workers: list[str | None] = field(default_factory=list)


class FakeSfn(_Faults):
    """Step Functions' task-token and activity API, with AWS's validation and closed-task
    answers.  ``GetActivityTask`` long-polls for ``activity_poll_s`` (AWS: 60 s)."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        account: str = "000000000000",
        activity_poll_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.outcomes: dict[str, TaskOutcome] = {}
        self.heartbeats: Counter[str] = Counter()
        #: Completions answered TaskTimedOut because the task was already closed.
        self.duplicates = 0
        self.activities: dict[str, _Activity] = {}
        self.activity_poll_s = activity_poll_s
        #: Tokens handed out by GetActivityTask, in order.
        self.handed_out: list[str] = []
        self._arn_prefix = f"arn:aws:states:{region}:{account}:activity:"
        self._tokens = itertools.count(1)

    # -- activities: set-up helpers (synchronous, not part of the API)
    def add_activity(self, name: str) -> str:
        arn = self._arn_prefix + name
        self.activities.setdefault(arn, _Activity(name, arn))
        return arn

    def schedule_activity_task(self, activity: str, input: Any) -> str:
        """Schedule a task on ``activity`` (name or ARN) as a state machine would."""
        token = self.new_token()
        self._activity(activity).waiting.append((token, orjson.dumps(input).decode()))
        return token

    def waiting_activity_tasks(self) -> int:
        return sum(len(activity.waiting) for activity in self.activities.values())

    def _activity(self, name_or_arn: str) -> _Activity:
        arn = name_or_arn if name_or_arn.startswith("arn:") else self._arn_prefix + name_or_arn
        try:
            return self.activities[arn]
        except KeyError:
            raise client_error("ActivityDoesNotExist", f"Activity does not exist: {arn}") from None

    # -- activities: the API
    async def create_activity(self, *, name: str, **_: Any) -> dict[str, Any]:
        async with self._call("create_activity"):
            # Idempotent, as on AWS: the same name answers the same ARN.
            return {"activityArn": self.add_activity(name)}

    async def describe_activity(self, *, activityArn: str) -> dict[str, Any]:
        async with self._call("describe_activity"):
            activity = self._activity(activityArn)
            return {"activityArn": activity.arn, "name": activity.name}

    async def list_activities(self, *, nextToken: str | None = None, **_: Any) -> dict[str, Any]:
        async with self._call("list_activities"):
            return {
                "activities": [
                    {"activityArn": a.arn, "name": a.name} for a in self.activities.values()
                ]
            }

    async def get_activity_task(
        self, *, activityArn: str, workerName: str | None = None
    ) -> dict[str, Any]:
        async with self._call("get_activity_task"):
            activity = self._activity(activityArn)
            activity.workers.append(workerName)
            deadline = anyio.current_time() + self.activity_poll_s
            while True:
                now = anyio.current_time()
                if activity.waiting or now >= deadline:
                    break
                await anyio.sleep(min(0.005, deadline - now))
            if not activity.waiting:
                return {}  # AWS: no taskToken when no task came within the poll
            token, input_json = activity.waiting.pop(0)
            self.handed_out.append(token)
            return {"taskToken": token, "input": input_json}

    def new_token(self) -> str:
        # Long and opaque like the real thing, so leak checks have something to find.
        return f"AQB{next(self._tokens):08d}" + uuid.uuid4().hex * 8

    def close(self, token: str) -> None:
        """Mark a task closed (timed out) so later calls answer TaskTimedOut."""
        self.outcomes[token] = TaskOutcome("failure", error="States.Timeout")

    async def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        async with self._call("send_task_success"):
            self._check_open(taskToken)
            if len(output.encode("utf-8")) > _MAX_OUTPUT_BYTES:
                raise client_error("ValidationException", "output too long")
            try:
                parsed = orjson.loads(output)
            except orjson.JSONDecodeError:
                raise client_error("InvalidOutput", "output is not valid JSON") from None
            self.outcomes[taskToken] = TaskOutcome("success", output=parsed)
            return {}

    async def send_task_failure(
        self,
        *,
        taskToken: str,
        error: str = "",
        cause: str = "",
    ) -> dict[str, Any]:
        async with self._call("send_task_failure"):
            self._check_open(taskToken)
            if len(error) > 256 or len(cause) > 32_768:
                raise client_error("ValidationException", "error or cause too long")
            self.outcomes[taskToken] = TaskOutcome("failure", error=error, cause=cause)
            return {}

    async def send_task_heartbeat(self, *, taskToken: str) -> dict[str, Any]:
        async with self._call("send_task_heartbeat"):
            self._check_open(taskToken)
            self.heartbeats[taskToken] += 1
            return {}

    def _check_open(self, token: str) -> None:
        if not 1 <= len(token) <= 2048:
            raise client_error("ValidationException", "taskToken length")
        if token in self.outcomes:
            self.duplicates += 1
            raise client_error("TaskTimedOut", "Task Timed Out")


# ------------------------------------------------------------------------- TestBroker


class TestBroker:
    """The real ``Broker`` on in-memory fakes.  An async context manager.

    ``settings`` defaults to one queue named ``"tasks"`` with a short long-poll and no
    retry backoff (``retry_base_delay_s`` 0): a handler that raises is retried at once,
    so a test of the retry path, or of attempts running out, takes milliseconds.  The
    other settings keep their defaults: a message the broker sets aside (poison without
    a dead-letter queue, a completion never confirmed) stays hidden for
    ``retry_max_delay_s``.  The fakes keep real time (speeding their clock up would also
    shorten the visibility timeouts a running handler relies on); pass your own settings
    to run with the production backoff (1 to 2 s before the first retry, doubling after)
    and give ``wait_idle`` a ``timeout_s`` that covers it.

    Tracing is off unless ``tracer_provider`` (an OpenTelemetry ``TracerProvider``) is
    given, whatever the environment says.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        router: Any,
        settings: BrokerSettings | None = None,
        *,
        sqs: FakeSqs | None = None,
        sfn: FakeSfn | None = None,
        tracer_provider: Any = None,
    ) -> None:
        settings = settings or BrokerSettings(
            queues=(QueueSettings(name="tasks", wait_time_s=1),),
            entry_points=False,
            delete_linger_s=0.01,
            retry_base_delay_s=0,
        )
        if "http_port" not in settings.model_fields_set:
            # Many test brokers run at once: no HTTP server unless a test asks for one.
            settings = settings.model_copy(update={"http_port": None})
        self.settings = settings
        self.sqs = sqs or FakeSqs()
        self.sfn = sfn or FakeSfn()
        for queue in self.settings.queues:
            for name in (queue.name, queue.dead_letter_queue):
                if name and self.sqs._url(name) not in self.sqs.queues:
                    self.sqs.create_queue(name.rsplit("/", 1)[-1])
        for activity in self.settings.activities:
            if not activity.create_if_missing and not activity.name.startswith("arn:"):
                self.sfn.add_activity(activity.name)
        self.broker = Broker(
            self.settings, router, clients=self._clients, tracer=Tracer(tracer_provider)
        )
        self._group: TaskGroup | None = None

    @asynccontextmanager
    async def _clients(self, _: BrokerSettings) -> AsyncIterator[AwsClients]:
        yield AwsClients(sqs=self.sqs, sfn=self.sfn)

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
