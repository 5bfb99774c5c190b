"""What every poll loop shares: the handler slot it holds, and its backoff on errors.

A loop (``sqs.consumer``, ``activities.poller``) reserves a ``Slot`` of the broker-wide
``CapacityLimiter`` before it asks for work, and holds it until that work settles, so
nothing is taken that cannot start at once.  A poll that fails waits ``PollBackoff``'s
jittered, growing delay before the next one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Final

from broker.aws.errors import ErrorKind, classify, error_name

__all__ = ["PollBackoff", "Slot"]

_BASE_S: Final = 0.5
_MAX_S: Final = 30.0


class Slot:
    """A borrower token: one handler slot, held from the poll until its work settles.

    ``CapacityLimiter.acquire_on_behalf_of`` needs a distinct object per slot held.
    """

    __slots__ = ()


class PollBackoff:
    """Consecutive failures of one poll loop and the wait after each (0.5 s doubling to
    30 s, jittered down to half so that replicas do not retry in step).

    Operators page on ERROR, so a failure that retrying may cure (throttling, 5xx, the
    network) is a WARNING, and any failure is said at most once per ``LOG_EVERY_S`` in
    a streak (the rest at DEBUG, counted in the next line said): an SQS outage of an hour
    is a few dozen lines, not thousands.  ERROR is kept for what a person must fix (a
    permission, a deleted queue); the loop still retries it.
    """

    LOG_EVERY_S: Final = 60.0

    def __init__(
        self,
        api: str,
        source: str,
        log: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._source = source
        self._log = log
        self._clock = clock
        self._said_at: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Count a failure, log it, and return how long to wait before polling again."""
        self.failures += 1
        delay_s: float = min(_MAX_S, _BASE_S * 2.0**self.failures) * random.uniform(0.5, 1)
        kind = classify(exc)
        now = self._clock()
        if self._said_at is not None and now - self._said_at < self.LOG_EVERY_S:
            level = logging.DEBUG
        else:
            level = logging.WARNING if kind is ErrorKind.TRANSIENT else logging.ERROR
            self._said_at = now
        streak = f", {self.failures} in a row" if self.failures > 1 else ""
        self._log.log(
            level,
            "%s on %s failed (%s, %s%s); next try in %.1fs",
            self._api,
            self._source,
            error_name(exc),
            kind.value,
            streak,
            delay_s,
        )
        return delay_s

    def succeeded(self) -> None:
        if self.failures and self._said_at is not None:
            self._log.info(
                "%s on %s answers again after %d failure(s)",
                self._api,
                self._source,
                self.failures,
            )
        self.failures = 0
        self._said_at = None
