"""Step Functions' quotas: token buckets per API, and a per-second record of what they did.

AWS answers ``ThrottlingException`` when an API's bucket (per account and region) is
empty: SendTaskSuccess, SendTaskFailure, SendTaskHeartbeat and GetActivityTask each have
their own, 3,000 burst / 500 per s in the large regions.  Here a bucket is named with the
APIs that draw from it: one API each is AWS's layout; several APIs on one bucket makes a
stricter stub (the fleet test puts SendTask* on one).

Buckets start full and refill continuously.  While any bucket is set, every AWS call is
counted per second of the stub's clock, from the first call of a governed API: calls and
throttles per API, and the fewest and most visible messages (all queues) any call of
that second saw; ``GET /_stub/stats`` returns them under ``quotas``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Bucket", "Quotas"]


@dataclass(slots=True)
class Bucket:
    apis: tuple[str, ...]
    burst: float
    rate_per_s: float
    tokens: float = 0.0
    refilled_at: float | None = None

    def take(self, now: float) -> bool:
        if self.refilled_at is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate_per_s)
        self.refilled_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(slots=True)
class _Second:
    calls: dict[str, int] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)
    visible_min: int | None = None
    visible_max: int = 0


class Quotas:
    """The buckets by API, their counts and the timeline (empty: nothing enforced)."""

    def __init__(self) -> None:
        self.by_api: dict[str, Bucket] = {}
        self.calls: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self._origin: float | None = None
        self._seconds: list[_Second] = []

    @property
    def active(self) -> bool:
        return bool(self.by_api)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Quotas:
        """``{"buckets": [{"apis": [op, ...], "burst": B, "rate_per_s": R}, ...]}``."""
        unknown = set(body) - {"buckets"}
        if unknown:
            raise ValueError(f"unknown quota settings: {sorted(unknown)}")
        quotas = cls()
        for spec in body.get("buckets") or ():
            apis = tuple(spec["apis"])
            burst, rate = float(spec["burst"]), float(spec["rate_per_s"])
            if not apis or not all(apis) or burst < 1 or rate <= 0:
                raise ValueError("a bucket needs apis, burst >= 1 and rate_per_s > 0")
            bucket = Bucket(apis, burst, rate)
            for api in apis:
                if api in quotas.by_api:
                    raise ValueError(f"{api} is in two buckets")
                quotas.by_api[api] = bucket
        return quotas

    @classmethod
    def parse_flag(cls, flags: list[str]) -> Quotas:
        """``--quota SendTaskSuccess,SendTaskFailure=200/200`` (APIs=BURST/RATE), repeated."""
        buckets = []
        for flag in flags:
            apis, _, numbers = flag.partition("=")
            burst, _, rate = numbers.partition("/")
            try:
                spec = {"apis": apis.split(","), "burst": float(burst), "rate_per_s": float(rate)}
                cls.from_json({"buckets": [spec]})
            except ValueError as exc:
                raise ValueError(f"{flag!r} is not APIS=BURST/RATE ({exc})") from exc
            buckets.append(spec)
        return cls.from_json({"buckets": buckets})

    def admit(self, op: str, now: float, visible: int) -> bool:
        """Count one call of ``op`` at ``now``; False when its bucket is empty (throttle).

        Every call is a sample of the timeline (ReceiveMessage too: a second in which
        the SendTask* calls stopped still shows its backlog); only the APIs of a bucket
        are counted in the totals and can be throttled.
        """
        if self._origin is None:
            if op not in self.by_api:
                return True  # the timeline starts with the first governed call
            self._origin = now
        index = int(now - self._origin)
        seconds = self._seconds
        while len(seconds) <= index:
            seconds.append(_Second())
        second = seconds[index]
        if second.visible_min is None or visible < second.visible_min:
            second.visible_min = visible
        second.visible_max = max(second.visible_max, visible)
        second.calls[op] = second.calls.get(op, 0) + 1
        bucket = self.by_api.get(op)
        if bucket is None:
            return True
        self.calls[op] = self.calls.get(op, 0) + 1
        if bucket.take(now):
            return True
        self.throttled[op] = self.throttled.get(op, 0) + 1
        second.throttled[op] = second.throttled.get(op, 0) + 1
        return False

    def reset_counts(self) -> None:
        self.calls, self.throttled = {}, {}
        self._origin, self._seconds = None, []

    def stats(self) -> dict[str, Any]:
        buckets = {id(b): b for b in self.by_api.values()}.values()
        return {
            "buckets": [
                {"apis": list(b.apis), "burst": b.burst, "rate_per_s": b.rate_per_s}
                for b in buckets
            ],
            "calls": dict(self.calls),
            "throttled": dict(self.throttled),
            "timeline": [
                {
                    "second": n,
                    "calls": dict(s.calls),
                    "throttled": dict(s.throttled),
                    # None: no call at all in that second.
                    "visible_min": s.visible_min,
                    "visible_max": s.visible_max,
                }
                for n, s in enumerate(self._seconds)
            ],
        }
