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


@pytest.mark.parametrize("after_s", [0.001, 0.25, 0.5, 0.75, 0.999, 1.0, 1.5])
async def test_a_claim_just_after_the_lease_ended_takes_the_task(after_s: float) -> None:
    # In the second after a lease ends the condition (whole seconds, once) and the read
    # (fractional) disagreed: the claim failed three times as "ClaimContended".
    dynamo, clock = FakeDynamoDb(), Clock(1_800_000_000.4)
    store = store_on(dynamo, clock)
    crashed = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(crashed, Claim)
    clock.now = crashed.lease_until + after_s
    taken = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(taken, Claim)
    assert taken.took_over
    # Until the lease's end the task is held, to the millisecond.
    clock.now = taken.lease_until - 0.002
    held = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(held, Held)
    assert 0 <= held.left_s < 0.01


async def test_a_claim_the_item_changes_under_every_time_is_busy_not_unavailable() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    assert isinstance(await store.claim(TOKEN, "charge", lease_s=90), Claim)
    # Each refused PutItem's read finds the task free (released meanwhile).
    real_get = dynamo.get_item

    async def get_free(**params: object) -> dict[str, object]:
        await real_get(**params)
        return {}

    dynamo.get_item = get_free  # type: ignore[method-assign]
    contended = await store.claim(TOKEN, "charge", lease_s=90)
    assert contended == Held(0.0)
    assert dynamo.calls["put_item"] == 1 + 3


async def test_a_renewed_lease_holds_past_its_first_end_and_renewal_stops_once_settled() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    claim = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(claim, Claim)
    assert not claim.took_over
    clock.now += 60
    renewed = await store.renew(claim, lease_s=90)
    assert renewed is not None
    assert renewed.lease_until == pytest.approx(clock.now + 90)
    clock.now += 60  # past the first lease, inside the renewed one
    held = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(held, Held)
    assert held.left_s == pytest.approx(30, abs=0.01)
    assert await store.record(claim, Closed())
    assert await store.renew(claim, lease_s=90) is None  # done: nothing to renew


async def test_a_lapsed_claim_cannot_be_renewed_once_taken_and_its_verdict_is_refused() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    first = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(first, Claim)
    clock.now += 91
    second = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(second, Claim)
    assert await store.renew(first, lease_s=90) is None
    assert await store.record(first, Closed()) is False
    assert isinstance(await store.find(TOKEN), Held)
    assert await store.record(second, Failed("Bad", "declined"))
    assert await store.find(TOKEN) == Replay(Failed("Bad", "declined"))
    # The first run finds the second's verdict, and cannot overwrite it.
    assert await store.record(first, Closed()) is False


async def test_a_lapsed_claim_nobody_took_still_records_and_owns_the_verdict() -> None:
    dynamo, clock = FakeDynamoDb(), Clock()
    store = store_on(dynamo, clock)
    first = await store.claim(TOKEN, "charge", lease_s=90)
    assert isinstance(first, Claim)
    clock.now += 120
    assert await store.record(first, Closed())
    # And after a release by a run that took it over, too.
    clock.now += 1
    other = await store.claim("other", "charge", lease_s=90)
    assert isinstance(other, Claim)
    clock.now += 91
    taken = await store.claim("other", "charge", lease_s=90)
    assert isinstance(taken, Claim)
    await store.release(taken)
    assert await store.record(other, Deferred("to a person"))
    assert await store.find("other") == Replay(Deferred("to a person"))


async def test_the_fake_refuses_a_placeholder_no_expression_uses() -> None:
    dynamo = FakeDynamoDb()
    dynamo.add_table(TABLE)
    with pytest.raises(ClientError, match="unused in expressions"):
        await dynamo.put_item(
            TableName=TABLE,
            Item={"id": {"S": "k"}},
            ConditionExpression="attribute_not_exists(#id)",
            ExpressionAttributeNames={"#id": "id", "#lease": "lease_until"},
        )
    with pytest.raises(ClientError, match="unused in expressions"):
        await dynamo.update_item(
            TableName=TABLE,
            Key={"id": {"S": "k"}},
            UpdateExpression="SET #a = :a",
            ExpressionAttributeNames={"#a": "a"},
            ExpressionAttributeValues={":a": {"S": "x"}, ":b": {"S": "y"}},
        )
