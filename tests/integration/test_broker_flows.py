"""The real broker against moto: seed state machines, real SQS, real task tokens.

Each test deploys the seed flows (``sqs:sendMessage.waitForTaskToken`` with each seed's
body shape), starts executions, runs the broker in-process, and asserts on what Step
Functions recorded: every execution SUCCEEDED with the handler's output or FAILED
with the handler's error, and nothing is left in the queues.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from broker import BrokerSettings, QueueSettings, Router, Task, TaskFailed
from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from handlers.seeds import router as seed_router
from tests.flows import assert_queues_drained, run_executions, running

pytestmark = pytest.mark.usefixtures("aws_env")


def settings_for(aws: EmbeddedAws, *queues: QueueSettings, **overrides: Any) -> BrokerSettings:
    return BrokerSettings(
        queues=queues,
        entry_points=False,
        aws_region=aws.region,
        aws_endpoint_url=aws.endpoint_url,
        delete_linger_s=0.02,
        http_port=0,
        **overrides,
    )


async def test_two_queues_both_seed_body_shapes(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    settings = settings_for(
        aws,
        # seed 000: {"input": ..., "MyTaskToken": ...}
        QueueSettings(name=seed_flows.queues["callback"], default_handler="callback"),
        # seed 004: {"Payload": ..., "TaskToken": ...}
        QueueSettings(name=seed_flows.queues["verification"], default_handler="verify"),
    )
    async with running(settings, seed_router):
        callbacks, verifications = await _gather(
            run_executions(
                aws, seed_flows.state_machines["callback"], [{"n": i} for i in range(5)]
            ),
            run_executions(
                aws,
                seed_flows.state_machines["verification"],
                [{"in": "SUCCESS"}, {"in": "RANDOM"}, {"in": "SUCCESS"}],
            ),
        )
    assert [r.status for r in callbacks] == ["SUCCEEDED"] * 5
    assert all(r.output == {"body": "Return from callback"} for r in callbacks)
    assert [r.status for r in verifications] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert verifications[0].output == {"result": {"in": "SUCCESS"}}
    assert verifications[1].error == "NO_SUCCESS_INPUT"
    await assert_queues_drained(aws, *seed_flows.queues.values())


async def test_attribute_routing_purchase_and_refund(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    # The transactions machine puts {"type": "purchase"|"refund"} in message attributes.
    settings = settings_for(aws, QueueSettings(name=seed_flows.queues["transactions"]))
    inputs = [{"TransactionType": "PURCHASE"}, {"TransactionType": "REFUND"}] * 3
    async with running(settings, seed_router) as broker:
        results = await run_executions(aws, seed_flows.state_machines["transactions"], inputs)
    assert [r.status for r in results] == ["SUCCEEDED"] * 6
    assert [r.output["TransactionType"] for r in results] == ["PURCHASE", "REFUND"] * 3
    assert results[0].output["Message"] == (
        "Hello from the broker inside the ProcessPurchase handler"
    )
    assert results[1].output["Message"] == "Hello from Refund Processor!"
    assert broker.stats.received[seed_flows.queues["transactions"]] == 6
    await assert_queues_drained(aws, seed_flows.queues["transactions"])


async def test_body_field_routing_with_a_dotted_path(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    # No attribute on the callback queue: the type is read from the payload.
    settings = settings_for(
        aws,
        QueueSettings(name=seed_flows.queues["callback"], type_field="input.TransactionType"),
    )
    inputs = [{"TransactionType": "PURCHASE"}, {"TransactionType": "REFUND"}]
    async with running(settings, seed_router):
        results = await run_executions(aws, seed_flows.state_machines["callback"], inputs)
    assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"]
    assert [r.output["TransactionType"] for r in results] == ["PURCHASE", "REFUND"]


async def test_typed_payload_rejection_and_unknown_type_fail_the_execution(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    settings = settings_for(
        aws,
        QueueSettings(name=seed_flows.queues["callback"], type_field="input.kind"),
    )
    inputs = [
        {"kind": "purchase"},  # typed handler: TransactionType missing
        {"kind": "no-such-type"},
        {"kind": "purchase", "TransactionType": "PURCHASE"},
    ]
    async with running(settings, seed_router):
        results = await run_executions(aws, seed_flows.state_machines["callback"], inputs)
    assert [r.status for r in results] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert results[0].error == "Broker.InvalidInput"
    assert results[1].error == "Broker.UnknownMessageType"
    await assert_queues_drained(aws, seed_flows.queues["callback"])


async def test_handler_failure_and_retry_then_success(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    router = Router()
    seen: dict[int, int] = {}

    @router.handler("work")
    async def work(task: Task[dict[str, int]]) -> dict[str, int]:
        n = task.payload["n"]
        seen[n] = seen.get(n, 0) + 1
        if n == 0:
            raise TaskFailed("Work.Refused", "n must not be 0")
        if n == 1 and seen[n] == 1:
            raise ConnectionError("transient")
        return {"double": 2 * n}

    settings = settings_for(
        aws,
        QueueSettings(name=seed_flows.queues["callback"], default_handler="work"),
        retry_base_delay_s=0,
    )
    async with running(settings, router):
        results = await run_executions(
            aws, seed_flows.state_machines["callback"], [{"n": 0}, {"n": 1}, {"n": 2}]
        )
    assert [r.status for r in results] == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
    assert results[0].error == "Work.Refused"
    assert results[1].output == {"double": 2}
    assert seen[1] == 2  # retried once, through a real redelivery
    await assert_queues_drained(aws, seed_flows.queues["callback"])


async def test_concurrency_limit_is_honoured(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    router = Router()
    now = peak = 0

    @router.handler("slowish")
    async def slowish(task: Task[Any]) -> dict[str, str]:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            await anyio.sleep(0.2)
        finally:
            now -= 1
        return {"ok": "yes"}

    settings = settings_for(
        aws,
        QueueSettings(name=seed_flows.queues["callback"], default_handler="slowish"),
        concurrency=3,
    )
    async with running(settings, router):
        results = await run_executions(
            aws, seed_flows.state_machines["callback"], [{"i": i} for i in range(24)]
        )
    assert [r.status for r in results] == ["SUCCEEDED"] * 24
    assert peak == 3


async def test_a_slow_handler_does_not_block_other_queues(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    router = Router()
    release = anyio.Event()

    @router.handler("stuck")
    async def stuck(task: Task[Any]) -> dict[str, str]:
        await release.wait()
        return {"finally": "released"}

    router.include(seed_router)
    settings = settings_for(
        aws,
        QueueSettings(name=seed_flows.queues["callback"], default_handler="stuck", concurrency=2),
        QueueSettings(name=seed_flows.queues["verification"], default_handler="verify"),
        concurrency=4,
    )
    async with running(settings, router):
        stuck_arns = await anyio.to_thread.run_sync(
            lambda: start_executions(
                aws, seed_flows.state_machines["callback"], [{}] * 4, name_prefix="stuck"
            )
        )
        fast = await run_executions(
            aws, seed_flows.state_machines["verification"], [{"in": "SUCCESS"}] * 10
        )
        # Every verification finished while the callback queue's handlers were stuck.
        assert [r.status for r in fast] == ["SUCCEEDED"] * 10
        release.set()
        stuck_results = await anyio.to_thread.run_sync(
            lambda: wait_for_executions(aws, stuck_arns, timeout_s=60)
        )
    assert [r.status for r in stuck_results.values()] == ["SUCCEEDED"] * 4


async def _gather(*calls: Any) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def one(index: int, call: Any) -> None:
        results[index] = await call

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(one, index, call)
    return results


async def test_slow_handler_outlives_the_visibility_timeout_without_redelivery(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    router = Router()
    runs = 0

    @router.handler("slow")
    async def slow(task: Task[Any]) -> dict[str, int]:
        nonlocal runs
        runs += 1
        await anyio.sleep(5)  # the message is received with a 2 s visibility timeout
        return {"runs": runs}

    settings = settings_for(
        aws,
        QueueSettings(
            name=seed_flows.queues["callback"], default_handler="slow", visibility_timeout_s=2
        ),
    )
    async with running(settings, router) as broker:
        [result] = await run_executions(aws, seed_flows.state_machines["callback"], [{}])
    assert result.status == "SUCCEEDED"
    assert result.output == {"runs": 1}
    assert runs == 1
    assert broker.stats.received[seed_flows.queues["callback"]] == 1
    await assert_queues_drained(aws, seed_flows.queues["callback"])


def _dlq_copies(aws: EmbeddedAws, url: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs")
    copies: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages"):
        copies.extend(batch)
    return copies


async def test_unknown_type_and_exhausted_attempts_are_dead_lettered_and_failed_fast(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    dlq = aws.client("sqs").create_queue(
        QueueName=seed_flows.queues["callback"].rsplit("/", 1)[-1] + "-dlq"
    )
    dlq_url = dlq["QueueUrl"]
    router = Router()

    @router.handler("broken", max_attempts=2)
    async def broken(task: Task[Any]) -> None:
        raise RuntimeError("the downstream service is gone")

    settings = settings_for(
        aws,
        QueueSettings(
            name=seed_flows.queues["callback"],
            type_field="input.kind",
            dead_letter_queue=dlq_url,
        ),
        retry_base_delay_s=0,
    )
    async with running(settings, router):
        results = await run_executions(
            aws, seed_flows.state_machines["callback"], [{"kind": "nobody"}, {"kind": "broken"}]
        )
    assert [(r.status, r.error) for r in results] == [
        ("FAILED", "Broker.UnknownMessageType"),
        ("FAILED", "RuntimeError"),
    ]
    copies = await anyio.to_thread.run_sync(lambda: _dlq_copies(aws, dlq_url))
    reasons = {
        c["MessageAttributes"]["broker.reason"]["StringValue"]: c["MessageAttributes"]
        for c in copies
    }
    assert set(reasons) == {"UnknownMessageType", "AttemptsExhausted"}
    exhausted = reasons["AttemptsExhausted"]
    assert exhausted["broker.receive_count"]["StringValue"] == "2"
    assert exhausted["broker.source_queue"]["StringValue"] == seed_flows.queues["callback"]
    assert "the downstream service is gone" in exhausted["broker.detail"]["StringValue"]
    await assert_queues_drained(aws, seed_flows.queues["callback"])


async def test_drain_hands_cut_off_messages_back_at_once(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    queue = seed_flows.queues["callback"]
    started = 0
    stuck = Router()

    @stuck.handler("work")
    async def never_finishes(task: Task[Any]) -> None:
        nonlocal started
        started += 1
        await anyio.sleep_forever()

    # A 300 s visibility: without the hand-back the messages would stay hidden that long.
    # The grace outlasts the long poll (as the defaults do, 25 s > 20 s): a poll cut off
    # at the end of the grace goes on waiting in SQS (and moto), and would take the
    # messages handed back then (docs/architecture.md, "Shutdown").
    settings = settings_for(
        aws,
        QueueSettings(name=queue, default_handler="work", visibility_timeout_s=300, wait_time_s=1),
        shutdown_grace_s=1.5,
    )
    arns = await anyio.to_thread.run_sync(
        lambda: start_executions(
            aws, seed_flows.state_machines["callback"], [{}] * 3, name_prefix="drain"
        )
    )
    async with running(settings, stuck) as broker:
        with anyio.fail_after(30):
            while started < 3:
                await anyio.sleep(0.05)
        stop_began = anyio.current_time()
        broker.request_stop()
    assert anyio.current_time() - stop_began < 1.5 + 3, "drain bounded by the grace period"

    sqs = aws.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {
        "ApproximateNumberOfMessages": "3",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }

    # The next broker gets them at once, long before the 300 s visibility would lapse.
    async with running(
        settings_for(aws, QueueSettings(name=queue, default_handler="callback")), seed_router
    ):
        results = await anyio.to_thread.run_sync(
            lambda: wait_for_executions(aws, arns, timeout_s=90)
        )
    assert [results[arn].status for arn in arns] == ["SUCCEEDED"] * 3
    await assert_queues_drained(aws, queue)


@pytest.mark.parametrize("aws_client", ["lean", "botocore"])
async def test_both_aws_clients_complete_fail_and_heartbeat_on_moto(
    aws: EmbeddedAws, seed_flows: SeedFlows, aws_client: str
) -> None:
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> dict[str, Any]:
        return {"echo": task.payload}

    @router.handler("no")
    async def no(task: Task[Any]) -> None:
        raise TaskFailed("Order.Rejected", "out of stock")

    @router.handler("slow", heartbeat_s=0.2)
    async def slow(task: Task[Any]) -> str:
        await anyio.sleep(1)
        return "slow but alive"

    settings = settings_for(
        aws,
        QueueSettings(name=seed_flows.queues["callback"], type_field="input.kind"),
        aws_client=aws_client,
    )
    inputs = [{"kind": "ok"}, {"kind": "no"}, {"kind": "nobody"}, {"kind": "slow"}]
    async with running(settings, router) as broker:
        results = await run_executions(aws, seed_flows.state_machines["callback"], inputs)
    assert [(r.status, r.output, r.error) for r in results] == [
        ("SUCCEEDED", {"echo": {"kind": "ok"}}, None),
        ("FAILED", None, "Order.Rejected"),
        ("FAILED", None, "Broker.UnknownMessageType"),
        ("SUCCEEDED", "slow but alive", None),
    ]
    # The seed state sets no HeartbeatSeconds, so moto answers the heartbeat InvalidToken:
    # heartbeats stop, the handler goes on, its completion decides.
    assert broker.stats.aws_seconds["SendTaskHeartbeat"].count == 1
    assert broker.stats.heartbeats["failed"] == 1
    assert broker.stats.aws_seconds["SendTaskSuccess"].count == 2
    await assert_queues_drained(aws, seed_flows.queues["callback"])
