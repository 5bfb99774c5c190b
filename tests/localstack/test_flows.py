"""The seeds' flows on LocalStack: the real broker, real state machines, real task tokens.

SQS callbacks in both seed body shapes, the Choice-state purchase/refund flow through
callbacks, and the activity worker (seed 003), which moto cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest

from broker import ActivitySettings, BrokerSettings, QueueSettings
from broker.local.executions import ExecutionResult
from broker.local.flows import SeedFlows, deploy_activity_flow
from broker.local.localstack import LocalStackAws
from handlers.seeds import router as seed_router
from tests.flows import assert_queues_drained, run_executions, running

from .handlers import router as slow_router


async def run_executions_ls(
    aws: LocalStackAws, machine: str, inputs: Sequence[Mapping[str, Any]], timeout_s: float = 60
) -> list[ExecutionResult]:
    return await run_executions(aws, machine, inputs, timeout_s, name_prefix="ls")


def settings_for(aws: LocalStackAws, **values: Any) -> BrokerSettings:
    return BrokerSettings(
        entry_points=False,
        aws_region=aws.region,
        aws_endpoint_url=aws.endpoint_url,
        delete_linger_s=0.02,
        # An idle GetActivityTask poll lasts 60 s on LocalStack: do not wait it out.
        shutdown_grace_s=2,
        **values,
    )


async def test_sqs_callback_in_both_seed_body_shapes(
    localstack: LocalStackAws, seed_flows: SeedFlows
) -> None:
    settings = settings_for(
        localstack,
        queues=(
            # seed 000: {"input": ..., "MyTaskToken": ...}
            QueueSettings(name=seed_flows.queues["callback"], default_handler="callback"),
            # seed 004: {"Payload": ..., "TaskToken": ...}
            QueueSettings(name=seed_flows.queues["verification"], default_handler="verify"),
        ),
    )
    async with running(settings, seed_router):
        callbacks = await run_executions_ls(
            localstack, seed_flows.state_machines["callback"], [{"n": i} for i in range(3)]
        )
        verifications = await run_executions_ls(
            localstack,
            seed_flows.state_machines["verification"],
            [{"in": "SUCCESS"}, {"in": "RANDOM"}],
        )
    assert [r.status for r in callbacks] == ["SUCCEEDED"] * 3
    assert all(r.output == {"body": "Return from callback"} for r in callbacks)
    assert [r.status for r in verifications] == ["SUCCEEDED", "FAILED"]
    assert verifications[0].output == {"result": {"in": "SUCCESS"}}
    # Unlike moto, LocalStack keeps the cause.
    assert (verifications[1].error, verifications[1].cause) == (
        "NO_SUCCESS_INPUT",
        'Input is not "SUCCESS"',
    )
    await assert_queues_drained(localstack, *seed_flows.queues.values())


async def test_choice_state_purchase_and_refund_through_callbacks(
    localstack: LocalStackAws, seed_flows: SeedFlows
) -> None:
    # The Choice state sends PURCHASE and REFUND to one queue, the type as an attribute.
    settings = settings_for(
        localstack, queues=(QueueSettings(name=seed_flows.queues["transactions"]),)
    )
    inputs = [{"TransactionType": "PURCHASE"}, {"TransactionType": "REFUND"}] * 2
    async with running(settings, seed_router):
        results = await run_executions_ls(
            localstack, seed_flows.state_machines["transactions"], inputs
        )
    assert [r.status for r in results] == ["SUCCEEDED"] * 4
    for given, result in zip(inputs, results, strict=True):
        assert result.output["TransactionType"] == given["TransactionType"]
    assert "ProcessPurchase" in results[0].output["Message"]
    assert results[1].output["Message"] == "Hello from Refund Processor!"
    await assert_queues_drained(localstack, seed_flows.queues["transactions"])


async def test_activity_worker_success_and_failure_inputs(
    localstack: LocalStackAws, unique: str
) -> None:
    flow = await anyio.to_thread.run_sync(lambda: deploy_activity_flow(localstack, name=unique))
    settings = settings_for(
        localstack,
        activities=(
            ActivitySettings(name=unique, handler="verify", pollers=2, worker_name="TestWorker"),
        ),
    )
    async with running(settings, seed_router) as broker:
        results = await run_executions_ls(
            localstack,
            flow.state_machine_arn,
            [{"in": "SUCCESS"}, {"in": "RANDOM"}, {"in": "SUCCESS"}],
        )
    assert [r.status for r in results] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert results[0].output == {"result": {"in": "SUCCESS"}}
    assert (results[1].error, results[1].cause) == ("NO_SUCCESS_INPUT", 'Input is not "SUCCESS"')
    assert broker.stats.received[unique] == 3


async def test_activity_by_arn_created_at_start_up_and_routed_by_a_type_field(
    localstack: LocalStackAws, unique: str
) -> None:
    settings = settings_for(
        localstack,
        activities=(ActivitySettings(name=unique, type_field="kind", create_if_missing=True),),
    )
    async with running(settings, slow_router):
        # The broker created the activity; the state machine is deployed on top of it.
        flow = await anyio.to_thread.run_sync(lambda: deploy_activity_flow(localstack, name=unique))
        (result,) = await run_executions_ls(
            localstack, flow.state_machine_arn, [{"kind": "slow-silent", "sleep_s": 0}]
        )
    assert result.status == "SUCCEEDED"
    assert result.output == {"slept": 0}


@pytest.mark.parametrize(
    ("handler", "status", "error"),
    [("slow-heartbeat", "SUCCEEDED", None), ("slow-silent", "FAILED", "States.Timeout")],
)
async def test_heartbeats_keep_a_slow_activity_alive(
    localstack: LocalStackAws, unique: str, handler: str, status: str, error: str | None
) -> None:
    # HeartbeatSeconds 2, a 5 s handler: only the one sending heartbeats every 0.5 s
    # survives; the silent one shows that LocalStack does enforce the heartbeat.
    flow = await anyio.to_thread.run_sync(
        lambda: deploy_activity_flow(localstack, name=unique, heartbeat_s=2)
    )
    settings = settings_for(
        localstack, activities=(ActivitySettings(name=unique, handler=handler),)
    )
    async with running(settings, slow_router):
        (result,) = await run_executions_ls(localstack, flow.state_machine_arn, [{"sleep_s": 5}])
    assert (result.status, result.error) == (status, error)
    if status == "SUCCEEDED":
        assert result.output == {"slept": 5}
