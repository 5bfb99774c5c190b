"""Start-up calls: one bounded retry budget, and one-line messages for what failed.

A start-up lookup (GetQueueUrl, GetQueueAttributes, the activity lookups) that fails
says whether to fix a name, IAM, the network, or wait; ``check`` and ``run`` read alike.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import anyio
from botocore.exceptions import ClientError, NoCredentialsError

from broker.aws.errors import (
    ErrorKind,
    classify,
    error_name,
    is_access_denied,
    is_not_found,
    is_service_unavailable,
)
from broker.core.errors import AwsAccessDenied, AwsUnavailable, StartupError
from broker.core.settings import ENV_PREFIX, BrokerSettings

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT_S",
    "StartupRetry",
    "describe_aws_error",
    "no_credentials",
]

log = logging.getLogger("broker.aws")

_T = TypeVar("_T")


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
    code = error_name(exc)
    if isinstance(exc, NoCredentialsError):
        return AwsAccessDenied(no_credentials(f"calling {api} for {subject}{in_region}"))
    if is_not_found(exc):
        return not_found(f"{subject} not found{in_region} ({code})")
    if is_service_unavailable(exc):
        return AwsUnavailable(
            f"{subject}: the {_service(client)} service is not available at "
            f"{endpoint or 'the AWS endpoint'} ({code}, HTTP 501 on {api}: "
            f"{_message(exc)}); an emulator serves it only when enabled (LocalStack: "
            "SERVICES)"
        )
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


def _service(client: object) -> str:
    model = getattr(getattr(client, "meta", None), "service_model", None)
    name = getattr(model, "service_name", None)
    return name if isinstance(name, str) else "AWS"


def _message(exc: BaseException) -> str:
    # Only for an answer that says a service is missing: no task token in it.
    message = exc.response.get("Error", {}).get("Message") if isinstance(exc, ClientError) else None
    return str(message or "Not Implemented")[:200]


def no_credentials(doing: str) -> str:
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
                    error_name(exc),
                    failures + 1,
                    delay_s,
                    remaining_s,
                )
                await anyio.sleep(delay_s)
