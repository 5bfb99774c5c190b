"""The broker's exceptions and the error names it sends to Step Functions.

Exception hierarchy (everything the broker raises derives from ``BrokerError``)::

    BrokerError
    ├── ConfigError          bad settings; the message names the setting (start-up)
    │   └── DecisionsNotConfigured  decision links or notify asked of a route without the option
    ├── RegistrationError    duplicate message type, non-async handler, bad plugin (start-up)
    ├── StartupError         an AWS call at start-up failed for good (exit 1)
    │   ├── QueueNotFound        a configured queue does not exist (or its error is unknown)
    │   ├── ActivityNotFound     a configured activity does not exist (or its error is unknown)
    │   ├── TopicNotFound        the decision topic (BROKER_DECISION_TOPIC) does not exist
    │   ├── TableNotFound        the idempotency table (BROKER_IDEMPOTENCY_TABLE) does not exist
    │   ├── AwsAccessDenied      the credentials are missing, invalid, expired or not allowed
    │   └── AwsUnavailable       the endpoint unreachable, or transient errors past the deadline
    ├── TaskFailed           raised by a handler: fail the workflow task with (error, cause)
    ├── RetryLater           raised by a handler: try this message again after delay_s
    ├── TaskClosed           raised by task.heartbeat(): the workflow closed the task
    └── NotificationFailed   raised by task.notify(): SNS did not take the message; retried

    NonRetryable             mixin: an exception class that fails the task at once

Error names (the ``error`` of SendTaskFailure) are API: state machines match them in
``Retry`` / ``Catch``.  Every name the broker makes itself starts with ``Broker.``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ERROR_PREFIX",
    "ActivityNotFound",
    "AwsAccessDenied",
    "AwsUnavailable",
    "BrokerError",
    "ConfigError",
    "DecisionsNotConfigured",
    "ErrorName",
    "NonRetryable",
    "NotificationFailed",
    "QueueNotFound",
    "RegistrationError",
    "RetryLater",
    "StartupError",
    "TableNotFound",
    "TaskClosed",
    "TaskFailed",
    "TopicNotFound",
]

ERROR_PREFIX: Final = "Broker."


class ErrorName:
    """The documented ``error`` strings the broker sends (see docs/errors.md)."""

    UNKNOWN_MESSAGE_TYPE: Final = "Broker.UnknownMessageType"
    INVALID_INPUT: Final = "Broker.InvalidInput"
    INVALID_OUTPUT: Final = "Broker.InvalidOutput"
    OUTPUT_TOO_LARGE: Final = "Broker.OutputTooLarge"
    HANDLER_TIMEOUT: Final = "Broker.HandlerTimeout"
    RETRIES_EXHAUSTED: Final = "Broker.RetriesExhausted"
    #: An activity task cut off by the drain (or handed out as it began): retryable.
    SHUTTING_DOWN: Final = "Broker.ShuttingDown"
    #: ``task.notify``: SNS can never take this message (no ``default``, too large).
    NOTIFICATION_REFUSED: Final = "Broker.NotificationRefused"
    #: An idempotent activity task whose claim the table could not take: nothing ran.
    IDEMPOTENCY_UNAVAILABLE: Final = "Broker.IdempotencyUnavailable"
    #: Something raised inside the broker while handling the task (not the handler):
    #: on a queue after its last attempt, on an activity at once.
    INTERNAL_ERROR: Final = "Broker.InternalError"


class BrokerError(Exception):
    """Base class of every exception the broker raises."""


class ConfigError(BrokerError):
    """A setting is missing or invalid.  Raised at start-up, never mid-run."""


class DecisionsNotConfigured(ConfigError):
    """``task.decision_links()`` or ``task.notify()`` on a route registered without
    ``decisions=True`` / ``notify=True``: the option is what makes start-up check the
    settings those calls need."""


class RegistrationError(BrokerError):
    """A handler cannot be registered: duplicate type, not ``async def``, bad plugin."""


class StartupError(BrokerError):
    """A start-up call to AWS failed for good: the message says why, in one line.

    Transient errors (throttling, 5xx, the network) are retried first, up to
    ``BROKER_STARTUP_TIMEOUT_S``; what is raised here is what retrying did not fix.
    """


class QueueNotFound(StartupError):
    """A configured queue does not exist (or failed with an error the broker cannot read)."""


class ActivityNotFound(StartupError):
    """A configured activity does not exist (and may not be created), or its lookup failed."""


class TopicNotFound(StartupError):
    """The decision topic (``BROKER_DECISION_TOPIC``) does not exist, or its lookup failed."""


class TableNotFound(StartupError):
    """The idempotency table (``BROKER_IDEMPOTENCY_TABLE``) does not exist, or its lookup
    failed."""


class AwsAccessDenied(StartupError):
    """No credentials were found, or AWS refused them (denied, invalid, expired)."""


class AwsUnavailable(StartupError):
    """The endpoint could not be reached, or transient errors outlasted the start-up deadline."""


class TaskFailed(BrokerError):
    """Raise from a handler to fail the workflow task: SendTaskFailure(error, cause).

    This is the *decided* failure: it is sent at once and never retried.  Any other
    exception is treated as transient and retried with backoff.
    """

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(error, cause)
        self.error = error
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.error}: {self.cause}" if self.cause else self.error


class RetryLater(BrokerError):
    """Raise from a handler to retry the message after ``delay_s`` seconds.

    It counts as an attempt like any transient error; when ``max_attempts`` is reached
    the task fails with ``error`` (default ``Broker.RetriesExhausted``).
    """

    def __init__(self, delay_s: float, reason: str = "") -> None:
        if not 0 <= delay_s <= 43_200:
            raise ValueError("delay_s must be within 0..43200 (SQS's visibility limit)")
        super().__init__(reason or f"retry requested in {delay_s}s")
        self.delay_s = delay_s
        self.reason = reason


class TaskClosed(BrokerError):
    """Step Functions answered a heartbeat with "task closed": the workflow gave up.

    Raised by ``await task.heartbeat()``.  Let it propagate (after any clean-up): the
    broker then drops the message without completing the task.
    """


class NonRetryable(Exception):
    """Mix into an exception class to make the broker fail the task at the first raise.

    The task fails with the exception's class name as ``error`` and its message as
    ``cause``, exactly as when retries are exhausted, but without waiting for them.
    """


class NotificationFailed(BrokerError):
    """SNS did not take a ``task.notify`` message (throttled, unavailable, denied).

    Like any exception a handler lets through, the task's message is retried with
    backoff: nothing is lost.  (If SNS took the message but its answer was lost, the
    retry sends the notification a second time; the links in both work alike.)
    """
