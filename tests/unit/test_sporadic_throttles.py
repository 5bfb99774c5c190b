"""Sporadic throttles (issue 21 item 20): a throttle now and then is noise, not a quota.

Under 1 % of calls throttled at random, at 60 completions/s, cutting the rate by 30 % on
each throttle and growing it back by 10 calls/s per second held it below the demand for
good (AIMD under random loss settles near sqrt(increase / (decrease x loss)), about
58 calls/s here): task latency p50 2.6 s, p99 15 s in the soak.  Everything here runs on
a fake clock; the three-client convergence on a real bucket stays in
tests/unit/test_adaptive_rate.py.
"""

from __future__ import annotations

import heapq
import random
from collections import deque

from broker.core.ratelimit import AdaptiveParams, AdaptiveRate

#: What one completion call takes on the fake clock.
CALL_S = 0.005


def offer(rate: AdaptiveRate, *, per_s: float, throttled: float, seconds: float, seed: int) -> int:
    """Calls at ``per_s`` for ``seconds``, each throttled with probability ``throttled``
    (answered at once); how many were held back."""
    rng = random.Random(seed)
    now = 0.0
    held = 0
    while now < seconds:
        now += rng.expovariate(per_s)
        if rate.admit(now) > 0:
            held += 1
            continue
        if rng.random() < throttled:
            rate.throttled(rate.epoch, now)
    return held


def test_sporadic_throttles_cut_nothing() -> None:
    for seed in range(3):
        rate = AdaptiveRate(AdaptiveParams(), clock=lambda: 0.0)  # offer() gives the time
        held = offer(rate, per_s=60, throttled=0.01, seconds=300, seed=seed)
        assert (rate.decreases, held) == (0, 0), seed
        assert rate.rate_per_s is None


def test_sustained_throttling_still_adapts_down_when_nothing_is_held_back() -> None:
    # 10 % of the calls throttled: the bucket, not noise, even with no rate set yet.
    rate = AdaptiveRate(AdaptiveParams(), clock=lambda: 0.0)
    held = offer(rate, per_s=60, throttled=0.10, seconds=30, seed=1)
    assert rate.decreases >= 1
    assert rate.rate_per_s is not None
    assert rate.rate_per_s < 60
    assert held > 0


def latencies(*, per_s: float, throttled: float, seconds: float, seed: int) -> list[float]:
    """Tasks arriving at ``per_s``, one completion each through one ``AdaptiveRate``
    (first come, first served), ``throttled`` of the calls answered ThrottlingException
    and retried after 0-100 ms, as the completer does; each task's seconds to success."""
    rng = random.Random(seed)
    clock = [0.0]
    rate = AdaptiveRate(AdaptiveParams(), clock=lambda: clock[0])
    events: list[tuple[float, int, str, int, int]] = []
    order = 0

    def at(when: float, kind: str, task: int, epoch: int = 0) -> None:
        nonlocal order
        heapq.heappush(events, (when, order, kind, task, epoch))
        order += 1

    arrived: dict[int, float] = {}
    done: dict[int, float] = {}
    t, n = 0.0, 0
    while t < seconds:
        t += rng.expovariate(per_s)
        at(t, "arrive", n)
        n += 1
    waiting: deque[int] = deque()
    waited = False
    wake_at = -1.0
    while events:
        now, _, kind, task, epoch = heapq.heappop(events)
        clock[0] = now
        if kind == "arrive":
            arrived[task] = now
            waiting.append(task)
        elif kind == "retry":
            waiting.append(task)
        elif kind == "answer":
            if rng.random() < throttled:
                rate.throttled(epoch, now)
                at(now + rng.uniform(0, 0.1), "retry", task)
            else:
                done[task] = now
        while waiting:
            wait_s = rate.admit(now, waited=waited)
            if wait_s > 0:
                waited = True
                if wake_at <= now:
                    wake_at = now + wait_s
                    at(wake_at, "wake", -1)
                break
            waited = False
            at(now + CALL_S, "answer", waiting.popleft(), rate.epoch)
    assert len(done) == n
    return sorted(done[k] - arrived[k] for k in done)


def test_a_sporadic_throttle_does_not_hold_calls_back_for_seconds() -> None:
    for seed in range(3):
        took = latencies(per_s=60, throttled=0.01, seconds=120, seed=seed)
        p50, p99 = took[len(took) // 2], took[int(len(took) * 0.99)]
        # The fault-free figures are 5 ms and 5 ms: the call alone.  A throttled task
        # waits for its retry (up to 100 ms); no task waits behind a cut rate.
        assert p50 <= 0.010, (seed, p50)
        assert p99 <= 0.150, (seed, p99)
        assert took[-1] <= 0.5, (seed, took[-1])
