"""The adaptive completion rate (issue 14): back off on throttling, probe up, share a quota.

Everything runs on a fake clock: ``AdaptiveRate.admit`` / ``throttled`` take the time,
and the simulated Step Functions bucket below is the same shape as AWS's (burst,
continuous refill).  Three clients that never talk to each other must converge on it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from broker import BrokerSettings, QueueSettings, Router, Task
from broker.core.completer import Completer, Confirmation
from broker.core.ratelimit import AdaptiveParams, AdaptiveRate, AdaptiveRates
from broker.observability.metrics import BrokerGauges, MetricsCollector, render_metrics
from broker.observability.stats import Stats
from broker.testing import FakeSfn, TestBroker, client_error


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def _rate(clock: Clock, **params: Any) -> AdaptiveRate:
    return AdaptiveRate(AdaptiveParams(**params), clock=clock, sleep=clock.sleep)


def _send(rate: AdaptiveRate, clock: Clock, calls: int, over_s: float) -> int:
    """Offer ``calls`` evenly over ``over_s``; how many were admitted."""
    admitted = 0
    for _ in range(calls):
        clock.now += over_s / calls
        if rate.admit(clock.now, waited=True) == 0:
            admitted += 1
    return admitted


def _bucket_runs_dry(rate: AdaptiveRate) -> int:
    """Answer calls of the current epoch throttled, as an empty bucket does, until the
    rate is cut; how many it took.  A lone throttle among many calls is noise (see
    ``test_sporadic_throttles_cut_nothing``): a bucket that ran dry throttles more."""
    for n in range(1, 101):
        if rate.throttled(rate.epoch):
            return n
    raise AssertionError("100 throttles in a row cut nothing")


def test_never_throttled_means_no_limit() -> None:
    clock = Clock()
    rate = _rate(clock)
    for _ in range(100_000):
        assert rate.try_acquire() == 0  # no wait, the first epoch
    assert rate.rate_per_s is None
    assert rate.allowed_per_s == math.inf
    # A ceiling is what the metric shows until the first throttle.
    assert _rate(clock, ceiling_per_s=50).allowed_per_s == 50


def test_a_throttle_cuts_the_rate_once_per_epoch() -> None:
    clock = Clock()
    rate = _rate(clock)
    _send(rate, clock, 100, over_s=1.0)  # 100 calls in the last second
    epoch = rate.epoch
    assert _bucket_runs_dry(rate) <= 6, "5 % of the calls throttled is a dry bucket"
    assert rate.rate_per_s == pytest.approx(70, rel=0.02)
    # Calls sent before the cut come back throttled too: they are not news.
    for _ in range(30):
        assert not rate.throttled(epoch)
    assert rate.rate_per_s == pytest.approx(70, rel=0.02)
    # A throttle of a call sent after the cut cuts again.
    assert rate.throttled(rate.epoch)
    assert rate.rate_per_s == pytest.approx(49, rel=0.02)
    assert rate.decreases == 2


def test_the_cut_rate_holds_calls_back() -> None:
    clock = Clock()
    rate = _rate(clock, increase_per_s=0.001)
    _send(rate, clock, 100, over_s=1.0)
    _bucket_runs_dry(rate)
    # Offered 1,000/s for 2 s: about 70/s get through.
    admitted = _send(rate, clock, 2000, over_s=2.0)
    assert 130 <= admitted <= 145


def test_it_recovers_by_probing_upward_while_it_holds_calls_back() -> None:
    clock = Clock()
    rate = _rate(clock, increase_per_s=10)
    _send(rate, clock, 100, over_s=1.0)
    _bucket_runs_dry(rate)
    assert rate.rate_per_s == pytest.approx(70, rel=0.02)
    _send(rate, clock, 5000, over_s=5.0)  # demand far above the rate
    assert rate.rate_per_s is not None
    assert rate.rate_per_s == pytest.approx(120, abs=3)  # +10 calls/s per second


def test_it_does_not_grow_while_demand_is_below_it() -> None:
    clock = Clock()
    rate = _rate(clock, increase_per_s=10)
    _send(rate, clock, 100, over_s=1.0)
    _bucket_runs_dry(rate)
    before = rate.rate_per_s
    # 20 calls/s against 70 allowed, for 30 s: never held back, so no growth (an idle
    # replica keeps its share instead of drifting up to a storm).
    for _ in range(600):
        clock.now += 0.05
        assert rate.admit(clock.now) == 0
    assert rate.rate_per_s == before


def test_the_ceiling_is_respected() -> None:
    clock = Clock()
    rate = _rate(clock, increase_per_s=50, ceiling_per_s=30)
    _send(rate, clock, 1000, over_s=1.0)
    _bucket_runs_dry(rate)
    assert rate.rate_per_s == 30  # 0.7 x 1,000 is above the ceiling
    admitted = _send(rate, clock, 10_000, over_s=10.0)
    assert rate.rate_per_s == 30
    assert admitted <= 30 * 10 + 2


def test_a_floor_keeps_a_throttled_replica_moving() -> None:
    clock = Clock()
    rate = _rate(clock)
    _send(rate, clock, 1, over_s=1.0)
    for _ in range(20):
        rate.throttled(rate.epoch)
    assert rate.rate_per_s == 1.0


async def test_acquire_waits_its_turn_on_the_clock() -> None:
    clock = Clock()
    rate = _rate(clock, increase_per_s=0.001)
    _send(rate, clock, 10, over_s=1.0)
    _bucket_runs_dry(rate)  # 7 calls/s
    started = clock.now
    order: list[int] = []

    async def call(n: int) -> None:
        await rate.acquire()
        order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(14):
            tg.start_soon(call, n)
    assert order == list(range(14)), "first come, first served"
    assert clock.now - started == pytest.approx(2.0, abs=0.2)


# -- three clients, one bucket ---------------------------------------------------------


@dataclass
class ServerBucket:
    """Step Functions' bucket: ``burst`` tokens, refilled continuously."""

    burst: float
    rate_per_s: float
    tokens: float = 0.0
    at: float | None = None

    def take(self, now: float) -> bool:
        self.tokens = (
            self.burst
            if self.at is None
            else min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        )
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Client:
    rate: AdaptiveRate
    starts_at: float
    in_flight: deque[tuple[float, int, bool]] = field(default_factory=deque)
    held: bool = False
    ok: list[float] = field(default_factory=list)
    throttled: int = 0


def simulate(
    clients: int, seconds: float, *, stagger_s: float = 0.5, seed: int = 7, adaptive: bool = True
) -> tuple[ServerBucket, list[Client]]:
    """Clients with endless work, 32 calls in flight each, 4 to 12 ms per call."""
    rng = random.Random(seed)
    now = 0.0
    server = ServerBucket(burst=200, rate_per_s=200)
    fleet = [
        Client(AdaptiveRate(AdaptiveParams(), clock=lambda: now), starts_at=n * stagger_s)
        for n in range(clients)
    ]
    step = 0.001
    while now < seconds:
        now += step
        for client in rng.sample(fleet, len(fleet)):
            if now < client.starts_at:
                continue
            while client.in_flight and client.in_flight[0][0] <= now:
                _, epoch, ok = client.in_flight.popleft()
                if not ok:
                    client.throttled += 1
                    if adaptive:
                        client.rate.throttled(epoch, now)
            while len(client.in_flight) < 32:
                if adaptive and client.rate.admit(now, waited=client.held) > 0:
                    client.held = True
                    break
                ok = server.take(now)
                if ok:
                    client.ok.append(now)
                done_at = now + rng.uniform(0.004, 0.012)
                client.in_flight.append((done_at, client.rate.epoch, ok))
    return server, fleet


def test_three_clients_converge_on_a_shared_bucket() -> None:
    _, fleet = simulate(3, 60.0)
    sent = sum(len(c.ok) + c.throttled for c in fleet)
    throttled = sum(c.throttled for c in fleet)
    assert throttled / sent <= 0.02, "few throttles once they share it"
    # After the start: the quota used, and shared.
    window = (20.0, 60.0)
    through = [sum(1 for t in c.ok if window[0] <= t < window[1]) for c in fleet]
    offered = 200 * (window[1] - window[0])
    assert sum(through) >= 0.95 * offered
    assert sum(through) <= offered + 200
    for share in through:
        assert 0.2 <= share / sum(through) <= 0.47, through
    # Every second of it, not just on average.
    for second in range(21, 60):
        n = sum(1 for c in fleet for t in c.ok if second <= t < second + 1)
        assert n >= 150, (second, n)


def test_without_adapting_the_same_fleet_storms() -> None:
    # The check above is worth something: the same clients, unlimited, are mostly throttled.
    _, fleet = simulate(3, 10.0, adaptive=False)
    sent = sum(len(c.ok) + c.throttled for c in fleet)
    assert sum(c.throttled for c in fleet) / sent > 0.9


# -- the completer and the metric ------------------------------------------------------


async def test_the_completer_backs_off_on_throttling_and_reports_the_rate() -> None:
    sfn = FakeSfn()
    token = sfn.new_token()
    rates = AdaptiveRates(AdaptiveParams(), ["SendTaskSuccess", "SendTaskFailure"])
    completer = Completer(sfn, concurrency=4, rates=rates)
    sfn.fail_next("send_task_success", client_error("ThrottlingException"), times=2)
    assert await completer.succeed(token, "{}") is Confirmation.CONFIRMED
    success = rates.get("SendTaskSuccess")
    assert success is not None
    assert success.rate_per_s is not None
    assert success.decreases >= 1
    allowed = rates.allowed()
    assert allowed["SendTaskFailure"] == math.inf, "each API its own rate"
    assert allowed["SendTaskSuccess"] == success.rate_per_s

    text = render_metrics(
        MetricsCollector(
            Stats(),
            BrokerGauges(
                in_flight=dict,
                free_slots=dict,
                ready=lambda: True,
                draining=lambda: False,
                completion_rates=rates.allowed,
            ),
        )
    ).decode()
    assert 'broker_completion_rate_allowed{api="SendTaskFailure"} +Inf' in text
    assert f'broker_completion_rate_allowed{{api="SendTaskSuccess"}} {success.rate_per_s}' in text


async def test_adapting_off_leaves_the_rate_alone() -> None:
    sfn = FakeSfn()
    token = sfn.new_token()
    rates = AdaptiveRates(AdaptiveParams(), ["SendTaskSuccess"], enabled=False)
    completer = Completer(sfn, concurrency=4, rates=rates)
    sfn.fail_next("send_task_success", client_error("ThrottlingException"), times=2)
    assert await completer.succeed(token, "{}") is Confirmation.CONFIRMED
    assert rates.allowed()["SendTaskSuccess"] == math.inf


async def test_the_broker_adapts_by_default_and_the_settings_switch_it_off() -> None:
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> int:
        return 1

    for adaptive in (True, False):
        settings = BrokerSettings(
            queues=(QueueSettings(name="tasks", wait_time_s=1),),
            entry_points=False,
            retry_base_delay_s=0,
            completion_rate_adaptive=adaptive,
        )
        async with TestBroker(router, settings) as tb:
            # Throttled three times in a row: a dry bucket, not a sporadic throttle.
            tb.sfn.fail_next("send_task_success", client_error("ThrottlingException"), times=3)
            await tb.start_task({}, message_type="ok")
            await tb.wait_idle()
            allowed = tb.broker.completion_rates.allowed()["SendTaskSuccess"]
        assert len(tb.sfn.outcomes) == 1
        assert (allowed < math.inf) is adaptive
