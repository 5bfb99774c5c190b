"""The AWS seam: the few client calls the broker makes, and how their errors are read.

The broker talks to SQS and Step Functions only through the two protocols below, so
tests (and the benchmarks) can swap the network for a fake.  ``open_clients`` builds
the real ones with aioboto3; every botocore error is classified here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol, cast

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

from ._errors import ConfigError
from ._fastsfn import FastSfn
from ._settings import BrokerSettings

__all__ = [
    "ACTIVITY_POLL_READ_TIMEOUT_S",
    "AwsClients",
    "ErrorKind",
    "SfnApi",
    "SqsApi",
    "classify",
    "error_code",
    "open_clients",
]


# Read-only callables rather than methods, so that any keyword signature (botocore's
# client, a fake with explicit parameters) satisfies the protocol.
_Call = Callable[..., Awaitable[Mapping[str, Any]]]

#: GetActivityTask answers within 60 s; the read timeout must be longer.
ACTIVITY_POLL_READ_TIMEOUT_S: Final = 70


class SqsApi(Protocol):
    """The SQS calls the broker makes (keyword arguments as in botocore)."""

    @property
    def get_queue_url(self) -> _Call: ...
    @property
    def get_queue_attributes(self) -> _Call: ...
    @property
    def receive_message(self) -> _Call: ...
    @property
    def delete_message_batch(self) -> _Call: ...
    @property
    def change_message_visibility(self) -> _Call: ...
    @property
    def change_message_visibility_batch(self) -> _Call: ...
    @property
    def send_message(self) -> _Call: ...
    @property
    def send_message_batch(self) -> _Call: ...


class SfnApi(Protocol):
    """The Step Functions calls the broker makes."""

    @property
    def send_task_success(self) -> _Call: ...
    @property
    def send_task_failure(self) -> _Call: ...
    @property
    def send_task_heartbeat(self) -> _Call: ...
    @property
    def get_activity_task(self) -> _Call: ...
    @property
    def describe_activity(self) -> _Call: ...
    @property
    def list_activities(self) -> _Call: ...
    @property
    def create_activity(self) -> _Call: ...


@dataclass(frozen=True, slots=True)
class AwsClients:
    sqs: SqsApi
    sfn: SfnApi
    #: A Step Functions client for GetActivityTask's minute-long poll (default: ``sfn``).
    sfn_poll: SfnApi | None = None

    @property
    def activity_sfn(self) -> SfnApi:
        return self.sfn_poll if self.sfn_poll is not None else self.sfn


class ErrorKind(Enum):
    """What an AWS error means for the caller."""

    #: The task is closed already (completed, timed out) or never existed.
    TASK_CLOSED = "task_closed"
    #: Throttling, 5xx or a network failure: the same call may succeed later.
    TRANSIENT = "transient"
    #: Step Functions refused the output (``InvalidOutput``).
    INVALID_OUTPUT = "invalid_output"
    #: Anything else: a bug, a permission, a bad request.  Retrying will not help.
    PERMANENT = "permanent"


# Both emulators answer InvalidToken where AWS answers TaskTimedOut for a closed task.
_TASK_CLOSED_CODES = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, else ``None``."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def classify(exc: BaseException) -> ErrorKind:
    """Decide what an exception from an AWS call means.  The one place that knows."""
    if isinstance(exc, ClientError):
        code = error_code(exc) or ""
        if code in _TASK_CLOSED_CODES:
            return ErrorKind.TASK_CLOSED
        if code == "InvalidOutput":
            return ErrorKind.INVALID_OUTPUT
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            return ErrorKind.TRANSIENT
        return ErrorKind.PERMANENT
    if isinstance(exc, HTTPClientError | ConnectionError | asyncio.TimeoutError | TimeoutError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, BotoCoreError) and "connect" in type(exc).__name__.lower():
        return ErrorKind.TRANSIENT
    if _is_aiohttp_error(exc):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def _is_aiohttp_error(exc: BaseException) -> bool:
    # aiobotocore wraps most of these, but a few (payload errors on a dropped
    # connection mid-body) surface as aiohttp's own.
    return type(exc).__module__.startswith("aiohttp")


@asynccontextmanager
async def open_clients(settings: BrokerSettings) -> AsyncIterator[AwsClients]:
    """Open one SQS and one Step Functions client for the broker's lifetime."""
    session = aioboto3.Session(region_name=settings.aws_region)
    longest_wait_s = max((queue.wait_time_s for queue in settings.queues), default=20)
    sqs_config = AioConfig(
        # The long poll holds the connection open for up to WaitTimeSeconds.
        read_timeout=longest_wait_s + 10,
        connect_timeout=5,
        max_pool_connections=max(10, 2 * len(settings.queues) + 8),
        retries={"mode": "standard", "total_max_attempts": 3},
    )
    sfn_config = AioConfig(
        read_timeout=15,
        connect_timeout=5,
        max_pool_connections=settings.completion_concurrency + 8,
        # Completions are retried by the broker itself, under its rate limit.
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    pollers = sum(activity.pollers for activity in settings.activities)
    poll_config = AioConfig(
        # GetActivityTask holds the connection for up to 60 s before answering "no task";
        # botocore's default 60 s read timeout would cut that off.  Completions keep
        # their short timeout on the other client.
        read_timeout=ACTIVITY_POLL_READ_TIMEOUT_S,
        connect_timeout=5,
        max_pool_connections=max(10, pollers + 2),
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    endpoint = settings.aws_endpoint_url
    async with (
        session.client("sqs", config=sqs_config, endpoint_url=endpoint) as sqs,
        session.client("stepfunctions", config=sfn_config, endpoint_url=endpoint) as sfn,
        session.client("stepfunctions", config=poll_config, endpoint_url=endpoint) as sfn_poll,
    ):
        if not settings.fast_completions:
            yield AwsClients(
                sqs=cast(SqsApi, sqs), sfn=cast(SfnApi, sfn), sfn_poll=cast(SfnApi, sfn_poll)
            )
            return
        async with _fast_sfn(session, sfn, settings) as fast:
            yield AwsClients(sqs=cast(SqsApi, sqs), sfn=fast, sfn_poll=cast(SfnApi, sfn_poll))


@asynccontextmanager
async def _fast_sfn(
    session: aioboto3.Session, sfn: Any, settings: BrokerSettings
) -> AsyncIterator[SfnApi]:
    """The lean completion client, on the endpoint and credentials botocore resolved."""
    # Typed as synchronous in the stubs; aioboto3 returns a coroutine.
    credentials: Any = await cast(Awaitable[Any], session.get_credentials())
    if credentials is None:
        raise ConfigError(
            "BROKER_FAST_COMPLETIONS: no AWS credentials found (the standard chain is used)"
        )

    async def fresh() -> Any:
        return await credentials.get_frozen_credentials()

    connector = aiohttp.TCPConnector(limit=settings.completion_concurrency + 8)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=15)
    # trust_env: HTTP(S)_PROXY / NO_PROXY apply, as they do to botocore.
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=True) as http:
        yield cast(
            SfnApi,
            FastSfn(http, sfn.meta.endpoint_url, sfn.meta.region_name, fresh, fallback=sfn),
        )
