"""Client-side rates: a fixed token bucket (the ceiling) and a rate that adapts to throttling.

Step Functions' SendTask* quotas are token buckets per account and region, shared by
every replica and every other sender.  ``AdaptiveRate`` lets N replicas converge on such
a bucket without talking to each other (AIMD, the way TCP flows share a link):

- no limit at all until the API first answers ``ThrottlingException``: one replica
  alone, never throttled, pays one counter per call;
- on a throttle, the rate becomes ``decrease`` x what this process sent in the last
  second (or x its current rate, if lower), at most once per *epoch*: calls already
  in flight when the rate dropped come back throttled too, and must not cut it again;
- but while no call is held back by the rate (there is none yet, or demand is below
  it), a throttle cuts only if more than ``tolerance`` of the recent calls were
  throttled: AWS throttles the odd call at random, and AIMD under random loss settles
  near sqrt(increase / (0.3 x loss)), below the demand (about 58 calls/s at 1 %), so
  cutting on each one held calls back for seconds.  While calls are held back, the
  rate is what the bucket answers, and every throttle cuts (the fleet's AIMD);
- while the rate is what holds calls back (a caller had to wait), it grows by
  ``increase_per_s`` calls/s every second; it never grows while demand is below it, so
  an idle replica keeps its share instead of drifting up to a storm;
- never above ``ceiling_per_s`` (``BROKER_COMPLETION_RATE_PER_S``), never below
  ``min_per_s``.

Multiplicative decrease shrinks the big senders more than the small ones and the
additive increase is the same for all, so the shares even out; the bucket's burst
absorbs the overshoot of each probe, so few calls are throttled (docs/fleet.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio

__all__ = ["AdaptiveParams", "AdaptiveRate", "AdaptiveRates", "TokenBucket"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Allow ``rate_per_s`` acquisitions per second with bursts up to ``burst``.

    Waiters are served in arrival order (one lock), so a burst of callers cannot
    starve an early one.
    """

    def __init__(self, rate_per_s: float, burst: int | None = None) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate_per_s = rate_per_s
        self.burst = float(burst if burst is not None else max(1, round(rate_per_s)))
        self._tokens = self.burst
        self._updated_at: float | None = None
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await anyio.sleep((1 - self._tokens) / self.rate_per_s)
                self._refill()
            self._tokens -= 1

    def _refill(self) -> None:
        now = anyio.current_time()
        if self._updated_at is not None:
            elapsed = now - self._updated_at
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._updated_at = now


@dataclass(frozen=True, slots=True)
class AdaptiveParams:
    """How an ``AdaptiveRate`` backs off and probes (the ``completion_rate_*`` settings)."""

    #: The rate is multiplied by this on a throttle (0 < decrease < 1).
    decrease: float = 0.7
    #: Calls/s gained per second while the rate is the limit.
    increase_per_s: float = 10.0
    #: Never above this (None: no ceiling).
    ceiling_per_s: float | None = None
    #: Never below this: a replica throttled hard still makes progress.
    min_per_s: float = 1.0
    #: Calls the rate lets through at once, in seconds of the rate (at least one call).
    burst_s: float = 0.05
    #: While no call is held back by the rate, throttles up to this share of the recent
    #: calls are noise (a sporadic throttle, not an empty bucket) and cut nothing.
    tolerance: float = 0.05
    #: "Recent", for ``tolerance``: calls and throttles decay over about this many seconds.
    evidence_s: float = 5.0


class AdaptiveRate:
    """The allowed rate of one API in this process.  See the module's docstring.

    ``try_acquire`` / ``acquire`` return the epoch to hand to ``throttled`` if the call
    comes back throttled.  ``admit`` is the same decision on an explicit clock, for
    callers (and tests) that keep their own time.
    """

    def __init__(
        self, params: AdaptiveParams, *, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep
    ) -> None:
        self.params = params
        #: Calls/s allowed now; None until the first throttle (no limit).
        self.rate_per_s: float | None = None
        #: Bumped on every decrease: a throttle of a call sent before it is not news.
        self.epoch = 0
        #: How often the rate was cut.
        self.decreases = 0
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._refilled_at = 0.0
        self._grown_at = 0.0
        #: Calls are being held back by the rate (it grows only then).
        self._held = False
        # Sends in a sliding one-second window: the current second and the one before.
        self._window_at = clock()
        self._count = 0
        self._previous = 0
        self._waiting = 0
        self._lock = anyio.Lock()
        # Recent sends (whole seconds, decaying) and throttles (decaying), for ``tolerance``.
        self._sent_before = 0.0
        self._throttles = 0.0
        self._throttled_at = 0.0

    @property
    def allowed_per_s(self) -> float:
        """What this API may send now: the rate, else the ceiling, else infinity."""
        ceiling = self.params.ceiling_per_s
        rate = math.inf if self.rate_per_s is None else self.rate_per_s
        return min(rate, math.inf if ceiling is None else ceiling)

    def try_acquire(self) -> int | None:
        """The epoch if a call may go now (counted as sent), else None: ``acquire``."""
        if self.rate_per_s is None:
            self._count_send(self._clock())  # the hot path while never throttled
            return self.epoch
        if self._waiting:
            return None  # first come, first served
        return self.epoch if self.admit(self._clock()) == 0 else None

    async def acquire(self) -> int:
        """Wait until a call may go; its epoch."""
        epoch = self.try_acquire()
        if epoch is not None:
            return epoch
        self._waiting += 1
        try:
            async with self._lock:
                while (wait_s := self.admit(self._clock(), waited=True)) > 0:
                    await self._sleep(wait_s)
        finally:
            self._waiting -= 1
        return self.epoch

    def admit(self, now: float, *, waited: bool = False) -> float:
        """Take a call's token at ``now``: 0 when taken, else the seconds to wait first.

        ``waited``: the caller was held back before, so the rate is the limit: it grows.
        """
        rate = self.rate_per_s
        if rate is None:
            self._count_send(now)
            return 0.0
        burst = max(1.0, rate * self.params.burst_s)
        self._tokens = min(burst, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        # A hair short of a token is a token: else a wait of 1e-17 s could never pass.
        if self._tokens < 1 - 1e-9:
            if not self._held:
                # Held back from now on: the growth counts from here, not from the
                # last call (which may be an idle minute ago).
                self._held = True
                self._grown_at = now
            return (1 - self._tokens) / rate
        self._tokens = max(0.0, self._tokens - 1)
        if waited and self._held:
            # At most a second's growth at once: a stalled loop is no reason to jump.
            grown = self.params.increase_per_s * min(1.0, now - self._grown_at)
            self.rate_per_s = self._bounded(rate + grown)
            self._grown_at = now
        elif not waited:
            self._held = False  # a call went without waiting: demand is below the rate
        self._count_send(now)
        return 0.0

    def throttled(self, epoch: int, now: float | None = None) -> bool:
        """A call sent in ``epoch`` was throttled; True when that cut the rate."""
        now = self._clock() if now is None else now
        # Every throttle is evidence, a late one of an earlier epoch too: an empty
        # bucket answers the calls in flight all at once.
        share = self._throttled_share(now)
        if epoch != self.epoch:
            return False
        if not self._held and share <= self.params.tolerance:
            # Nothing is held back (demand is below the rate, or there is no rate yet)
            # and few calls were throttled: noise, which a cut would only turn into a
            # queue of calls held back for seconds.  Pushing at the rate, or throttled
            # more often, it is the bucket: cut.
            return False
        sent = self.sent_per_s(now)
        base = sent if self.rate_per_s is None else min(self.rate_per_s, sent)
        self.rate_per_s = self._bounded(base * self.params.decrease)
        self.epoch += 1
        self.decreases += 1
        # The server's bucket is empty: no burst of our own on top.
        self._tokens = 0.0
        self._refilled_at = now
        self._held = False
        return True

    def _throttled_share(self, now: float) -> float:
        """Count one throttle; the share of the recent calls that were throttled."""
        self._roll(now)
        horizon = self.params.evidence_s
        elapsed = max(0.0, now - self._throttled_at)
        self._throttles = self._throttles * math.exp(-elapsed / horizon) + 1
        self._throttled_at = now
        sent = self._sent_before * math.exp(-(now - self._window_at) / horizon) + self._count
        # Fewer calls than it takes to see the tolerance at all say nothing yet.
        return self._throttles / max(1.0 / self.params.tolerance, sent)

    def sent_per_s(self, now: float) -> float:
        """Calls sent in about the last second (a sliding window over two)."""
        self._roll(now)
        weight = max(0.0, 1.0 - (now - self._window_at))
        return self._count + self._previous * weight

    def _bounded(self, rate: float) -> float:
        ceiling = self.params.ceiling_per_s
        if ceiling is not None:
            rate = min(rate, ceiling)
        return max(self.params.min_per_s, rate)

    def _count_send(self, now: float) -> None:
        if now - self._window_at >= 1.0:
            self._roll(now)
        self._count += 1

    def _roll(self, now: float) -> None:
        elapsed = now - self._window_at
        if elapsed >= 1.0:
            self._previous = self._count if elapsed < 2.0 else 0
            horizon = self.params.evidence_s
            self._sent_before = (self._sent_before + self._count) * math.exp(-elapsed / horizon)
            self._count = 0
            self._window_at = now


class AdaptiveRates:
    """One ``AdaptiveRate`` per API: Step Functions has a bucket per API, so a throttled
    heartbeat must not slow the completions (and the other way round)."""

    def __init__(
        self,
        params: AdaptiveParams,
        apis: Iterable[str],
        *,
        enabled: bool = True,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.enabled = enabled
        self.params = params
        self._rates = {api: AdaptiveRate(params, clock=clock, sleep=sleep) for api in apis}

    def get(self, api: str) -> AdaptiveRate | None:
        """The API's rate, or None when adapting is off or the API has none."""
        return self._rates.get(api) if self.enabled else None

    def allowed(self) -> Mapping[str, float]:
        """Calls/s each API may send now (the ceiling, or infinity, when it never adapted)."""
        return {api: rate.allowed_per_s for api, rate in self._rates.items()}
