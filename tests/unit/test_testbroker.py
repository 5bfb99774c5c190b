"""``TestBroker`` as a handler author uses it: the README's paths, default settings."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from broker import BrokerSettings, QueueSettings, Router, Task


def flaky_router(failures: int) -> tuple[Router, list[int]]:
    """A handler that raises ``failures`` times, then succeeds; attempts are recorded."""
    router = Router()
    attempts: list[int] = []

    @router.handler("purchase", max_attempts=5)
    async def purchase(task: Task[Any]) -> dict[str, str]:
        attempts.append(task.receive_count)
        if len(attempts) <= failures:
            raise ConnectionError("payment service down")  # retried with backoff
        return {"status": "charged"}

    return router, attempts


async def test_a_handler_that_fails_once_then_succeeds_with_default_settings() -> None:
    from broker.testing import TestBroker

    router, attempts = flaky_router(failures=1)
    async with TestBroker(router) as broker:
        token = await broker.start_task(
            {"TransactionType": "PURCHASE", "amount": 3}, message_type="purchase"
        )
        await broker.wait_idle()
    assert broker.sfn.outcomes[token].output == {"status": "charged"}
    assert attempts == [1, 2]


async def test_attempts_running_out_with_default_settings_fail_the_task() -> None:
    from broker.testing import TestBroker

    router, attempts = flaky_router(failures=99)
    async with TestBroker(router) as broker:
        token = await broker.start_task({}, message_type="purchase")
        await broker.wait_idle()
    assert broker.sfn.outcomes[token].error == "ConnectionError"
    assert attempts == [1, 2, 3, 4, 5]


async def test_wait_idle_waits_out_a_real_backoff() -> None:
    # The production backoff (2 s base: 1 to 2 s before the first retry): wait_idle must
    # not take the hidden message for a settled one.
    from broker.testing import TestBroker

    router, attempts = flaky_router(failures=1)
    settings = BrokerSettings(
        queues=(QueueSettings(name="tasks", wait_time_s=1),), entry_points=False
    )
    assert settings.retry_base_delay_s == 2.0
    async with TestBroker(router, settings) as broker:
        token = await broker.start_task({}, message_type="purchase")
        began = time.perf_counter()
        await broker.wait_idle()
        waited_s = time.perf_counter() - began
    assert broker.sfn.outcomes[token].status == "success"
    assert attempts == [1, 2]
    assert 1 <= waited_s < 5


async def test_wait_idle_does_not_wait_for_a_message_due_after_its_timeout() -> None:
    # A retry due in 30 s cannot settle within a 1 s wait: wait_idle returns with the
    # message still hidden instead of waiting or failing.
    from broker.testing import TestBroker

    router, attempts = flaky_router(failures=1)
    settings = BrokerSettings(
        queues=(QueueSettings(name="tasks", wait_time_s=1),),
        entry_points=False,
        retry_base_delay_s=60,
        retry_max_delay_s=60,
    )
    async with TestBroker(router, settings) as broker:
        token = await broker.start_task({}, message_type="purchase")
        await broker.wait_idle(timeout_s=1)
        assert token not in broker.sfn.outcomes
        assert (broker.sqs.count("tasks"), broker.sqs.visible("tasks")) == (1, 0)
    assert attempts == [1]


async def test_wait_idle_times_out_while_work_runs() -> None:
    from broker.testing import TestBroker

    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> None:
        await anyio.sleep(3600)

    async with TestBroker(
        router,
        BrokerSettings(
            queues=(QueueSettings(name="tasks", wait_time_s=1),),
            entry_points=False,
            shutdown_grace_s=0.1,
        ),
    ) as broker:
        await broker.start_task({}, message_type="slow")
        with pytest.raises(TimeoutError):
            await broker.wait_idle(timeout_s=0.5)
