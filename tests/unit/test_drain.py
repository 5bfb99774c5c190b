"""Stopping: polls stop, running handlers get the grace period, cut-off work goes back."""

from __future__ import annotations

from typing import Any

import anyio

from broker import QueueSettings, Router, Task
from broker.testing import TestBroker

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
