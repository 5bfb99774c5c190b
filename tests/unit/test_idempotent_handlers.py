"""``idempotent=True`` handlers through the real broker on the fakes: one run per token."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import orjson
import pytest

from broker import ActivitySettings, Deferred, Outcome, Router, Task
from broker.aws.dynamo import create_table, open_store
from broker.aws.startup import StartupRetry
from broker.core.errors import ConfigError, TableNotFound, TaskFailed
from broker.core.idempotency import Claim, IdempotencyStore, token_key
from broker.core.verdict import Succeeded
from broker.service import Broker, configuration_problems
from broker.testing import FakeDynamoDb, FakeSfn, FakeSqs, TestBroker, client_error

from .conftest import make_settings

TABLE = "broker-idempotency"


def put(tb: TestBroker, token: str, message_type: str = "charge", copies: int = 1) -> None:
    body = orjson.dumps({"TaskToken": token, "input": {"amount": 12}})
    for _ in range(copies):
        tb.sqs.put("tasks", body, {"type": message_type})


def counting_router(effects: Counter[str], *, sleep_s: float = 0.0, **options: Any) -> Router:
    router = Router()

    @router.handler("charge", idempotent=True, **options)
    async def charge(task: Task[Any]) -> dict[str, Any]:
        effects[task.token_ref] += 1
        await anyio.sleep(sleep_s)
        return {"charged": task.payload["amount"]}

    return router


async def test_copies_arriving_after_the_first_settled_are_replayed_not_run() -> None:
    # In-process duplicate suppression only sees copies in flight at once; these come
    # later, as a redelivery after a lost delete or a replica's crash would.
    effects: Counter[str] = Counter()
    async with TestBroker(counting_router(effects), make_settings()) as tb:
        tokens = [tb.sfn.new_token() for _ in range(5)]
        for token in tokens:
            put(tb, token)
        await tb.wait_idle()
        for token in tokens:
            put(tb, token, copies=2)
        await tb.wait_idle(timeout_s=15)
    assert sorted(effects.values()) == [1] * 5
    assert all(tb.sfn.outcomes[t].output == {"charged": 12} for t in tokens)
    assert tb.sqs.count("tasks") == 0
    assert tb.broker.stats.total(Outcome.SUCCEEDED) == 5
    # The replayed completions were answered "closed" (or were in-process duplicates).
    later = tb.broker.stats.total(Outcome.TASK_CLOSED) + tb.broker.stats.total(Outcome.DUPLICATE)
    assert later == 10
    # Two writes per task (claim, verdict); each later copy's claim was refused and read.
    assert len(tb.dynamodb.items(TABLE)) == 5
    assert tb.dynamodb.calls["update_item"] == 5


async def test_two_replicas_share_the_table_and_run_each_token_once() -> None:
    effects: Counter[str] = Counter()
    sqs, sfn, dynamodb = FakeSqs(), FakeSfn(), FakeDynamoDb()
    dynamodb.add_table(TABLE)
    sqs.create_queue("tasks")
    settings = make_settings(idempotency_table=TABLE, concurrency=8)
    router = counting_router(effects, sleep_s=0.05)
    tokens = [sfn.new_token() for _ in range(40)]
    first = TestBroker(router, settings, sqs=sqs, sfn=sfn, dynamodb=dynamodb)
    second = TestBroker(router, settings, sqs=sqs, sfn=sfn, dynamodb=dynamodb)
    async with first, second:
        # The copies of a token apart in the queue: received by different replicas
        # (adjacent ones would come in one receive, and be in-process duplicates).
        for _ in range(2):
            for token in tokens:
                put(first, token)
        await first.wait_idle(timeout_s=20)
        await second.wait_idle(timeout_s=20)
    assert len(effects) == 40
    assert set(effects.values()) == {1}
    assert all(sfn.outcomes[t].status == "success" for t in tokens)
    assert sqs.count("tasks") == 0
    ran = [b.broker.stats.total(Outcome.SUCCEEDED) for b in (first, second)]
    assert sum(ran) == 40


async def test_a_recorded_verdict_is_replayed_without_running_the_handler() -> None:
    # What a replica killed after recording, before its completion, leaves behind.
    effects: Counter[str] = Counter()
    async with TestBroker(counting_router(effects), make_settings()) as tb:
        token = tb.sfn.new_token()
        store = IdempotencyStore(tb.dynamodb, TABLE, ttl_s=3_600)
        claim = await store.claim(token, "charge", lease_s=60)
        assert isinstance(claim, Claim)
        await store.record(claim, Succeeded(None, encoded='{"charged": "before the crash"}'))
        put(tb, token)
        await tb.wait_idle()
    assert not effects
    assert tb.sfn.outcomes[token].output == {"charged": "before the crash"}
    assert tb.broker.stats.total(Outcome.SUCCEEDED) == 1
    assert tb.sqs.count("tasks") == 0


async def test_a_live_claim_elsewhere_sends_the_copy_back_without_counting_an_attempt() -> None:
    effects: Counter[str] = Counter()
    settings = make_settings(max_attempts=1)
    async with TestBroker(counting_router(effects, timeout_s=1), settings) as tb:
        token = tb.sfn.new_token()
        store = IdempotencyStore(tb.dynamodb, TABLE, ttl_s=3_600)
        # Another replica claimed it and died: its lease (timeout 1 s + the margin) ends
        # later; with max_attempts 1 a counted attempt would fail the task.
        claim = await store.claim(token, "charge", lease_s=1.5)
        assert isinstance(claim, Claim)
        put(tb, token)
        await anyio.sleep(1.0)
        assert not effects
        assert tb.broker.stats.total(Outcome.RETRY) >= 1
        await tb.wait_idle(timeout_s=10)
    assert effects[next(iter(effects))] == 1
    assert tb.sfn.outcomes[token].output == {"charged": 12}


async def test_a_claim_the_table_refuses_runs_nothing_and_the_message_comes_back() -> None:
    effects: Counter[str] = Counter()
    async with TestBroker(counting_router(effects), make_settings()) as tb:
        tb.dynamodb.fail_next(
            "put_item", client_error("ProvisionedThroughputExceededException"), times=2
        )
        token = tb.sfn.new_token()
        put(tb, token)
        await tb.wait_idle(timeout_s=10)
    assert sum(effects.values()) == 1
    assert tb.dynamodb.calls["put_item"] == 3
    assert tb.sfn.outcomes[token].status == "success"
    assert tb.broker.stats.total(Outcome.RETRY) == 2


async def test_a_verdict_the_table_cannot_record_is_sent_anyway() -> None:
    effects: Counter[str] = Counter()
    async with TestBroker(counting_router(effects), make_settings()) as tb:
        tb.dynamodb.fail_next("update_item", client_error("InternalServerError", status=500))
        token = tb.sfn.new_token()
        put(tb, token)
        await tb.wait_idle()
    assert sum(effects.values()) == 1
    assert tb.sfn.outcomes[token].status == "success"
    assert tb.sqs.count("tasks") == 0


async def test_a_retry_releases_the_claim_and_a_decided_failure_is_replayed() -> None:
    runs: Counter[str] = Counter()
    router = Router()

    @router.handler("charge", idempotent=True)
    async def charge(task: Task[Any]) -> None:
        runs[task.token_ref] += 1
        if runs[task.token_ref] == 1:
            raise ConnectionError("the bank did not answer")
        raise TaskFailed("Card.Declined", "insufficient funds")

    async with TestBroker(router, make_settings()) as tb:
        token = tb.sfn.new_token()
        put(tb, token)
        await tb.wait_idle()
        assert sum(runs.values()) == 2  # the retry ran it again: it decided nothing
        # A late duplicate, on a replica that did not settle it (sqs.memory is per
        # process): replayed from the table, not run.
        tb.broker.consumers[0]._processor.memory.clear()
        put(tb, token)
        await tb.wait_idle()
    assert sum(runs.values()) == 2
    assert tb.sfn.outcomes[token].error == "Card.Declined"
    assert tb.broker.stats.total(Outcome.TASK_CLOSED) == 1


async def test_a_deferred_task_is_not_handed_to_a_person_twice() -> None:
    runs = 0
    router = Router()

    @router.handler("approve", idempotent=True)
    async def approve(task: Task[Any]) -> Deferred:
        nonlocal runs
        runs += 1
        return Deferred("mailed")

    async with TestBroker(router, make_settings()) as tb:
        token = tb.sfn.new_token()
        put(tb, token, "approve")
        await tb.wait_idle()
        tb.broker.consumers[0]._processor.memory.clear()  # another replica's copy
        put(tb, token, "approve")
        await tb.wait_idle()
    assert runs == 1
    assert token not in tb.sfn.outcomes  # still open, for the person
    assert tb.broker.stats.total(Outcome.DEFERRED) == 2
    assert tb.sqs.count("tasks") == 0


async def test_an_idempotent_activity_task_is_recorded_and_a_table_failure_fails_it() -> None:
    effects: Counter[str] = Counter()
    settings = make_settings(
        activities=(ActivitySettings(name="charges", handler="charge", pollers=1),),
    )
    async with TestBroker(counting_router(effects), settings) as tb:
        done = tb.start_activity_task({"amount": 12})
        await tb.wait_idle()
        tb.dynamodb.fail_next("put_item", client_error("AccessDeniedException"))
        refused = tb.start_activity_task({"amount": 12})
        await tb.wait_idle()
    assert tb.sfn.outcomes[done].output == {"charged": 12}
    assert tb.sfn.outcomes[refused].error == "Broker.IdempotencyUnavailable"
    assert sum(effects.values()) == 1
    keys = {item["id"]["S"] for item in tb.dynamodb.items(TABLE)}
    assert keys == {token_key(done)}


def test_an_idempotent_route_needs_the_table_and_a_timeout() -> None:
    router = counting_router(Counter())
    problems = configuration_problems(make_settings(), router)
    assert [str(p).split(":")[0] for p in problems] == ["BROKER_IDEMPOTENCY_TABLE"]
    with pytest.raises(ConfigError, match="BROKER_IDEMPOTENCY_TABLE: not set, but handler"):
        Broker(make_settings(), router)
    untimed = make_settings(idempotency_table=TABLE, handler_timeout_s=None)
    (problem,) = configuration_problems(untimed, router)
    assert "need a timeout" in str(problem)
    timed = counting_router(Counter(), timeout_s=30)
    assert configuration_problems(untimed, timed) == []


async def test_start_up_refuses_a_table_whose_key_does_not_fit() -> None:
    dynamodb = FakeDynamoDb()
    dynamodb.add_table(TABLE, key="pk")
    settings = make_settings(idempotency_table=TABLE)
    with pytest.raises(ConfigError, match="one string partition key 'id' and no sort key"):
        await open_store(dynamodb, settings, StartupRetry(5))


async def test_start_up_names_a_missing_table_and_warns_of_a_ttl_that_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dynamodb = FakeDynamoDb()
    settings = make_settings(idempotency_table=TABLE)
    with pytest.raises(TableNotFound, match="BROKER_IDEMPOTENCY_TABLE table 'broker-idempotency'"):
        await open_store(dynamodb, settings, StartupRetry(5))
    dynamodb.add_table(TABLE, ttl=None)
    store = await open_store(dynamodb, settings, StartupRetry(5))
    assert store is not None
    assert store.table == TABLE
    assert "its TTL is not on 'expires_at'" in caplog.text
    assert await open_store(dynamodb, make_settings(), StartupRetry(5)) is None


async def test_create_table_makes_a_table_start_up_accepts_and_leaves_one_that_exists() -> None:
    dynamodb = FakeDynamoDb()
    state, created = await create_table(dynamodb, TABLE)
    assert created
    assert state.problems() == []
    assert dynamodb.calls["update_time_to_live"] == 1
    again, created = await create_table(dynamodb, TABLE)
    assert not created
    assert again == state
    dynamodb.add_table("wrong", key="pk", key_type="N", ttl=None)
    wrong, created = await create_table(dynamodb, "wrong")
    assert not created
    assert len(wrong.problems()) == 2
