"""The idempotency table's claims, leases, verdicts and releases, on the fake DynamoDB."""

from __future__ import annotations

import hashlib

import anyio
import orjson
import pytest
from botocore.exceptions import ClientError

from broker.core.idempotency import (
    Claim,
    Held,
    IdempotencyStore,
    Replay,
    StoreUnavailable,
    token_key,
)
from broker.core.verdict import Closed, Deferred, Failed, Succeeded
from broker.observability.stats import Outcome
from broker.testing import FakeDynamoDb, client_error

TOKEN = "AQB" + "x" * 600
TABLE = "claims"


class Clock:
    """Epoch seconds the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_on(dynamo: FakeDynamoDb, clock: Clock, ttl_s: float = 3_600) -> IdempotencyStore:
    dynamo.add_table(TABLE)
    return IdempotencyStore(dynamo, TABLE, ttl_s=ttl_s, clock=clock)


async def test_the_first_claim_wins_and_a_second_finds_it_held_for_the_lease() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    first = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(first, Claim)
    clock.now += 30
    second = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(second, Held)
    assert 59 <= second.left_s <= 62
    # Writes and a read: the refused claim read the item to learn what holds it.
    assert dynamo.calls["put_item"] == 2
    assert dynamo.calls["get_item"] == 1


async def test_the_item_is_keyed_by_the_tokens_hash_and_never_holds_the_token() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    claim = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(claim, Claim)
    await store.record(claim, Succeeded({"ok": 1}, encoded='{"ok":1}'))
    (item,) = dynamo.items(TABLE)
    assert item["id"] == {"S": hashlib.sha256(TOKEN.encode()).hexdigest()}
    assert token_key(TOKEN) == item["id"]["S"]
    assert TOKEN not in orjson.dumps(item).decode()
    assert TOKEN[:40] not in orjson.dumps(item).decode()
    assert item["expires_at"] == {"N": str(int(clock.now + 3_600))}
    assert "lease_until" not in item


async def test_a_lapsed_lease_is_taken_over_and_the_old_run_cannot_record() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    crashed = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(crashed, Claim)
    clock.now += 92  # the replica that claimed it died: its lease lapses
    taken = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(taken, Claim)
    assert taken.claim_id != crashed.claim_id
    # The first run, had it lived, finds its claim gone: it must not record (nor send).
    assert await store.record(crashed, Closed()) is False
    assert await store.record(taken, Failed("Bad", "card declined")) is True
    replay = await store.claim(TOKEN, "charge", lease_s=90)
    assert replay == Replay(Failed("Bad", "card declined", Outcome.FAILED))


@pytest.mark.parametrize(
    "verdict",
    [
        Succeeded('{"charged": "€12"}', encoded='{"charged": "€12"}'),
        Failed("Card.Declined", "insufficient funds"),
        Failed("Broker.OutputTooLarge", "too large", Outcome.INVALID_OUTPUT),
        Failed("NoCause", ""),
        Closed(),
        Deferred("sent to a person"),
        Deferred(),
    ],
)
async def test_every_recorded_verdict_is_replayed_as_it_was(
    verdict: Succeeded | Failed | Closed | Deferred,
) -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    claim = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(claim, Claim)
    assert await store.record(claim, verdict)
    clock.now += 3_000  # long after the lease: a done record does not lapse with it
    assert await store.claim(TOKEN, "charge", lease_s=90) == Replay(verdict)


async def test_a_record_past_its_ttl_counts_as_absent() -> None:
    # DynamoDB's TTL deletes expired items within days, not at once.
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock, ttl_s=600)
    claim = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(claim, Claim)
    await store.record(claim, Closed())
    clock.now += 601
    assert isinstance(await store.claim(TOKEN, "charge", lease_s=90), Claim)


async def test_a_released_claim_is_free_at_once_and_a_foreign_release_changes_nothing() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    first = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(first, Claim)
    await store.release(first)
    second = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(second, Claim)
    await store.release(first)  # not ours any more: refused quietly
    assert isinstance(await store.claim(TOKEN, "charge", lease_s=90), Held)
    await store.record(second, Closed())
    await store.release(second)  # done: a release does not undo a verdict
    assert await store.claim(TOKEN, "charge", lease_s=90) == Replay(Closed())


async def test_concurrent_claims_of_one_token_give_exactly_one_claim() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    dynamo.latency_s = 0.01  # every call yields: the claims interleave
    store = store_on(dynamo, clock)
    results: list[object] = []

    async def claim() -> None:
        results.append(await store.claim(TOKEN, "charge", lease_s=90))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(claim)
    assert sum(isinstance(r, Claim) for r in results) == 1
    assert sum(isinstance(r, Held) for r in results) == 19


@pytest.mark.parametrize(
    ("api", "code"),
    [
        ("put_item", "ProvisionedThroughputExceededException"),
        ("put_item", "AccessDeniedException"),
        ("get_item", "InternalServerError"),
    ],
)
async def test_a_store_failure_is_one_error_naming_its_code(api: str, code: str) -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    assert isinstance(await store.claim("other", "charge", lease_s=90), Claim)
    if api == "get_item":
        assert isinstance(await store.claim(TOKEN, "charge", lease_s=90), Claim)
    dynamo.fail_next(api, client_error(code, status=500 if "Internal" in code else 400))
    with pytest.raises(StoreUnavailable) as raised:
        await store.claim(TOKEN, "charge", lease_s=90)
    assert raised.value.code == code


async def test_an_unreadable_record_is_a_store_failure_not_a_replay() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    await dynamo.put_item(
        TableName=TABLE,
        Item={
            "id": {"S": token_key(TOKEN)},
            "state": {"S": "done"},
            "verdict": {"S": "from-a-later-version"},
            "expires_at": {"N": str(int(clock.now + 60))},
        },
    )
    with pytest.raises(StoreUnavailable, match="UnreadableRecord"):
        await store.claim(TOKEN, "charge", lease_s=90)


async def test_the_fake_refuses_expressions_it_does_not_know() -> None:
    dynamo = FakeDynamoDb()
    dynamo.add_table(TABLE)
    with pytest.raises(ClientError, match="ValidationException"):
        await dynamo.put_item(
            TableName=TABLE,
            Item={"id": {"S": "k"}},
            ConditionExpression="begins_with(#id, :p)",
            ExpressionAttributeNames={"#id": "id"},
            ExpressionAttributeValues={":p": {"S": "k"}},
        )
