"""The four AWS doubles behind one face, so that one test runs against each of them.

Tests talk to ``double.sqs`` / ``double.sfn`` with the broker's own call shapes
(``SqsApi`` / ``SfnApi``: botocore keyword arguments, botocore's answers and errors).
What differs is how a double is set up: how a queue is made, how a task becomes open
(a token the double will accept once), how an activity task is scheduled.  A double
that cannot show a behaviour says why (``lacks``), and the test skips with that reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ClassVar

import aioboto3
import anyio
import pytest
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from awsstub import StubControl, StubServer
from broker.aws.clients import lean_clients
from broker.aws.protocols import SfnApi, SqsApi
from broker.testing import FakeSfn, FakeSqs

ROLE_ARN = "arn:aws:iam::000000000000:role/contract"

#: Behaviours a double may lack, by name (the reason is the double's own).
FIFO = "fifo"
ACTIVITIES = "activities"
IDLE_ACTIVITY_POLL = "idle_activity_poll"
INVALID_OUTPUT = "invalid_output"
ACTIVITY_API = "activity_api"
IDEMPOTENT_CREATE_ACTIVITY = "idempotent_create_activity"
FAILURE_ON_CLOSED = "failure_on_closed"

_EMULATORS_ACCEPT_FAILURE = (
    "{} accepts SendTaskFailure on a closed task (measured; AWS answers TaskTimedOut)"
)


class Double:
    """One AWS double: its clients, its set-up, and what it cannot show."""

    name = ""
    lacks: ClassVar[Mapping[str, str]] = {}

    def __init__(self, sqs: SqsApi, sfn: SfnApi) -> None:
        self.sqs = sqs
        self.sfn = sfn

    async def create_queue(
        self, name: str, *, visibility_timeout_s: int = 30, fifo: bool = False
    ) -> str:
        raise NotImplementedError

    async def open_task(self) -> str:
        """A task token the double will take one completion for."""
        raise NotImplementedError

    async def create_activity(self, name: str) -> str:
        response = await self.sfn.create_activity(name=name)
        return str(response["activityArn"])

    async def schedule_activity_task(self, activity_arn: str, task_input: Any) -> None:
        raise NotImplementedError


class Fakes(Double):
    """``broker.testing``'s FakeSqs and FakeSfn, called directly."""

    name = "fakes"

    def __init__(self) -> None:
        self.fake_sqs = FakeSqs()
        self.fake_sfn = FakeSfn(activity_poll_s=0.5)
        super().__init__(self.fake_sqs, self.fake_sfn)

    async def create_queue(
        self, name: str, *, visibility_timeout_s: int = 30, fifo: bool = False
    ) -> str:
        attributes = {"FifoQueue": "true"} if fifo else {}
        return self.fake_sqs.create_queue(
            name, visibility_timeout_s=visibility_timeout_s, **attributes
        )

    async def open_task(self) -> str:
        return self.fake_sfn.new_token()

    async def schedule_activity_task(self, activity_arn: str, task_input: Any) -> None:
        self.fake_sfn.schedule_activity_task(activity_arn, task_input)


def _client_config() -> AioConfig:
    # One attempt: a double's first answer is what the contract is about.
    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
    )


@functools.cache
def _session() -> aioboto3.Session:
    # One session for the whole run: it caches the service models (about 0.4 s a client
    # otherwise); each test still gets clients of its own.
    return aioboto3.Session(
        region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


@asynccontextmanager
async def _clients(endpoint_url: str) -> AsyncIterator[tuple[SqsApi, SfnApi]]:
    session = _session()
    config = _client_config()
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(
            session.client("sqs", endpoint_url=endpoint_url, config=config)
        )
        sfn = await stack.enter_async_context(
            session.client("stepfunctions", endpoint_url=endpoint_url, config=config)
        )
        # The broker's default path: the hot calls lean, the rest on these clients.
        lean = await lean_clients(session, sqs, sfn)
        yield lean.sqs, lean.sfn


class _Emulator(Double):
    """SQS and Step Functions over HTTP with aioboto3 (moto, LocalStack)."""

    def __init__(self, sqs: SqsApi, sfn: SfnApi) -> None:
        super().__init__(sqs, sfn)
        # The same clients, for the set-up calls the broker never makes (no protocol has them).
        self._admin_sqs: Any = sqs
        self._admin_sfn: Any = sfn
        self._callback: tuple[str, str] | None = None  # queue URL, state machine ARN
        self._activity_machines: dict[str, str] = {}

    async def create_queue(
        self, name: str, *, visibility_timeout_s: int = 30, fifo: bool = False
    ) -> str:
        attributes = {"VisibilityTimeout": str(visibility_timeout_s)}
        if fifo:
            attributes["FifoQueue"] = "true"
        response = await self._admin_sqs.create_queue(QueueName=name, Attributes=attributes)
        return str(response["QueueUrl"])

    async def _state_machine(self, name: str, states: dict[str, Any]) -> str:
        definition = json.dumps({"StartAt": "Task", "States": {"Task": states}})
        response = await self._admin_sfn.create_state_machine(
            name=name, definition=definition, roleArn=ROLE_ARN
        )
        return str(response["stateMachineArn"])

    async def open_task(self) -> str:
        # A real task: an execution waiting on `.waitForTaskToken`, its token read from
        # the message Step Functions sent (the only way an emulator hands one out).
        if self._callback is None:
            suffix = uuid.uuid4().hex[:8]
            url = await self.create_queue(f"contract-callback-{suffix}")
            machine = await self._state_machine(
                f"contract-callback-{suffix}",
                {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                    "Parameters": {
                        "QueueUrl": url,
                        "MessageBody": {"input.$": "$", "TaskToken.$": "$$.Task.Token"},
                    },
                    "HeartbeatSeconds": 120,
                    "TimeoutSeconds": 300,
                    "End": True,
                },
            )
            self._callback = (url, machine)
        url, machine = self._callback
        await self._admin_sfn.start_execution(
            stateMachineArn=machine, name=uuid.uuid4().hex, input="{}"
        )
        with anyio.fail_after(30):
            while True:
                response = await self.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5
                )
                for message in response.get("Messages", []):
                    await self.sqs.delete_message_batch(
                        QueueUrl=url,
                        Entries=[{"Id": "0", "ReceiptHandle": message["ReceiptHandle"]}],
                    )
                    return str(json.loads(message["Body"])["TaskToken"])

    async def schedule_activity_task(self, activity_arn: str, task_input: Any) -> None:
        machine = self._activity_machines.get(activity_arn)
        if machine is None:
            machine = await self._state_machine(
                f"contract-activity-{uuid.uuid4().hex[:8]}",
                {
                    "Type": "Task",
                    "Resource": activity_arn,
                    # Both emulators refuse heartbeats on a state without HeartbeatSeconds.
                    "HeartbeatSeconds": 120,
                    "TimeoutSeconds": 300,
                    "End": True,
                },
            )
            self._activity_machines[activity_arn] = machine
        await self._admin_sfn.start_execution(
            stateMachineArn=machine, name=uuid.uuid4().hex, input=json.dumps(task_input)
        )


class Moto(_Emulator):
    name = "moto"
    lacks: ClassVar[Mapping[str, str]] = {
        ACTIVITIES: "moto does not implement GetActivityTask",
        IDLE_ACTIVITY_POLL: "moto does not implement GetActivityTask",
        IDEMPOTENT_CREATE_ACTIVITY: (
            "moto answers a second CreateActivity of a name ActivityAlreadyExists (AWS: idempotent)"
        ),
        INVALID_OUTPUT: "moto takes any output string, JSON or not",
        FAILURE_ON_CLOSED: _EMULATORS_ACCEPT_FAILURE.format("moto"),
    }


class LocalStack(_Emulator):
    name = "localstack"
    lacks: ClassVar[Mapping[str, str]] = {
        IDLE_ACTIVITY_POLL: (
            "LocalStack's GetActivityTask holds an idle poll for its full 60 s (measured: "
            "more than 8 s), too long for this suite"
        ),
        INVALID_OUTPUT: "LocalStack takes any output string, JSON or not",
        FAILURE_ON_CLOSED: _EMULATORS_ACCEPT_FAILURE.format("LocalStack"),
    }


class Stub(Double):
    """The loopback stub (``awsstub``), in this event loop, over aioboto3."""

    name = "stub"
    lacks: ClassVar[Mapping[str, str]] = {
        FIFO: "the stub has standard queues only",
        ACTIVITIES: "the stub does not implement GetActivityTask",
        IDLE_ACTIVITY_POLL: "the stub does not implement GetActivityTask",
        ACTIVITY_API: "the stub does not implement the activity API",
        IDEMPOTENT_CREATE_ACTIVITY: "the stub does not implement the activity API",
    }

    def __init__(self, server: StubServer, sqs: SqsApi, sfn: SfnApi) -> None:
        super().__init__(sqs, sfn)
        self._admin_sqs: Any = sqs
        self.control = StubControl(server.endpoint_url)

    async def create_queue(
        self, name: str, *, visibility_timeout_s: int = 30, fifo: bool = False
    ) -> str:
        assert not fifo, self.lacks[FIFO]
        response = await self._admin_sqs.create_queue(
            QueueName=name, Attributes={"VisibilityTimeout": str(visibility_timeout_s)}
        )
        return str(response["QueueUrl"])

    async def open_task(self) -> str:
        # The control client blocks and the stub answers on this loop: call it from a thread.
        token = "AQB" + secrets.token_urlsafe(96)
        message = {"body": "{}", "token": token}
        await asyncio.to_thread(self.control.add_messages, "contract-tokens", [message])
        return token


def require(double: Double, behaviour: str) -> None:
    """Skip, with the double's reason, a test of a behaviour it does not have."""
    reason = double.lacks.get(behaviour)
    if reason is not None:
        pytest.skip(reason)


def client_error_code(exc: BaseException) -> str:
    assert isinstance(exc, ClientError), f"not a ClientError: {exc!r}"
    return str(exc.response.get("Error", {}).get("Code"))


@asynccontextmanager
async def emulator(kind: type[_Emulator], endpoint_url: str) -> AsyncIterator[_Emulator]:
    async with _clients(endpoint_url) as (sqs, sfn):
        yield kind(sqs, sfn)


@asynccontextmanager
async def stub() -> AsyncIterator[Stub]:
    async with StubServer() as server, _clients(server.endpoint_url) as (sqs, sfn):
        yield Stub(server, sqs, sfn)
