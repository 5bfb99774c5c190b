"""``idempotent=True``: one run per token when a run outlives its lease, when its claim
is taken over, when the source stops waiting for it, and for every recorded verdict."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import orjson
import pytest

from broker import NonRetryable, Outcome, Router, Task
from broker.core import once as once_module
from broker.core.idempotency import Claim, Held, IdempotencyStore, Replay, token_key
from broker.core.once import Once
from broker.core.router import Route
from broker.core.verdict import Busy, Failed, Retry, Succeeded, Verdict, timed_out
from broker.testing import FakeDynamoDb, FakeSfn, FakeSqs, TestBroker

from .conftest import make_settings

TABLE = "broker-idempotency"
TOKEN = "AQB" + "t" * 300


class Clock:
    """Epoch seconds the test moves by hand (the replicas' clocks, agreeing)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        return self.now


async def sleep_deaf(seconds: float) -> None:
    """Sleep ``seconds`` whatever cancels it: a handler that swallows ``CancelledError``
    (the broker cancels a run once at its timeout, then abandons it)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            await anyio.sleep(left)
        except anyio.get_cancelled_exc_class():
            pass  # deaf to its timeout, on purpose


def put(sqs: FakeSqs, token: str, message_type: str = "charge") -> None:
    body = orjson.dumps({"TaskToken": token, "input": {"amount": 12}})
    sqs.put("tasks", body, {"type": message_type})


def route_of(router: Router) -> Route:
    (route,) = router
    return route


async def test_a_run_that_outlives_its_lease_keeps_it_and_runs_once_on_two_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 21 item 9, scaled down: timeout 0.5 s + margin 1 s = a lease of 1.5 s, and a
    # handler that ignores its timeout's cancellation and returns after 4 s.  Without
    # renewal the other replica's copy took the lapsed claim and ran the handler again.
    monkeypatch.setattr(once_module, "LEASE_MARGIN_S", 1.0)
    runs: Counter[str] = Counter()
    router = Router()

    @router.handler("charge", idempotent=True, timeout_s=0.5)
    async def charge(task: Task[Any]) -> dict[str, int]:
        runs[task.token_ref] += 1
        await sleep_deaf(4)
        return {"charged": task.payload["amount"]}

    sqs, sfn, dynamodb = FakeSqs(), FakeSfn(), FakeDynamoDb()
    dynamodb.add_table(TABLE)
    sqs.create_queue("tasks")
    settings = make_settings(idempotency_table=TABLE, concurrency=1)
    first = TestBroker(router, settings, sqs=sqs, sfn=sfn, dynamodb=dynamodb)
    second = TestBroker(router, settings, sqs=sqs, sfn=sfn, dynamodb=dynamodb)
    token = sfn.new_token()
    started = time.monotonic()
    async with first, second:
        put(sqs, token)
        put(sqs, token)
        with anyio.move_on_after(30):
            while token not in sfn.outcomes or sqs.count("tasks"):
                await anyio.sleep(0.05)
        took_s = time.monotonic() - started
        closed = token in sfn.outcomes  # not asserted as is: pytest would show the token
        figures = f"runs {sum(runs.values())}, task closed: {closed}"
        print(f"\nrun outliving its lease: {figures}, after {took_s:.1f}s")
        assert closed, figures
        assert sum(runs.values()) == 1, figures
        await first.wait_idle(timeout_s=20)
        await second.wait_idle(timeout_s=20)
    assert sum(runs.values()) == 1
    # Its late result (the message path waits for it), or, where the source stops
    # waiting for a handler deaf to its timeout, the timeout failure.
    outcome = sfn.outcomes[token]
    assert outcome.status == "success" or outcome.error == "Broker.HandlerTimeout", outcome
    # Both replicas held a copy: one ran it, the other's copy waited and replayed.
    assert dynamodb.calls["update_item"] >= 2  # at least one renewal, and the verdict
    (item,) = dynamodb.items(TABLE)
    assert item["state"] == {"S": "done"}


async def test_a_non_retryable_failure_is_recorded_and_a_duplicate_does_not_run() -> None:
    # Issue 21 item 10: NonRetryable became Retry(retryable=False), whose claim was
    # released, so the second delivery ran the handler again: ['o-1', 'o-1'].
    runs: list[str] = []
    router = Router()

    class CardDeclined(NonRetryable, Exception):
        pass

    @router.handler("charge", idempotent=True)
    async def charge(task: Task[Any]) -> None:
        runs.append("o-1")
        raise CardDeclined("insufficient funds")

    async with TestBroker(router, make_settings()) as tb:
        token = tb.sfn.new_token()
        put(tb.sqs, token)
        await tb.wait_idle()
        # A late duplicate on a replica that did not settle it (sqs.memory is per
        # process): the recorded failure is replayed from the table.
        tb.broker.consumers[0]._processor.memory.clear()
        put(tb.sqs, token)
        await tb.wait_idle()
    assert runs == ["o-1"]
    assert tb.sfn.outcomes[token].error == "CardDeclined"
    assert tb.sfn.outcomes[token].cause == "insufficient funds"
    (item,) = tb.dynamodb.items(TABLE)
    assert item["verdict"] == {"S": "failed"}
    assert item["error"] == {"S": "CardDeclined"}
    assert tb.broker.stats.total(Outcome.EXHAUSTED) == 1
    assert tb.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert tb.sqs.count("tasks") == 0


def once_on(dynamo: FakeDynamoDb, clock: Clock) -> Once:
    return Once(IdempotencyStore(dynamo, TABLE, ttl_s=3_600, clock=clock), handler_timeout_s=60)


async def test_a_verdict_refused_after_a_takeover_sends_the_recorded_one_not_a_rerun() -> None:
    # Replica A's run could not keep its lease (say, paused); B took the task over and
    # recorded its verdict.  A must neither send its own nor leave the task to run again.
    dynamo, clock = FakeDynamoDb(), Clock()
    dynamo.add_table(TABLE)
    a, b = once_on(dynamo, clock), once_on(dynamo, clock)
    router = Router()
    release_a = anyio.Event()

    @router.handler("charge", idempotent=True)
    async def charge(task: Task[Any]) -> None: ...

    route = route_of(router)
    results: dict[str, Verdict] = {}

    async def run_a(run: Route) -> Verdict:
        await release_a.wait()
        return Succeeded({"by": "a"})

    async def run_b(run: Route) -> Verdict:
        return Succeeded({"by": "b"})

    async with anyio.create_task_group() as group:

        async def replica_a() -> None:
            results["a"] = await a.run(route, TOKEN, run_a)

        group.start_soon(replica_a)
        await anyio.sleep(0.05)
        clock.now += a.lease_s(route) + 1  # A's lease lapsed without a renewal
        results["b"] = await b.run(route, TOKEN, run_b)
        release_a.set()
    assert results["b"] == Succeeded({"by": "b"}, encoded='{"by":"b"}')
    # A sends what B recorded (the replayed form: the output as encoded).
    replayed = Succeeded('{"by":"b"}', encoded='{"by":"b"}')
    assert results["a"] == replayed
    # A later copy replays B's verdict too.
    assert await a.run(route, TOKEN, run_a) == replayed


async def test_a_verdict_refused_while_the_taker_still_runs_waits_for_its_verdict() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    dynamo.add_table(TABLE)
    a, b = once_on(dynamo, clock), once_on(dynamo, clock)
    router = Router()

    @router.handler("charge", idempotent=True)
    async def charge(task: Task[Any]) -> None: ...

    route = route_of(router)
    a_claim = await a.store.claim(TOKEN, "charge", a.lease_s(route))
    assert isinstance(a_claim, Claim)
    clock.now += a.lease_s(route) + 1
    b_claim = await b.store.claim(TOKEN, "charge", b.lease_s(route))
    assert isinstance(b_claim, Claim)
    assert b_claim.took_over
    clock.now += 10
    verdict = await a._settle(a_claim, TOKEN, Succeeded({"by": "a"}))
    assert isinstance(verdict, Busy)
    assert verdict.left_s == pytest.approx(b.lease_s(route) - 10, abs=0.01)
    assert isinstance(await a.store.find(TOKEN), Held)


async def test_a_run_the_source_stopped_waiting_for_keeps_the_task_from_a_second_run() -> None:
    # Where the source gives up on a handler deaf to cancellation (it goes on running),
    # the timeout it reports is recorded as final: a copy replays it instead of running.
    dynamo, clock = FakeDynamoDb(), Clock()
    dynamo.add_table(TABLE)
    a, b = once_on(dynamo, clock), once_on(dynamo, clock)
    runs = 0
    finish = anyio.Event()
    router = Router()

    @router.handler("charge", idempotent=True)
    async def charge(task: Task[Any]) -> None:
        nonlocal runs
        runs += 1
        await finish.wait()

    route = route_of(router)
    task: Task[Any] = Task(
        payload={}, message_type="charge", token=TOKEN, source="tasks", message_id="m-1"
    )
    async with anyio.create_task_group() as abandoned:

        async def stop_waiting(run: Route) -> Verdict:
            async def go_on() -> None:
                await run.handler(task)

            abandoned.start_soon(go_on)  # the handler's coroutine goes on elsewhere
            await anyio.sleep(0.05)
            return timed_out()

        verdict = await a.run(route, TOKEN, stop_waiting)
        assert isinstance(verdict, Retry)
        assert not verdict.retryable
        replayed = await b.run(route, TOKEN, stop_waiting)
        finish.set()
    assert runs == 1
    assert replayed == Failed(
        "Broker.HandlerTimeout", "handler exceeded its timeout", Outcome.EXHAUSTED
    )
    (item,) = dynamo.items(TABLE)
    assert item["id"] == {"S": token_key(TOKEN)}
    assert await b.store.find(TOKEN) == Replay(replayed)
