"""What a handler's run decided, as one of six frozen values.

``core.step`` turns whatever the handler did (returned, raised, timed out, was cancelled
because the workflow closed the task) into a ``Verdict``; each source then takes it
apart with one exhaustive ``match`` (mypy checks it with ``assert_never``), so a sixth
case cannot be added without every source handling it.

- ``Succeeded(output)``: SendTaskSuccess with the value (encoded and size-checked when
  it is sent);
- ``Failed(error, cause, outcome)``: SendTaskFailure now, never retried;
- ``Retry(error, cause, delay_s)``: the handler raised something undecided or timed out:
  a source that redelivers tries again, the others (and the last attempt) fail the task;
- ``Closed()``: the workflow closed the task meanwhile: nothing is sent;
- ``Deferred(reason)``: the handler returned ``Deferred()``: the task is left open in Step
  Functions for someone else to complete (a person, through decision links): nothing
  is sent, and an SQS message is deleted;
- ``Busy(left_s, error)``: an ``idempotent=True`` route's handler did not run here:
  another copy of the task holds a live claim on it (``left_s`` until its lease ends),
  or the idempotency store could not be asked (``error``); a source that redelivers
  hands the message back later without counting an attempt, the others send nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from broker.core.errors import ErrorName, NonRetryable, RetryLater
from broker.observability.stats import Outcome

__all__ = [
    "Busy",
    "Closed",
    "Deferred",
    "Failed",
    "Retry",
    "Succeeded",
    "Verdict",
    "retry_for",
    "timed_out",
]


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The handler returned ``output``: send it (``Step.complete`` encodes it)."""

    output: object
    #: The output as sent, when encoded already (recorded or replayed by
    #: ``core.once``): sent as it is.
    encoded: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A decided failure: SendTaskFailure(error, cause).  ``outcome`` says which kind."""

    error: str
    cause: str
    outcome: Outcome = Outcome.FAILED


@dataclass(frozen=True, slots=True)
class Retry:
    """An undecided error or a timeout: try again if the source can, else fail.

    ``error``/``cause`` are what the task fails with when no try is left.  ``raised`` is
    the exception's own name and message where those differ (``RetryLater``, whose last
    attempt fails as ``Broker.RetriesExhausted``): what a source without redelivery
    fails the task with at once (docs/activities.md).
    """

    error: str
    cause: str
    #: The delay the handler asked for (``RetryLater``); None: the source's backoff.
    delay_s: float | None = None
    #: False for a ``NonRetryable`` exception: fail at the first raise.
    retryable: bool = True
    raised: tuple[str, str] | None = None

    def at_once(self) -> Failed:
        """The failure a source that cannot redeliver sends now."""
        error, cause = self.raised or (self.error, self.cause)
        return Failed(error, cause, Outcome.EXHAUSTED)

    def exhausted(self) -> Failed:
        """The failure sent once a redelivering source has no attempt left."""
        return Failed(self.error, self.cause, Outcome.EXHAUSTED)


@dataclass(frozen=True, slots=True)
class Closed:
    """The workflow closed the task (a heartbeat said so): the work is unwanted."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """Return this from a handler to leave the task open for someone else to complete.

    Typically after sending a person ``task.decision_links()``: the message is deleted,
    nothing is sent to Step Functions, and the task waits until a link is used or the
    state's own ``TimeoutSeconds`` fires.  ``reason`` is for the log.
    """

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Busy:
    """An idempotent route's handler was not run (docs/fleet.md): come back later.

    ``left_s``: how long the other copy's claim has left (None when unknown);
    ``error``: the idempotency store's error when it could not be asked (fail closed).
    """

    left_s: float | None = None
    error: str | None = None


Verdict: TypeAlias = Succeeded | Failed | Retry | Closed | Deferred | Busy


def retry_for(exc: BaseException) -> Retry:
    """The names an undecided exception fails a task with (docs/errors.md).

    A ``BaseException`` that is no ``Exception`` (``SystemExit`` from ``sys.exit()``,
    ``KeyboardInterrupt``, ``GeneratorExit``, one of the handler's own) is the handler's
    failure like any other; its cause says so, since its message alone (an exit code)
    would not.
    """
    name, message = type(exc).__name__, str(exc) or repr(exc)
    if not isinstance(exc, Exception):
        message = (
            f"the handler raised {name}({message}); a failure of this task, "
            "not a stop of the broker"
        )
    retryable = not isinstance(exc, NonRetryable)
    if isinstance(exc, RetryLater):
        return Retry(
            ErrorName.RETRIES_EXHAUSTED,
            exc.reason or "retries requested",
            delay_s=exc.delay_s,
            retryable=retryable,
            raised=(name, message),
        )
    return Retry(name, message, retryable=retryable)


def timed_out() -> Retry:
    return Retry(ErrorName.HANDLER_TIMEOUT, "handler exceeded its timeout")
