"""While a handler runs: its message stays invisible, heartbeats go out, a closed task stops it."""

from __future__ import annotations

from typing import Any

import anyio

from broker import Outcome, QueueSettings, Router, Task, TaskClosed
from broker.testing import FakeSfn, FakeSqs, TestBroker, client_error

from .conftest import make_settings


async def test_slow_handler_keeps_its_message_invisible_and_runs_once() -> None:
    sqs = FakeSqs()
    sqs.create_queue("tasks", visibility_timeout_s=1)
    runs = 0
    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> str:
        nonlocal runs
        runs += 1
        await anyio.sleep(2.6)  # well past the 1 s visibility timeout
        return "done"

    async with TestBroker(router, make_settings(), sqs=sqs) as tb:
        token = await tb.start_task({}, message_type="slow")
        await tb.wait_idle()
    assert runs == 1
    assert tb.sfn.outcomes[token].output == "done"
    assert sqs.calls["change_message_visibility"] >= 4  # every 0.5 s
    assert sqs.count("tasks") == 0


async def test_without_extension_the_same_handler_would_run_twice() -> None:
    # The control for the test above: the fake really redelivers an expired message.
    sqs = FakeSqs()
    url = sqs.create_queue("tasks", visibility_timeout_s=1)
    sqs.put("tasks", "{}")
    first = await sqs.receive_message(QueueUrl=url)
    await anyio.sleep(1.1)
    second = await sqs.receive_message(QueueUrl=url)
    assert first["Messages"][0]["MessageId"] == second["Messages"][0]["MessageId"]


async def test_configured_heartbeats_are_sent_while_the_handler_runs() -> None:
    router = Router()

    @router.handler("beat", heartbeat_s=0.05)
    async def beat(task: Task[Any]) -> str:
        await anyio.sleep(0.32)
        return "ok"

    async with TestBroker(router, make_settings()) as tb:
        token = await tb.start_task({}, message_type="beat")
        await tb.wait_idle()
    assert 4 <= tb.sfn.heartbeats[token] <= 7
    assert tb.sfn.outcomes[token].output == "ok"


async def test_heartbeat_answered_task_closed_cancels_the_handler_and_drops_the_message() -> None:
    sfn = FakeSfn()
    router = Router()
    cancelled = anyio.Event()

    @router.handler("long", heartbeat_s=0.05)
    async def long(task: Task[Any]) -> str:
        sfn.close(task.token)  # the workflow times out while the handler works
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "too late"

    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1))
    async with TestBroker(router, settings, sfn=sfn) as tb:
        await tb.start_task({}, message_type="long")
        with anyio.fail_after(5):
            await cancelled.wait()
        await tb.wait_idle()
    assert tb.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert tb.sqs.count("tasks") == 0
    assert sfn.calls["send_task_success"] == 0


async def test_heartbeat_answered_invalid_token_stops_heartbeats_but_not_the_work() -> None:
    # The emulators answer InvalidToken for a state without HeartbeatSeconds: cancelling
    # on it would leave the workflow waiting for a task nobody runs.
    sfn = FakeSfn()
    router = Router()

    @router.handler("long", heartbeat_s=0.05)
    async def long(task: Task[Any]) -> str:
        await anyio.sleep(0.5)
        await task.heartbeat()  # refused as well: no TaskClosed either
        return "done"

    sfn.fail_next("send_task_heartbeat", client_error("InvalidToken"), times=2)
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1))
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = await tb.start_task({}, message_type="long")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == "done"
    assert sfn.calls["send_task_heartbeat"] == 2  # one scheduled, one asked; then no more


async def test_task_heartbeat_raises_task_closed_and_the_message_is_dropped() -> None:
    sfn = FakeSfn()
    router = Router()
    raised: list[str] = []

    @router.handler("beat-myself")
    async def beat_myself(task: Task[Any]) -> str:
        sfn.close(task.token)
        try:
            await task.heartbeat()
        except TaskClosed as exc:
            raised.append(str(exc))
            raise
        return "unreachable"

    async with TestBroker(router, make_settings(), sfn=sfn) as tb:
        token = await tb.start_task({}, message_type="beat-myself")
        await tb.wait_idle()
    assert len(raised) == 1
    assert token not in raised[0]
    assert tb.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert tb.sqs.count("tasks") == 0


async def test_messages_running_together_are_extended_together() -> None:
    # One visibility timer per queue: the messages due together share one
    # ChangeMessageVisibilityBatch instead of one call (and one task) each.
    sqs = FakeSqs()
    sqs.create_queue("tasks", visibility_timeout_s=1)
    runs: list[str] = []
    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> str:
        runs.append(task.token)
        await anyio.sleep(1.7)  # past the 1 s visibility timeout
        return "done"

    async with TestBroker(router, make_settings(), sqs=sqs) as tb:
        tokens = [await tb.start_task({}, message_type="slow") for _ in range(6)]
        await tb.wait_idle()
    assert sorted(runs) == sorted(tokens)  # each ran once
    assert all(tb.sfn.outcomes[token].output == "done" for token in tokens)
    assert sqs.calls["change_message_visibility_batch"] >= 2
    assert sqs.calls["change_message_visibility"] < 6
