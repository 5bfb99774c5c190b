"""Operations on moto: /metrics counts what happened end to end, and no log line, metric
or error message carries a task token the broker handled."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from broker import Broker, QueueSettings, Router, Task, TaskFailed
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from tests.flows import run_executions
from tests.observing import http_get, json_logs, samples

from .test_broker_flows import settings_for

pytestmark = pytest.mark.usefixtures("aws_env")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with json_logs("DEBUG") as buffer:
        yield buffer


async def test_metrics_match_an_end_to_end_run_and_no_token_leaks(
    aws: EmbeddedAws, seed_flows: SeedFlows, logs: io.StringIO
) -> None:
    queue = seed_flows.queues["callback"]
    tokens: list[str] = []
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> dict[str, str]:
        tokens.append(task.token)
        logging.getLogger("handler").info("working on %s", task.token)  # a careless handler
        return {"done": task.payload["kind"]}

    @router.handler("no")
    async def no(task: Task[Any]) -> None:
        tokens.append(task.token)
        raise TaskFailed("Order.Rejected", f"token {task.token} rejected")

    settings = settings_for(aws, QueueSettings(name=queue, type_field="input.kind"))
    inputs = [{"kind": "ok"}] * 4 + [{"kind": "no"}] * 2 + [{"kind": "nobody"}]
    broker = Broker(settings, router)
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: broker.run(task_status=task_status))
        try:
            results = await run_executions(aws, seed_flows.state_machines["callback"], inputs)
            assert broker.http_port
            # Deletes are flushed after a linger: wait until all seven are counted.
            with anyio.fail_after(10):
                while sum(broker.stats.outcomes.values()) < len(inputs):
                    await anyio.sleep(0.05)
            _, body = await http_get(broker.http_port, "/metrics")
            found = samples(body)
        finally:
            broker.request_stop()

    assert [r.status for r in results] == ["SUCCEEDED"] * 4 + ["FAILED"] * 3
    name = queue  # the queue label is the configured name

    def value(metric: str, **labels: str) -> float:
        return found.get((metric, frozenset(labels.items())), 0.0)

    total = "broker_messages_total"
    assert value(total, queue=name, type="ok", outcome="succeeded") == 4
    assert value(total, queue=name, type="no", outcome="failed") == 2
    assert value(total, queue=name, type="unknown", outcome="unknown_type") == 1
    assert value("broker_messages_received_total", queue=name) == 7
    assert value("broker_handler_duration_seconds_count", type="ok") == 4
    assert value("broker_aws_call_duration_seconds_count", api="SendTaskSuccess") == 4
    assert value("broker_aws_call_duration_seconds_count", api="SendTaskFailure") == 3
    assert value("broker_handlers_in_flight", queue=name) == 0
    assert value("broker_ready") == 1

    assert len(tokens) == 6
    logged = logs.getvalue()
    assert '"event":"outcome"' in logged
    metrics_text = repr(found)
    for token in tokens:
        assert token not in logged
        assert token not in metrics_text
