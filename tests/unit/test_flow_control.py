"""Concurrency limits, receive sizing, queue isolation, delete batching, rate limiting."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from broker import Outcome, QueueSettings, Router, Task
from broker.core.ratelimit import TokenBucket
from broker.sqs.deleter import DeleteBatcher
from broker.testing import FakeSfn, FakeSqs, TestBroker

from .conftest import make_settings


class Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, *_: object) -> None:
        self.now -= 1


async def reaches(gauge: Gauge, level: int, timeout_s: float = 30) -> None:
    """Wait until ``gauge`` is at ``level`` (state, not time: the machine may be slow)."""
    with anyio.fail_after(timeout_s):
        while gauge.now < level:
            await anyio.sleep(0.01)


async def test_total_and_per_queue_concurrency_are_honoured() -> None:
    settings = make_settings(
        QueueSettings(name="a", wait_time_s=1, concurrency=3),
        QueueSettings(name="b", wait_time_s=1),
        concurrency=5,
    )
    total, per_queue = Gauge(), {"a": Gauge(), "b": Gauge()}
    gate = anyio.Event()
    router = Router()

    @router.handler("work")
    async def work(task: Task[Any]) -> None:
        with total, per_queue[task.source]:
            await gate.wait()

    async with TestBroker(router, settings) as tb:
        # Handlers hold their slots until the gate opens, so the limits are reached
        # whatever the machine's speed, and whether they are exceeded is behaviour.
        for _ in range(30):
            await tb.start_task({}, message_type="work", queue="a")
        await reaches(per_queue["a"], 3)
        for _ in range(30):
            await tb.start_task({}, message_type="work", queue="b")
        await reaches(total, 5)
        assert (per_queue["a"].now, per_queue["b"].now) == (3, 2)
        gate.set()
        await tb.wait_idle(timeout_s=30)
    assert tb.broker.stats.total(Outcome.SUCCEEDED) == 60
    assert total.peak == 5
    assert per_queue["a"].peak == 3
    # Receives never ask for more than the free slots.
    assert max(tb.sqs.receive_sizes) <= 5


async def test_receive_asks_only_for_free_slots() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1), concurrency=2)
    release = anyio.Event()
    router = Router()

    @router.handler("hold")
    async def hold(task: Task[Any]) -> None:
        await release.wait()

    async with TestBroker(router, settings) as tb:
        for _ in range(5):
            await tb.start_task({}, message_type="hold")
        with anyio.fail_after(5):
            while tb.broker.in_flight < 2:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)
        # Both slots busy: the broker holds 2 messages and has not received more.
        assert tb.broker.in_flight == 2
        assert tb.sqs.visible("tasks") == 3
        release.set()
        await tb.wait_idle()
    assert tb.sqs.receive_sizes[0] == 2
    assert tb.sqs.count("tasks") == 0


async def test_a_slow_queue_does_not_block_another() -> None:
    settings = make_settings(
        QueueSettings(name="slow", wait_time_s=1, concurrency=2),
        QueueSettings(name="fast", wait_time_s=1),
        concurrency=8,
    )
    release = anyio.Event()
    done_fast = 0
    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> None:
        await release.wait()

    @router.handler("fast")
    async def fast(task: Task[Any]) -> None:
        nonlocal done_fast
        done_fast += 1

    async with TestBroker(router, settings) as tb:
        for _ in range(20):
            await tb.start_task({}, message_type="slow", queue="slow")
        for _ in range(30):
            await tb.start_task({}, message_type="fast", queue="fast")
        with anyio.fail_after(10):
            while done_fast < 30:
                await anyio.sleep(0.01)
        # All fast work finished while the slow queue was stuck holding its slots.
        assert tb.broker.consumers[0].in_flight == 2
        release.set()
        await tb.wait_idle()
    assert tb.sqs.count("slow") == tb.sqs.count("fast") == 0


async def test_completions_in_flight_are_capped() -> None:
    sfn = FakeSfn()
    sfn.latency_s = 0.02
    settings = make_settings(concurrency=40, completion_concurrency=4)
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router, settings, sfn=sfn) as tb:
        for _ in range(40):
            await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert len(sfn.outcomes) == 40
    assert sfn.max_in_flight["send_task_success"] == 4


async def test_deletes_are_batched_by_ten() -> None:
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> int:
        return 1

    settings = make_settings(concurrency=50, delete_linger_s=0.2)
    async with TestBroker(router, settings) as tb:
        for _ in range(50):
            await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    sizes = tb.sqs.delete_batch_sizes
    assert sum(sizes) == 50
    assert max(sizes) == 10
    assert len(sizes) <= 8  # nearly all full batches, not 50 single deletes


async def test_delete_batcher_flushes_a_partial_batch_after_linger_and_on_close() -> None:
    sqs = FakeSqs()
    url = sqs.create_queue("q")
    handles = []
    for i in range(3):
        sqs.put("q", f'{{"n": {i}}}')
    received = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=3)
    handles = [m["ReceiptHandle"] for m in received["Messages"]]
    batcher = DeleteBatcher(sqs, url, linger_s=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        await batcher.delete(handles[0])
        with anyio.fail_after(2):
            while sqs.delete_batch_sizes != [1]:
                await anyio.sleep(0.01)
        await batcher.delete(handles[1])
        await batcher.delete(handles[2])
        await batcher.close()
    assert sqs.delete_batch_sizes == [1, 2]
    assert sqs.count("q") == 0


async def test_token_bucket_spaces_calls_after_the_burst() -> None:
    bucket = TokenBucket(rate_per_s=100, burst=5)
    start = anyio.current_time()
    for _ in range(25):
        await bucket.acquire()
    elapsed = anyio.current_time() - start
    # 5 from the burst, then 20 at 100/s: at least 0.2 s (a floor, so it cannot flake).
    assert elapsed >= 0.19


async def test_rate_limit_applies_to_completions() -> None:
    settings = make_settings(concurrency=20, completion_rate_per_s=50, completion_burst=1)
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> int:
        return 1

    async with TestBroker(router, settings) as tb:
        for _ in range(11):
            await tb.start_task({}, message_type="ok")
        start = anyio.current_time()
        await tb.wait_idle()
        elapsed = anyio.current_time() - start
    assert len(tb.sfn.outcomes) == 11
    assert elapsed >= 10 / 50 - 0.01


async def test_no_log_line_contains_a_whole_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"), max_attempts=2
    )
    router = Router()

    @router.handler("fail")
    async def fail(task: Task[Any]) -> None:
        raise RuntimeError("boom")

    @router.handler("ok")
    async def ok(task: Task[Any]) -> int:
        return 1

    sfn = FakeSfn()
    async with TestBroker(router, settings, sfn=sfn) as tb:
        tokens = [await tb.start_task({}, message_type=kind) for kind in ("fail", "ok", "unknown")]
        sfn.fail_next("send_task_success", ConnectionError("reset"))
        await tb.wait_idle()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "tok:" in text  # tokens are referred to, by hash
    for token in tokens:
        assert token not in text
        assert token[:40] not in text


class CountingSqs(FakeSqs):
    """Counts ReceiveMessage calls in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.receiving = Gauge()

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        with self.receiving:
            return await super().receive_message(**params)


@pytest.mark.parametrize(
    ("queue", "concurrency", "expected"),
    [
        (QueueSettings(name="tasks", wait_time_s=1), 64, 4),  # one per 16 slots, at most 4
        (QueueSettings(name="tasks", wait_time_s=1), 20, 1),
        (QueueSettings(name="tasks", wait_time_s=1, receivers=2), 64, 2),
        (QueueSettings(name="tasks", wait_time_s=1, concurrency=32), 64, 2),
        (QueueSettings(name="tasks.fifo", wait_time_s=1, receivers=3), 64, 1),
    ],
)
async def test_receives_in_flight_per_queue(
    queue: QueueSettings, concurrency: int, expected: int
) -> None:
    sqs = CountingSqs()
    sqs.latency_s = 0.05  # every call takes a while, so loops overlap if there are several
    router = Router()

    @router.handler("work")
    async def work(task: Task[Any]) -> str:
        return "done"

    async with TestBroker(router, make_settings(queue, concurrency=concurrency), sqs=sqs) as tb:
        for _ in range(200):
            await tb.start_task({}, message_type="work", queue=queue.name)
        await tb.wait_idle(timeout_s=30)
        assert tb.broker.consumers[0].receivers == expected
    assert sqs.receiving.peak == expected
    assert len(tb.sfn.outcomes) == 200
