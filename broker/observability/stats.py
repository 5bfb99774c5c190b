"""Counters of what happened.  Cheap enough for the hot path: plain integer increments.

Prometheus reads them at scrape time (``observability.metrics``), so recording an event never
takes a lock or builds a label set.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from typing import Final

from broker.observability.metric_names import POLL_BUCKETS_S
from broker.observability.outcome import Outcome

__all__ = ["DURATION_BUCKETS_S", "Histogram", "LoopLag", "Outcome", "Stats"]


#: Handler and AWS call durations: 5 ms .. 15 min (the default handler timeout).
DURATION_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
#: DeleteMessageBatch sizes: SQS takes 1..10 entries.
BATCH_BUCKETS: Final = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)


class Histogram:
    """Fixed buckets, counted per bucket (cumulated only when read)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, observations <= it), ending with +Inf."""
        total, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets

    @property
    def count(self) -> int:
        return sum(self.counts)


class LoopLag:
    """How late the event loop wakes a timer: the worst over the last ``window_s``.

    One late wake-up is a stall that already happened; a probe asking a moment later
    must still see it, or a 30 s freeze shows up as a single 503.  A probe asked while
    the watcher's timer is overdue sees that lateness too, before the timer fires.
    """

    __slots__ = ("_pending_since", "_period_s", "_worst", "last_s", "window_s")

    def __init__(self, window_s: float, period_s: float) -> None:
        self.window_s = window_s
        self._period_s = period_s
        #: The last measurement alone.
        self.last_s = 0.0
        #: (when measured, lag), lags decreasing: the first one is the window's worst.
        self._worst: deque[tuple[float, float]] = deque()
        self._pending_since: float | None = None

    def sleeping(self, now: float) -> None:
        """The watcher starts a ``period_s`` sleep at ``now``."""
        self._pending_since = now

    def woke(self, now: float) -> float:
        """The watcher woke at ``now``; returns how late."""
        assert self._pending_since is not None
        lag = max(0.0, now - self._pending_since - self._period_s)
        self._pending_since = None
        self.last_s = lag
        while self._worst and self._worst[-1][1] <= lag:
            self._worst.pop()
        self._worst.append((now, lag))
        return lag

    def worst(self, now: float) -> float:
        """The worst lag measured in the last ``window_s``, or the current overdue."""
        while self._worst and self._worst[0][0] < now - self.window_s:
            self._worst.popleft()
        worst = self._worst[0][1] if self._worst else 0.0
        if self._pending_since is not None:
            worst = max(worst, now - self._pending_since - self._period_s)
        return worst


#: The event loop's timer probe, and how long its worst lateness stays on show.
LAG_PROBE_S: Final = 0.5
LAG_WINDOW_S: Final = 60.0


def _poll_histogram() -> Histogram:
    return Histogram(POLL_BUCKETS_S)


class Stats:
    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, Outcome]] = Counter()
        #: (source, message type, outcome); the type is a registered one, "unknown" or "none".
        self.by_type: Counter[tuple[str, str, Outcome]] = Counter()
        self.received: Counter[str] = Counter()
        self.handler_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.aws_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        #: The long polls' waits (``metric_names.LONG_POLL_APIS``), not call latency.
        self.poll_seconds: defaultdict[str, Histogram] = defaultdict(_poll_histogram)
        self.aws_errors: Counter[tuple[str, str]] = Counter()
        self.throttles: Counter[str] = Counter()
        self.heartbeats: Counter[str] = Counter()
        self.delete_batch_sizes = Histogram(BATCH_BUCKETS)
        #: Answers of the decision endpoint: (action, status).
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.loop_lag = LoopLag(LAG_WINDOW_S, LAG_PROBE_S)

    def count(self, queue: str, outcome: Outcome, message_type: str = "none") -> None:
        self.outcomes[(queue, outcome)] += 1
        self.by_type[(queue, message_type, outcome)] += 1

    @property
    def event_loop_lag_s(self) -> float:
        """The worst event-loop lag of the last ``LAG_WINDOW_S`` (the gauge, liveness)."""
        return self.loop_lag.worst(time.monotonic())

    def total(self, outcome: Outcome) -> int:
        return sum(n for (_, seen), n in self.outcomes.items() if seen is outcome)
