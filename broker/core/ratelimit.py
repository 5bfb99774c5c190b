"""A client-side token bucket, the same shape as Step Functions' own quota."""

from __future__ import annotations

import anyio

__all__ = ["TokenBucket"]


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
