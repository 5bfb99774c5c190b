"""What every poll loop shares: the handler slot it holds, and its backoff on errors.

A loop (``sqs.consumer``, ``activities.poller``) reserves a ``Slot`` of the broker-wide
``CapacityLimiter`` before it asks for work, and holds it until that work settles, so
nothing is taken that cannot start at once.  A poll that fails waits ``PollBackoff``'s
jittered, growing delay before the next one.
"""

from __future__ import annotations

import logging
import random
from typing import Final

from broker.aws.errors import classify, error_name

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
    30 s, jittered down to half so that replicas do not retry in step)."""

    def __init__(self, api: str, source: str, log: logging.Logger) -> None:
        self._api = api
        self._source = source
        self._log = log
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Count a failure, log it, and return how long to wait before polling again."""
        self.failures += 1
        delay_s: float = min(_MAX_S, _BASE_S * 2.0**self.failures) * random.uniform(0.5, 1)
        self._log.error(
            "%s on %s failed (%s, %s); next try in %.1fs",
            self._api,
            self._source,
            error_name(exc),
            classify(exc).value,
            delay_s,
        )
        return delay_s

    def succeeded(self) -> None:
        self.failures = 0
