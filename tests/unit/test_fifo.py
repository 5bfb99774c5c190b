"""FIFO queues: one group's messages in order, one at a time; groups in parallel."""

from __future__ import annotations

from typing import Any

import anyio
import orjson

from broker import Router, Task
from broker.testing import FakeSqs, TestBroker

from .conftest import make_settings


def put(sqs: FakeSqs, tb: TestBroker, group: str, seq: int) -> None:
    body = {"TaskToken": tb.sfn.new_token(), "input": {"group": group, "seq": seq}}
    sqs.put("orders.fifo", orjson.dumps(body), {"type": "order"}, group_id=group)


async def test_groups_keep_their_order_and_run_in_parallel() -> None:
    sqs = FakeSqs()
    sqs.create_queue("orders.fifo")
    seen: dict[str, list[int]] = {"A": [], "B": []}
    running: dict[str, int] = {"A": 0, "B": 0}
    peak_total = 0
    peak_per_group = 0
    router = Router()

    @router.handler("order")
    async def order(task: Task[dict[str, Any]]) -> None:
        nonlocal peak_total, peak_per_group
        group = task.payload["group"]
        running[group] += 1
        peak_total = max(peak_total, sum(running.values()))
        peak_per_group = max(peak_per_group, running[group])
        await anyio.sleep(0.02)
        seen[group].append(task.payload["seq"])
        running[group] -= 1

    async with TestBroker(router, make_settings("orders.fifo", concurrency=10), sqs=sqs) as tb:
        for seq in range(6):
            put(sqs, tb, "A", seq)
            put(sqs, tb, "B", seq)
        await tb.wait_idle()
    assert seen == {"A": list(range(6)), "B": list(range(6))}
    assert peak_per_group == 1
    assert peak_total == 2
    assert sqs.count("orders.fifo") == 0


async def test_a_retried_message_is_not_overtaken_by_its_group() -> None:
    sqs = FakeSqs()
    sqs.create_queue("orders.fifo")
    calls: list[int] = []
    router = Router()

    @router.handler("order")
    async def order(task: Task[dict[str, Any]]) -> None:
        calls.append(task.payload["seq"])
        if task.payload["seq"] == 0 and task.receive_count == 1:
            raise ConnectionError("transient")

    async with TestBroker(router, make_settings("orders.fifo", concurrency=10), sqs=sqs) as tb:
        for seq in range(3):
            put(sqs, tb, "A", seq)
        await tb.wait_idle()
    assert calls == [0, 0, 1, 2]
    assert sqs.count("orders.fifo") == 0
