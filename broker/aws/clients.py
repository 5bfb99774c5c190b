"""The AWS seam: the few client calls the broker makes, and how their errors are read.

The broker talks to SQS and Step Functions only through the two protocols below, so
tests (and the benchmarks) can swap the network for a fake.  ``open_clients`` builds
the real ones with aioboto3; every botocore error is classified here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Protocol, TypeVar, cast

import aioboto3
import aiohttp
import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError

from broker.aws.fastsfn import FastSfn
from broker.core.errors import AwsAccessDenied, AwsUnavailable, ConfigError, StartupError
from broker.core.settings import ENV_PREFIX, BrokerSettings

__all__ = [
    "ACTIVITY_POLL_READ_TIMEOUT_S",
    "AwsClients",
    "ErrorKind",
    "SfnApi",
    "SqsApi",
    "StartupRetry",
    "classify",
    "describe_aws_error",
    "error_code",
    "is_access_denied",
    "is_not_found",
    "open_clients",
]

log = logging.getLogger("broker.aws")

_T = TypeVar("_T")


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


# Only these mean "it does not exist": any other refusal must not read "not found".
_NOT_FOUND_CODES = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "ActivityDoesNotExist",
        "ResourceNotFoundException",
    }
)
# The credentials are wrong, expired or not allowed: IAM, not the queue, needs fixing.
_ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "OptInRequired",
        "KMS.AccessDeniedException",
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


def is_not_found(exc: BaseException) -> bool:
    """AWS said the resource does not exist (not: refused, throttled, unreachable)."""
    return error_code(exc) in _NOT_FOUND_CODES


def is_access_denied(exc: BaseException) -> bool:
    """AWS refused the credentials or their permissions."""
    return error_code(exc) in _ACCESS_DENIED_CODES


# -- start-up calls: bounded retry, one-line messages

#: How long start-up calls retry transient errors, all together (BROKER_STARTUP_TIMEOUT_S).
DEFAULT_STARTUP_TIMEOUT_S: Final[float] = BrokerSettings.model_fields["startup_timeout_s"].default
_STARTUP_BASE_DELAY_S: Final = 0.25
_STARTUP_MAX_DELAY_S: Final = 5.0
#: A call made after the deadline passed still gets one try of this long.
_STARTUP_LAST_TRY_S: Final = 10.0


def _where(client: object) -> tuple[str | None, str | None]:
    """The region and endpoint of a botocore client (``None`` for a fake)."""
    meta = getattr(client, "meta", None)
    region = getattr(meta, "region_name", None)
    endpoint = getattr(meta, "endpoint_url", None)
    return (
        region if isinstance(region, str) else None,
        endpoint if isinstance(endpoint, str) else None,
    )


def describe_aws_error(
    exc: BaseException,
    subject: str,
    *,
    api: str,
    client: object = None,
    not_found: type[StartupError] = StartupError,
    retried_s: float | None = None,
) -> StartupError:
    """The one-line error for a failed AWS call about ``subject`` (``"queue 'orders'"``).

    Not found, access denied, no credentials, an unreachable endpoint and transient
    errors that outlasted the deadline each read differently, naming the region or the
    endpoint, so the operator knows whether to fix a name, IAM, the network or wait.
    """
    region, endpoint = _where(client)
    in_region = f" in region {region}" if region else ""
    code = error_code(exc) or type(exc).__name__
    if isinstance(exc, NoCredentialsError):
        return AwsAccessDenied(_no_credentials(f"calling {api} for {subject}{in_region}"))
    if is_not_found(exc):
        return not_found(f"{subject} not found{in_region} ({code})")
    if is_access_denied(exc):
        return AwsAccessDenied(
            f"{subject}: access denied{in_region} ({code} on {api}): the credentials are "
            "invalid or expired, or their IAM policy does not allow this call"
        )
    retried = (
        f"; retried for {retried_s:.1f}s ({ENV_PREFIX}STARTUP_TIMEOUT_S)"
        if retried_s is not None
        else ""
    )
    if classify(exc) is ErrorKind.TRANSIENT:
        if isinstance(exc, ClientError):
            return AwsUnavailable(
                f"{subject}: {api} kept failing with a transient error{in_region} ({code}){retried}"
            )
        kwargs = getattr(exc, "kwargs", None)
        url = kwargs.get("endpoint_url") if isinstance(kwargs, dict) else None
        target = url or endpoint or "the AWS endpoint"
        return AwsUnavailable(
            f"cannot reach {target}{in_region} for {subject} (a transient error: {code} on "
            f"{api}){retried}"
        )
    # Neither a known refusal nor transient: say both, with the code to look up.
    return not_found(f"{subject} not found or not accessible{in_region} ({code} on {api})")


def _no_credentials(doing: str) -> str:
    return (
        f"no AWS credentials found {doing} (the standard chain: AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, the container or instance role)"
    )


class StartupRetry:
    """One bounded retry budget shared by every AWS call of one start-up (or ``check``).

    Start-up calls (GetQueueUrl, GetQueueAttributes, the activity lookups) retry what
    ``classify`` calls transient with jittered exponential backoff until ``timeout_s``
    after the first call; anything else fails at once.  The broker is not ready
    meanwhile.  Activity lookups need this most: the Step Functions client makes a
    single attempt per call.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        *,
        base_delay_s: float = _STARTUP_BASE_DELAY_S,
        max_delay_s: float = _STARTUP_MAX_DELAY_S,
    ) -> None:
        self.timeout_s = timeout_s
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        # Set at the first call: building this needs no running event loop.
        self._deadline: float | None = None

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> StartupRetry:
        return cls(settings.startup_timeout_s)

    async def call(
        self,
        call: Callable[[], Awaitable[_T]],
        *,
        subject: str,
        api: str,
        client: object,
        not_found: type[StartupError],
    ) -> _T:
        """``await call()``, retried while transient; a one-line ``StartupError`` if not."""
        began = time.monotonic()
        if self._deadline is None:
            self._deadline = began + self.timeout_s
        failures = 0
        while True:
            # A hung call is bounded too: the deadline covers the whole start-up.
            budget_s = max(self._deadline - time.monotonic(), _STARTUP_LAST_TRY_S)
            try:
                with anyio.fail_after(budget_s):
                    return await call()
            except Exception as exc:  # every failure is read and translated
                failures += 1
                retried_s = time.monotonic() - began
                if classify(exc) is not ErrorKind.TRANSIENT:
                    raise describe_aws_error(
                        exc, subject, api=api, client=client, not_found=not_found
                    ) from exc
                delay_s = min(self._max_delay_s, self._base_delay_s * 2 ** (failures - 1))
                delay_s *= random.uniform(0.5, 1.0)  # jitter: replicas do not retry in step
                remaining_s = self._deadline - time.monotonic()
                if remaining_s <= delay_s:
                    raise describe_aws_error(
                        exc,
                        subject,
                        api=api,
                        client=client,
                        not_found=not_found,
                        retried_s=retried_s,
                    ) from exc
                log.warning(
                    "start-up: %s for %s failed (%s, transient); try %d in %.1fs, "
                    "giving up in %.0fs",
                    api,
                    subject,
                    error_code(exc) or type(exc).__name__,
                    failures + 1,
                    delay_s,
                    remaining_s,
                )
                await anyio.sleep(delay_s)


@asynccontextmanager
async def open_clients(settings: BrokerSettings) -> AsyncIterator[AwsClients]:
    """Open one SQS and one Step Functions client for the broker's lifetime."""
    session = aioboto3.Session(region_name=settings.aws_region)
    if session.region_name is None:
        # botocore would raise NoRegionError from deep inside client creation.
        raise ConfigError(
            "AWS_REGION: no AWS region set (set AWS_REGION or BROKER_AWS_REGION, or a "
            "region in the AWS config file's profile)"
        )
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
        # The same error (and exit code) as the first botocore call would give.
        raise AwsAccessDenied(
            _no_credentials(f"for {ENV_PREFIX}FAST_COMPLETIONS in region {session.region_name}")
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
