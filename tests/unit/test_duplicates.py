"""The same task token twice while the first copy is in flight: the handler runs once."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
import pytest

from broker import Outcome, Router, Task
from broker.testing import TestBroker

from .conftest import make_settings


def put_twice(tb: TestBroker, token: str) -> None:
    body = orjson.dumps({"TaskToken": token, "input": {}})
    tb.sqs.put("tasks", body, {"type": "slow"})
    tb.sqs.put("tasks", body, {"type": "slow"})


async def test_a_duplicate_waits_for_the_first_and_is_dropped_when_it_settled() -> None:
    runs = 0
    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> str:
        nonlocal runs
        runs += 1
        await anyio.sleep(0.2)
        return "once"

    async with TestBroker(router, make_settings(concurrency=4)) as tb:
        token = tb.sfn.new_token()
        put_twice(tb, token)
        await tb.wait_idle()
    assert runs == 1
    assert tb.sfn.outcomes[token].output == "once"
    assert tb.sfn.calls["send_task_success"] == 1  # no second completion was even tried
    assert tb.broker.stats.total(Outcome.DUPLICATE) == 1
    assert tb.sqs.count("tasks") == 0


async def test_a_duplicate_of_an_unsettled_task_comes_back_too() -> None:
    calls = 0
    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.1)
        if calls == 1:
            raise ConnectionError("transient")
        return "second time lucky"

    async with TestBroker(router, make_settings(concurrency=4)) as tb:
        token = tb.sfn.new_token()
        put_twice(tb, token)
        await tb.wait_idle()
    assert calls == 2  # one failure, one success: never two at once
    assert tb.sfn.outcomes[token].output == "second time lucky"
    assert tb.sqs.count("tasks") == 0
    assert tb.broker.stats.total(Outcome.DUPLICATE) == 1


async def test_a_duplicates_outcome_names_its_type(caplog: pytest.LogCaptureFixture) -> None:
    router = Router()

    @router.handler("slow")
    async def slow(task: Task[Any]) -> str:
        await anyio.sleep(0.2)
        return "once"

    caplog.set_level(logging.INFO, logger="broker.outcome")
    async with TestBroker(router, make_settings(concurrency=4)) as tb:
        put_twice(tb, tb.sfn.new_token())
        await tb.wait_idle()
    duplicates = [r for r in caplog.records if getattr(r, "outcome", None) == "duplicate"]
    assert len(duplicates) == 1
    assert getattr(duplicates[0], "type", None) == "slow"
    assert duplicates[0].getMessage().startswith("slow ")
    assert tb.broker.stats.by_type[("tasks", "slow", Outcome.DUPLICATE)] == 1


async def test_a_late_copy_of_a_task_settled_here_names_its_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The copy that arrives after its task was settled in this process is dropped from
    # memory (sqs.memory); its outcome line said type "none".
    router = Router()

    @router.handler("quick")
    async def quick(task: Task[Any]) -> str:
        return "once"

    caplog.set_level(logging.INFO, logger="broker.outcome")
    async with TestBroker(router, make_settings()) as tb:
        token = tb.sfn.new_token()
        body = orjson.dumps({"TaskToken": token, "type": "quick"})
        tb.sqs.put("tasks", body)
        await tb.wait_idle()
        tb.sqs.put("tasks", body)
        await tb.wait_idle()
    duplicates = [r for r in caplog.records if getattr(r, "outcome", None) == "duplicate"]
    assert len(duplicates) == 1
    assert getattr(duplicates[0], "type", None) == "quick"
    assert tb.broker.stats.by_type[("tasks", "quick", Outcome.DUPLICATE)] == 1
