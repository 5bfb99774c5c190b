"""Counters of what happened, per queue and outcome.  Cheap enough for the hot path."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

__all__ = ["Outcome", "Stats"]


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
    DUPLICATE = "duplicate"  # same token as a message in flight; settled by that one
    UNCONFIRMED = "unconfirmed"  # Step Functions did not confirm: message kept

    @property
    def settled(self) -> bool:
        """False when the message goes back to the queue and will be handled again."""
        return self not in (Outcome.RETRY, Outcome.UNCONFIRMED)


class Stats:
    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, Outcome]] = Counter()
        self.received: Counter[str] = Counter()

    def count(self, queue: str, outcome: Outcome) -> None:
        self.outcomes[(queue, outcome)] += 1

    def total(self, outcome: Outcome) -> int:
        return sum(n for (_, seen), n in self.outcomes.items() if seen is outcome)
