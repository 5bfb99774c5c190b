"""What a drain that runs out of grace says: INFO for idle polls, WARNING only when a
handler was cut off (issue 15, item 7)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from broker import ActivitySettings, QueueSettings, Router, Task
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings


def stuck_router(started: anyio.Event) -> Router:
    router = Router()

    @router.handler("idle")
    async def idle(task: Task[Any]) -> None:
        raise AssertionError("never called")

    @router.handler("stuck")
    async def stuck(task: Task[Any]) -> None:
        started.set()
        await anyio.sleep(3600)

    return router


def grace_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage()) for r in caplog.records if "grace period over" in r.getMessage()
    ]


async def test_an_idle_activity_drain_cuts_its_poll_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sfn = FakeSfn(activity_poll_s=30)  # an idle GetActivityTask, longer than the grace
    settings = make_settings(
        queues=(),
        activities=(ActivitySettings(name="work", handler="idle", pollers=2),),
        shutdown_grace_s=0.3,
    )
    async with TestBroker(stuck_router(anyio.Event()), settings, sfn=sfn):
        with anyio.fail_after(5):
            while sfn._in_flight["get_activity_task"] < 2:
                await anyio.sleep(0.01)
        stop_requested_at = anyio.current_time()
    assert anyio.current_time() - stop_requested_at < 0.3 + 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert grace_lines(caplog) == [
        (
            logging.INFO,
            "grace period over: no handler was running; 2 idle activity poll(s) cut off "
            "(GetActivityTask is not cut before the grace ends: a task it hands out in the "
            "last instant waits for the state's heartbeat/timeout, then its Retry)",
        )
    ]


async def test_an_activity_handler_cut_off_is_still_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = anyio.Event()
    sfn = FakeSfn(activity_poll_s=30)
    settings = make_settings(
        queues=(),
        activities=(ActivitySettings(name="work", handler="stuck", pollers=2),),
        shutdown_grace_s=0.3,
    )
    async with TestBroker(stuck_router(started), settings, sfn=sfn) as tb:
        tb.start_activity_task({})
        await started.wait()
    (line,) = grace_lines(caplog)
    assert line[0] == logging.WARNING
    assert line[1].startswith("grace period over: 1 handler(s) still running cancelled")
    assert "2 idle activity poll(s) cut off" in line[1]  # the other poller, and the one
    # that handed the task over, polling again


async def test_an_sqs_handler_cut_off_is_still_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = anyio.Event()
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, default_handler="stuck"),
        shutdown_grace_s=0.3,
    )
    async with TestBroker(stuck_router(started), settings) as tb:
        await tb.start_task({})
        await started.wait()
    (line,) = grace_lines(caplog)
    assert line[0] == logging.WARNING
    assert line[1].startswith("grace period over: 1 handler(s) still running cancelled")
