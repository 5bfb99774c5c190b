"""One structured log event per settled message (or activity task).

The outcome is decided deep in ``sqs.processor``; the type, the error name and why are
learned on the way.  A per-message ``MessageRecord`` in a context variable collects them
without threading an extra argument through every step, and ``settled`` writes the one
event: one line per outcome, the sources write no line of their own for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from broker.observability import held
from broker.observability.redact import loggable, token_ref
from broker.observability.stats import Outcome, Stats

__all__ = [
    "MessageRecord",
    "current_record",
    "current_token",
    "message_record",
    "note_detail",
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
    #: A registered type, "unknown" when none matched, "none" before routing (a label).
    message_type: str = "none"
    #: The type the message asked for when no handler has it (``loggable``: bounded).
    asked_type: str | None = None
    error: str | None = None
    #: Why, in a few words (the attempt, the retry delay, the registered types).
    detail: str | None = None
    #: perf_counter: uvloop's loop clock (anyio.current_time) ticks in whole milliseconds.
    started: float = field(default_factory=time.perf_counter)
    #: The task token, so that log lines written while it is handled can be redacted.
    token: str | None = field(default=None, repr=False)


_current: ContextVar[MessageRecord | None] = ContextVar("broker_message_record", default=None)


def current_record() -> MessageRecord | None:
    return _current.get()


def note_type(message_type: str, *, asked: str | None = None) -> None:
    """The route's type (or "unknown"), and for "unknown" the type the message named."""
    record = _current.get()
    if record is not None:
        record.message_type = message_type
        if asked is not None:
            record.asked_type = loggable(asked)


def note_detail(detail: str) -> None:
    """Why the outcome is what it is: joined to what was noted before."""
    record = _current.get()
    if record is not None:
        record.detail = detail if record.detail is None else f"{record.detail}; {detail}"


def note_token(token: str) -> None:
    """The message's token: held (redacted from every text) until its attempt ends."""
    record = _current.get()
    if record is not None and record.token != token:
        if record.token is not None:
            held.release(record.token)
        held.hold(token)
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
        if record.token is not None:
            held.release(record.token)


def settled(record: MessageRecord, outcome: Outcome, stats: Stats) -> None:
    """Count the outcome and write its one log event."""
    stats.count(record.source, outcome, record.message_type)
    error = record.error
    # A retry because the handler raised is worth a look; one for a duplicate is not.
    level = (
        logging.WARNING
        if outcome in _WARN or (error is not None and outcome is Outcome.RETRY)
        else logging.INFO
    )
    if not log.isEnabledFor(level):
        return  # the outcome log is off: build nothing
    message_type = record.asked_type if record.asked_type is not None else record.message_type
    # The task's reference only where something went wrong: a hash per success would
    # cost on the hot path for a line nobody correlates.
    ref = token_ref(record.token) if error is not None and record.token is not None else None
    extra: dict[str, object] = {
        "event": "outcome",
        "queue": record.source,
        "type": message_type,
        "message_id": record.message_id,
        "receive_count": record.receive_count,
        "duration_ms": round((time.perf_counter() - record.started) * 1000, 3),
        "outcome": outcome.value,
        "error": error,
    }
    if record.detail is not None:
        extra["detail"] = record.detail
    if ref is not None:
        extra["token_ref"] = ref
    log.log(
        level,
        "%s %s on %s: %s%s%s",
        message_type,
        record.message_id,
        record.source,
        outcome.value,
        "" if error is None else f" ({error}, {ref})" if ref else f" ({error})",
        "" if record.detail is None else f": {record.detail}",
        extra=extra,
    )
