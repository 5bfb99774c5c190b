"""How AWS errors are read: every error code the broker knows is in this module.

``classify`` decides what a failed call means (closed task, transient, refused output,
permanent); the sets below are the only lists of AWS error codes in ``broker/``.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

__all__ = [
    "HEARTBEAT_CLOSED_CODES",
    "ErrorKind",
    "classify",
    "error_code",
    "error_name",
    "is_access_denied",
    "is_not_found",
    "is_throttle",
]


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
        # SNS: ThrottledException (HTTP 429) and KMS throttling an encrypted topic.
        "Throttled",
        "KMSThrottling",
    }
)


# Only these mean "it does not exist": any other refusal must not read "not found".
_NOT_FOUND_CODES = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "ActivityDoesNotExist",
        "ResourceNotFoundException",
        # SNS: GetTopicAttributes of a topic that does not exist.
        "NotFound",
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
        # SNS's own word for a denied call.
        "AuthorizationError",
    }
)


#: A heartbeat answered with these means the workflow gave up on the task (AWS says
#: TaskTimedOut); the emulators' InvalidToken is not proof of that (Completer.heartbeat).
HEARTBEAT_CLOSED_CODES: Final = frozenset({"TaskTimedOut", "TaskDoesNotExist"})
# Throttling answers that do not say "throttl" in their code (is_throttle).
_THROTTLE_CODES = frozenset({"RequestLimitExceeded", "TooManyRequestsException"})


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError``, else ``None``."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def error_name(exc: BaseException) -> str:
    """What to log for a failed AWS call: its error code, else the exception's class.

    Never the message: Step Functions' messages can quote the task token.
    """
    return error_code(exc) or type(exc).__name__


def classify(exc: BaseException) -> ErrorKind:
    """Decide what an exception from an AWS call means.  The one place that knows."""
    if isinstance(exc, ClientError):
        code = error_code(exc) or ""
        if code in _TASK_CLOSED_CODES:
            return ErrorKind.TASK_CLOSED
        if code == "InvalidOutput":
            return ErrorKind.INVALID_OUTPUT
        if is_service_unavailable(exc):
            return ErrorKind.PERMANENT
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


def is_service_unavailable(exc: BaseException) -> bool:
    """The endpoint does not serve this service at all: HTTP 501 Not Implemented, as
    LocalStack answers for a service left out of its ``SERVICES`` ("Service 'dynamodb'
    is not enabled", code InternalFailure).  Retrying cannot help; AWS never says it."""
    if not isinstance(exc, ClientError):
        return False
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 501


def is_access_denied(exc: BaseException) -> bool:
    """AWS refused the credentials or their permissions."""
    return error_code(exc) in _ACCESS_DENIED_CODES


def is_throttle(code: str) -> bool:
    """An error code that means AWS throttled the call (counted per API)."""
    return "throttl" in code.lower() or code in _THROTTLE_CODES
