"""Helpers shared by the suites that run flows on an emulator (moto or LocalStack)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from broker import Broker, BrokerSettings, Router
from broker.local.endpoint import AwsEndpoint
from broker.local.executions import ExecutionResult, start_executions, wait_for_executions


@asynccontextmanager
async def running(settings: BrokerSettings, router: Router) -> AsyncIterator[Broker]:
    """The broker running in this test's event loop; drained when the block ends."""
    broker = Broker(settings, router)
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: broker.run(task_status=task_status))
        try:
            yield broker
        finally:
            broker.request_stop()


async def run_executions(
    aws: AwsEndpoint,
    machine: str,
    inputs: Sequence[Mapping[str, Any]],
    timeout_s: float = 60,
    name_prefix: str = "it",
) -> list[ExecutionResult]:
    arns = await anyio.to_thread.run_sync(
        lambda: start_executions(aws, machine, inputs, name_prefix=name_prefix)
    )
    results = await anyio.to_thread.run_sync(
        lambda: wait_for_executions(aws, arns, timeout_s=timeout_s)
    )
    return [results[arn] for arn in arns]


async def queue_depth(aws: AwsEndpoint, url: str) -> int:
    """Messages in the queue, visible or in flight."""
    sqs = aws.client("sqs")
    attributes = await anyio.to_thread.run_sync(
        lambda: sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    )
    return sum(int(v) for v in attributes.values())


async def assert_queues_drained(aws: AwsEndpoint, *urls: str) -> None:
    # Deletes are flushed after a short linger; give them a moment.
    with anyio.fail_after(10):
        while any([await queue_depth(aws, url) for url in urls]):
            await anyio.sleep(0.1)
