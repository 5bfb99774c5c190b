"""``broker run`` freezes start-up's heap once the broker is running, and still drains."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import broker.cli as cli
from broker import BrokerSettings, QueueSettings, Router, Task
from broker.aws.protocols import AwsClients
from broker.service import Broker
from broker.testing import FakeSfn, FakeSqs


async def test_run_freezes_the_heap_after_start_up_and_exits_0_after_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = Router()

    @router.handler("t")
    async def handle(task: Task[Any]) -> None:
        return None

    sqs, sfn = FakeSqs(), FakeSfn()
    sqs.create_queue("tasks")

    @asynccontextmanager
    async def clients(_: BrokerSettings) -> AsyncIterator[AwsClients]:
        yield AwsClients(sqs=sqs, sfn=sfn)

    made: list[Broker] = []

    def broker_on_fakes(settings: BrokerSettings, routes: Router) -> Broker:
        made.append(Broker(settings, routes, clients=clients))
        return made[-1]

    ready_when_frozen: list[bool] = []

    def freeze() -> None:
        # Called once start-up is done: the broker is ready; stop it from here.
        ready_when_frozen.append(made[0].ready)
        made[0].request_stop()

    monkeypatch.setattr(cli, "Broker", broker_on_fakes)
    monkeypatch.setattr(cli, "freeze_startup_heap", freeze)
    settings = BrokerSettings(
        queues=(QueueSettings(name="tasks", wait_time_s=1),), entry_points=False, http_port=None
    )
    with anyio.fail_after(10):  # never frozen: never stopped
        assert await cli.run_broker(settings, router) == 0
    assert ready_when_frozen == [True]


def test_freeze_startup_heap_moves_live_objects_to_the_permanent_generation() -> None:
    from broker.core.loop import freeze_startup_heap

    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
