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


async def receive_in_flight(tb: TestBroker, count: int = 1) -> None:
    """Wait until ``count`` of the broker's ReceiveMessage calls are open (waiting)."""
    with anyio.fail_after(5):
        while not tb.broker.consumers or tb.broker.consumers[0].receiving < count:
            await anyio.sleep(0.01)


def busy_router(handler_s: float) -> tuple[Router, list[str]]:
    """A "slow" handler that keeps the drain going; "late" ones record that they ran."""
    router = Router()
    ran: list[str] = []

    @router.handler("slow")
    async def slow(task: Task[Any]) -> None:
        await anyio.sleep(handler_s)

    @router.handler("late")
    async def late(task: Task[Any]) -> None:
        ran.append(task.token)

    return router, ran


async def test_messages_a_poll_in_flight_returns_during_the_drain_are_handed_back() -> None:
    # The answer takes 0.2 s to arrive after SQS has put its messages in flight: a poll
    # cancelled at the stop would hide them for their 30 s visibility timeout.
    sqs = FakeSqs(answer_latency_s=0.2)
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=20, receivers=1), shutdown_grace_s=5
    )
    router, ran = busy_router(handler_s=1.0)
    stop_requested_at = 0.0
    async with TestBroker(router, settings, sqs=sqs) as tb:
        slow = await tb.start_task({}, message_type="slow")
        with anyio.fail_after(5):
            while not tb.broker.in_flight:
                await anyio.sleep(0.01)
        await receive_in_flight(tb)
        stop_requested_at = anyio.current_time()
        tb.broker.request_stop()
        for _ in range(3):
            await tb.start_task({}, message_type="late")
        await anyio.sleep(0.05)  # the poll has taken them; its answer is on its way
        assert tb.sqs.visible("tasks") == 0
        with anyio.fail_after(0.9):  # handed back while the slow handler still runs
            while tb.sqs.visible("tasks") < 3:
                await anyio.sleep(0.01)
    stopped_in_s = anyio.current_time() - stop_requested_at
    assert tb.sfn.outcomes[slow].status == "success"
    assert ran == []  # not started during the drain
    assert tb.sqs.count("tasks") == 3
    assert tb.sqs.visible("tasks") == 3  # visible again now, not in 30 s
    assert [m.receive_count for m in tb.sqs.messages("tasks")] == [1, 1, 1]
    assert tb.sqs.calls["change_message_visibility_batch"] == 1
    assert stopped_in_s < 1.0 + 1  # the handler's second, not the grace or the poll's 20 s


async def test_with_several_polls_open_a_message_is_received_once_in_the_drain() -> None:
    # Four receive loops: what one returns after the stop is handed back only when the
    # others have returned too, else they would receive it again (each receive counts
    # against its attempts).
    sqs = FakeSqs(answer_latency_s=0.2)
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, receivers=4), shutdown_grace_s=5
    )
    router, ran = busy_router(handler_s=2.0)
    async with TestBroker(router, settings, sqs=sqs) as tb:
        await tb.start_task({}, message_type="slow")
        with anyio.fail_after(5):
            while not tb.broker.in_flight:
                await anyio.sleep(0.01)
        await receive_in_flight(tb, count=4)
        tb.broker.request_stop()
        for _ in range(3):
            await tb.start_task({}, message_type="late")
    assert ran == []
    assert tb.sqs.visible("tasks") == 3
    assert [m.receive_count for m in tb.sqs.messages("tasks")] == [1, 1, 1]


async def test_an_idle_broker_stops_at_once_cutting_its_open_poll() -> None:
    # Nothing runs but a 20 s long poll that found nothing: the stop does not wait for
    # it (the limit docs/architecture.md states: what SQS would hand it now is hidden
    # until its visibility lapses).
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=20), shutdown_grace_s=5)
    stop_requested_at = 0.0
    async with TestBroker(Router(), settings) as tb:
        await receive_in_flight(tb)
        stop_requested_at = anyio.current_time()
    assert anyio.current_time() - stop_requested_at < 0.5
    assert tb.sqs.calls["change_message_visibility_batch"] == 0


async def test_no_poll_starts_after_the_stop() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1), shutdown_grace_s=5)
    router, _ = busy_router(handler_s=1.5)
    async with TestBroker(router, settings) as tb:
        await tb.start_task({}, message_type="slow")
        with anyio.fail_after(5):
            while not tb.broker.in_flight:
                await anyio.sleep(0.01)
        await receive_in_flight(tb)
        tb.broker.request_stop()
        calls = tb.sqs.calls["receive_message"]
        await anyio.sleep(1.2)  # the open poll ends, the handler still runs: no new poll
        assert tb.sqs.calls["receive_message"] == calls
