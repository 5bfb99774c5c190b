"""How the broker settled one message: a value every source, counter and log line shares.

Kept apart from the counters (``observability.stats``, which re-exports it) so that the
modules deciding an outcome need not import the ones counting it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Outcome"]


class Outcome(StrEnum):
    """One per message: how the broker settled it."""

    SUCCEEDED = "succeeded"  # SendTaskSuccess confirmed
    FAILED = "failed"  # the handler decided failure; SendTaskFailure confirmed
    INVALID_INPUT = "invalid_input"  # payload did not fit the handler's model
    INVALID_OUTPUT = "invalid_output"  # output not JSON, too large, or refused
    UNKNOWN_TYPE = "unknown_type"  # no handler for the type; task failed
    POISON = "poison"  # no usable token or body: dead-lettered or left to redrive
    RETRY = "retry"  # transient handler error: made visible again later
    EXHAUSTED = "exhausted"  # attempts used up; task failed
    TASK_CLOSED = "task_closed"  # Step Functions says the task is already closed
    DUPLICATE = "duplicate"  # same token as one in flight or settled here lately
    UNCONFIRMED = "unconfirmed"  # Step Functions did not confirm: message kept
    DEFERRED = "deferred"  # handed to a person (decision links): message deleted, task open

    @property
    def settled(self) -> bool:
        """False when the message goes back to the queue and will be handled again."""
        return self not in (Outcome.RETRY, Outcome.UNCONFIRMED)
