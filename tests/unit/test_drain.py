"""Stopping: polls stop, running handlers get the grace period, cut-off work goes back."""

from __future__ import annotations

from typing import Any

import anyio

from broker import QueueSettings, Router, Task
from broker.testing import FakeSqs, TestBroker

from .conftest import make_settings


async def test_handlers_finishing_within_the_grace_period_complete() -> None:
    router = Router()
    started = anyio.Event()

    @router.handler("finish")
    async def finish(task: Task[Any]) -> str:
        started.set()
        await anyio.sleep(0.3)
        return "finished during the drain"

    async with TestBroker(router, make_settings(shutdown_grace_s=5)) as tb:
        token = await tb.start_task({}, message_type="finish")
        await started.wait()
        # Leaving the block requests the stop while the handler still runs.
    assert tb.sfn.outcomes[token].output == "finished during the drain"
    assert tb.sqs.count("tasks") == 0  # the delete was flushed before exit


async def test_a_handler_cut_off_by_the_grace_period_gives_its_message_back_at_once() -> None:
    router = Router()
    started = anyio.Event()
    cancelled = False

    @router.handler("stuck")
    async def stuck(task: Task[Any]) -> None:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise

    settings = make_settings(QueueSettings(name="tasks", wait_time_s=20), shutdown_grace_s=0.3)
    stop_requested_at = 0.0
    async with TestBroker(router, settings) as tb:
        await tb.start_task({}, message_type="stuck")
        await started.wait()
        stop_requested_at = anyio.current_time()
    stopped_in_s = anyio.current_time() - stop_requested_at
    assert cancelled
    assert stopped_in_s < 0.3 + 2  # grace + a little, although a 20 s long poll was open
    assert tb.sqs.visible("tasks") == 1  # back in the queue now, not after 30 s
    assert tb.sfn.outcomes == {}


async def receive_in_flight(tb: TestBroker) -> None:
    """Wait until the broker's ReceiveMessage is open (its long poll waiting)."""
    with anyio.fail_after(5):
        while not tb.broker.consumers or not tb.broker.consumers[0].receiving:
            await anyio.sleep(0.01)


async def test_messages_a_poll_in_flight_returns_after_the_stop_are_handed_back_at_once() -> None:
    # The answer takes 0.2 s to arrive after SQS has put its messages in flight: a poll
    # cancelled at the stop would hide them for their 30 s visibility timeout.
    sqs = FakeSqs(answer_latency_s=0.2)
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=20, receivers=1), shutdown_grace_s=5
    )
    ran: list[str] = []
    router = Router()

    @router.handler("late")
    async def late(task: Task[Any]) -> None:
        ran.append(task.token)

    stop_requested_at = 0.0
    async with TestBroker(router, settings, sqs=sqs) as tb:
        await receive_in_flight(tb)
        for _ in range(3):
            await tb.start_task({}, message_type="late")
        await anyio.sleep(0.05)  # the poll has taken them; its answer is on its way
        assert tb.sqs.visible("tasks") == 0
        stop_requested_at = anyio.current_time()
    stopped_in_s = anyio.current_time() - stop_requested_at
    assert ran == []  # not started during the drain
    assert tb.sqs.count("tasks") == 3
    assert tb.sqs.visible("tasks") == 3  # visible again now, not in 30 s
    assert [m.receive_count for m in tb.sqs.messages("tasks")] == [1, 1, 1]
    assert tb.sqs.calls["change_message_visibility_batch"] == 1
    assert stopped_in_s < 2  # the poll returned at once: the grace was not waited out


async def test_an_idle_poll_open_at_the_stop_ends_within_the_grace_period() -> None:
    # A 20 s long poll with nothing to return: the stop waits for it no longer than the
    # grace period, and nothing is handed back.
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=20), shutdown_grace_s=0.3)
    stop_requested_at = 0.0
    async with TestBroker(Router(), settings) as tb:
        await receive_in_flight(tb)
        stop_requested_at = anyio.current_time()
    stopped_in_s = anyio.current_time() - stop_requested_at
    assert 0.25 <= stopped_in_s < 0.3 + 1
    assert tb.sqs.calls["change_message_visibility_batch"] == 0


async def test_no_poll_starts_after_the_stop() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1), shutdown_grace_s=5)
    async with TestBroker(Router(), settings) as tb:
        await receive_in_flight(tb)
        tb.broker.request_stop()
        calls = tb.sqs.calls["receive_message"]
        await anyio.sleep(1.5)  # the open poll ends: no other may follow
        assert tb.sqs.calls["receive_message"] == calls


async def test_with_several_polls_open_a_message_is_received_once_in_the_drain() -> None:
    # Four receive loops: what one returns after the stop is handed back only when the
    # others have returned too, else they would receive it again (each receive counts
    # against its attempts).
    sqs = FakeSqs(answer_latency_s=0.2)
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, receivers=4), shutdown_grace_s=5
    )
    async with TestBroker(Router(), settings, sqs=sqs) as tb:
        with anyio.fail_after(5):
            while tb.broker.consumers[0].receiving < 4:
                await anyio.sleep(0.01)
        for _ in range(3):
            await tb.start_task({}, message_type="late")
        await anyio.sleep(0.05)
    assert tb.sqs.visible("tasks") == 3
    assert [m.receive_count for m in tb.sqs.messages("tasks")] == [1, 1, 1]
