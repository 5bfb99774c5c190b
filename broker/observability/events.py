"""One structured log event per settled message (or activity task).

The outcome is decided deep in ``sqs.processor``; the type and the error name are learned
on the way.  A per-message ``MessageRecord`` in a context variable collects them without
threading an extra argument through every step, and ``settled`` writes the one event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from broker.observability.stats import Outcome, Stats

__all__ = [
    "MessageRecord",
    "current_record",
    "current_token",
    "message_record",
    "note_error",
    "note_token",
    "note_type",
]

log = logging.getLogger("broker.outcome")

#: Outcomes that are worth a warning in the log; the rest are routine.
_WARN: frozenset[Outcome] = frozenset(
    {Outcome.POISON, Outcome.UNKNOWN_TYPE, Outcome.EXHAUSTED, Outcome.UNCONFIRMED}
)


@dataclass(slots=True)
class MessageRecord:
    source: str
    message_id: str
    receive_count: int
    #: A registered type, "unknown" when none matched, "none" before routing.
    message_type: str = "none"
    error: str | None = None
    #: perf_counter: uvloop's loop clock (anyio.current_time) ticks in whole milliseconds.
    started: float = field(default_factory=time.perf_counter)
    #: The task token, so that log lines written while it is handled can be redacted.
    token: str | None = field(default=None, repr=False)


_current: ContextVar[MessageRecord | None] = ContextVar("broker_message_record", default=None)


def current_record() -> MessageRecord | None:
    return _current.get()


def note_type(message_type: str) -> None:
    record = _current.get()
    if record is not None:
        record.message_type = message_type


def note_token(token: str) -> None:
    record = _current.get()
    if record is not None:
        record.token = token


def current_token() -> str | None:
    record = _current.get()
    return record.token if record is not None else None


def note_error(error: str) -> None:
    """The error name sent (or, for poison, the reason): the last one noted wins."""
    record = _current.get()
    if record is not None:
        record.error = error


@contextmanager
def message_record(source: str, message_id: str, receive_count: int) -> Iterator[MessageRecord]:
    record = MessageRecord(source, message_id, receive_count)
    reset = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(reset)


def settled(record: MessageRecord, outcome: Outcome, stats: Stats) -> None:
    """Count the outcome and write its one log event."""
    stats.count(record.source, outcome, record.message_type)
    level = logging.WARNING if outcome in _WARN else logging.INFO
    if not log.isEnabledFor(level):
        return  # the outcome log is off: build nothing
    log.log(
        level,
        "%s %s on %s: %s%s",
        record.message_type,
        record.message_id,
        record.source,
        outcome.value,
        f" ({record.error})" if record.error else "",
        extra={
            "event": "outcome",
            "queue": record.source,
            "type": record.message_type,
            "message_id": record.message_id,
            "receive_count": record.receive_count,
            "duration_ms": round((time.perf_counter() - record.started) * 1000, 3),
            "outcome": outcome.value,
            "error": record.error,
        },
    )
