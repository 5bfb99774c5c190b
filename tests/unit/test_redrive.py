from __future__ import annotations

from typing import Any

import orjson

from broker import Outcome, QueueSettings, Router, Task
from broker._redrive import redrive
from broker.testing import FakeSqs, TestBroker

from .conftest import make_settings


async def test_dead_lettered_messages_go_back_to_their_source_without_broker_attributes() -> None:
    sqs = FakeSqs()
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"),
        QueueSettings(name="other", wait_time_s=1, dead_letter_queue="dlq"),
    )
    async with TestBroker(Router(), settings, sqs=sqs) as tb:
        for n in range(13):
            sqs.put("tasks", f"not json {n}", {"trace": f"t{n}"})
        sqs.put("other", "[]")
        await tb.wait_idle()
    assert sqs.count("dlq") == 14
    sqs.put("dlq", "hand-made, names no source")

    report = await redrive(sqs, "dlq")

    assert report.moved == {"tasks": 13, "other": 1}
    assert report.no_destination == 1
    assert report.failed == 0
    assert sqs.count("dlq") == 1
    back = sqs.messages("tasks")
    assert sorted(m.body for m in back) == sorted(f"not json {n}" for n in range(13))
    for message in back:
        assert set(message.attributes) == {"trace"}
    assert report.lines()[-2:] == [
        "moved 14 in all",
        "left 1 message(s) that name no source queue (use --to)",
    ]


async def test_redrive_to_an_explicit_queue_and_with_a_limit() -> None:
    sqs = FakeSqs()
    sqs.create_queue("dlq")
    sqs.create_queue("retry-here")
    for n in range(25):
        sqs.put("dlq", orjson.dumps({"n": n}))

    report = await redrive(sqs, "dlq", to="retry-here", max_messages=12)

    assert report.total_moved == 12
    assert sqs.count("retry-here") == 12
    assert sqs.count("dlq") == 13


async def test_a_redriven_copy_of_a_failed_task_is_dropped_as_task_closed() -> None:
    sqs = FakeSqs()
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "handled after the fix"

    # First run: no handler for "ok" yet, so the task fails fast and is dead-lettered.
    async with TestBroker(Router(), settings, sqs=sqs) as tb:
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert sqs.count("dlq") == 1
    await redrive(sqs, "dlq")
    # Second run with the handler: the task is closed already, so the copy is dropped.
    async with TestBroker(router, settings, sqs=sqs, sfn=tb.sfn) as tb2:
        await tb2.wait_idle()
    assert tb2.sfn.outcomes[token].error == "Broker.UnknownMessageType"
    assert tb2.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert sqs.count("tasks") == 0
