"""What the broker logs, and how much: one line per outcome, nothing a test or a start
does not need (issue 15, item 5)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import orjson
import pytest

from broker import BrokerSettings, QueueSettings, Router, Task, TaskFailed
from broker.aws.protocols import AwsClients
from broker.observability.logs import configure_logging
from broker.observability.redact import token_ref
from broker.observability.stats import Outcome
from broker.service import Broker
from broker.testing import FakeSfn, FakeSqs, TestBroker
from tests.observing import json_logs

from .conftest import make_settings

_CREDENTIAL_LOGGERS = ("botocore.credentials", "aiobotocore.credentials")


@contextmanager
def text_logs(level: str, **levels: str) -> Iterator[io.StringIO]:
    """The broker's text log lines in a buffer; root and the named loggers restored."""
    buffer = io.StringIO()
    root = logging.getLogger()
    names = (*_CREDENTIAL_LOGGERS, "botocore", "aiobotocore", "urllib3", *levels)
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    configure_logging(level, "text", levels, stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, name_level in saved[2].items():
            logging.getLogger(name).setLevel(name_level)


def test_the_credential_source_line_is_held_back_unless_asked_for() -> None:
    with text_logs("INFO"):
        for name in _CREDENTIAL_LOGGERS:
            # botocore's "Found credentials in environment variables." is INFO.
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
            assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    with text_logs("INFO", **{"aiobotocore.credentials": "INFO"}):
        assert logging.getLogger("aiobotocore.credentials").isEnabledFor(logging.INFO)


def failing_router() -> Router:
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "fine"

    @router.handler("no")
    async def no(task: Task[Any]) -> None:
        raise TaskFailed("Order.Rejected", "no stock")

    @router.handler("boom")
    async def boom(task: Task[Any]) -> None:
        raise RuntimeError("boom")

    return router


HOSTILE_TYPE = "evil\n2026-12-01 00:00:00,000 ERROR broker: forged line" + "x" * 10_000


async def test_one_line_per_outcome_with_its_error_type_and_reference() -> None:
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"), max_attempts=2
    )
    with json_logs("INFO") as buffer:
        async with TestBroker(failing_router(), settings) as tb:
            tokens = {
                kind: await tb.start_task({}, message_type=kind)
                for kind in ("ok", "no", "boom", HOSTILE_TYPE)
            }
            tb.sqs.put("tasks", "{not json")
            await tb.wait_idle()
    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    events = [line for line in lines if line.get("event") == "outcome"]
    # Every line that names a message is its outcome event: no second line about it.
    for event in events:
        about = [line for line in lines if event["message_id"] in orjson.dumps(line).decode()]
        assert all(line.get("event") == "outcome" for line in about), about
    by_outcome = {(e["type"], e["outcome"]): e for e in events}
    assert len(events) == 6  # ok, no, boom twice (retry, exhausted), unknown, poison
    failed = by_outcome[("no", "failed")]
    assert failed["error"] == "Order.Rejected"
    assert failed["token_ref"] == token_ref(tokens["no"])
    assert token_ref(tokens["no"]) in failed["message"]
    retry = by_outcome[("boom", "retry")]
    assert (retry["level"], retry["error"]) == ("WARNING", "RuntimeError")
    assert retry["detail"].startswith("attempt 1/2; retry in")
    exhausted = by_outcome[("boom", "exhausted")]
    assert "after 2 attempt(s)" in exhausted["detail"]
    assert exhausted["token_ref"] == token_ref(tokens["boom"])
    (unknown,) = [e for e in events if e["outcome"] == "unknown_type"]
    # The type asked for, bounded and on one line; the metric label stays "unknown".
    assert unknown["type"].startswith("evil\\n2026-12-01")
    assert "\n" not in unknown["type"]
    assert len(unknown["type"]) < 200
    assert f"({len(HOSTILE_TYPE)} chars)" in unknown["type"]
    assert unknown["detail"] == "registered types: boom, no, ok"
    assert tb.broker.stats.by_type[("tasks", "unknown", Outcome.UNKNOWN_TYPE)] == 1
    (poison,) = [e for e in events if e["outcome"] == "poison"]
    assert poison["error"] == "InvalidJson"
    assert poison["detail"]
    assert by_outcome[("ok", "succeeded")]["level"] == "INFO"
    assert "token_ref" not in by_outcome[("ok", "succeeded")]  # no hash on success


async def test_a_hostile_type_cannot_forge_or_flood_text_lines() -> None:
    with text_logs("INFO") as buffer:
        async with TestBroker(failing_router()) as tb:
            await tb.start_task({}, message_type=HOSTILE_TYPE)
            await tb.wait_idle()
    lines = buffer.getvalue().splitlines()
    assert lines
    assert not any(line.startswith("2026-12-01 00:00:00,000") for line in lines)
    assert max(len(line) for line in lines) < 2_000
    assert any("unknown_type" in line and "evil\\n" in line for line in lines)


async def test_a_test_broker_warns_about_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with TestBroker(failing_router()) as tb:  # its default queue has no DLQ
        await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # Said, at INFO: a test author can still see how poison would be handled.
    assert "has no dead_letter_queue setting" in caplog.text


async def test_a_real_queue_without_a_dead_letter_queue_is_still_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs, sfn = FakeSqs(), FakeSfn()
    sqs.create_queue("tasks")

    @asynccontextmanager
    async def clients(_: BrokerSettings) -> AsyncIterator[AwsClients]:
        yield AwsClients(sqs=sqs, sfn=sfn)

    broker = Broker(make_settings("tasks", http_port=None), failing_router(), clients=clients)
    async with anyio.create_task_group() as group:
        await group.start(broker.run)
        broker.request_stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("queue tasks has no dead_letter_queue setting" in w for w in warnings)


async def test_receives_cut_in_the_drain_are_one_info_line_per_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(
        QueueSettings(name="a", wait_time_s=5, receivers=3),
        QueueSettings(name="b", wait_time_s=5, receivers=2),
    )
    async with TestBroker(failing_router(), settings):
        await anyio.sleep(0.1)  # every loop is in its long poll
    cut = [r for r in caplog.records if "ReceiveMessage" in r.getMessage()]
    assert sorted(r.getMessage() for r in cut) == sorted(
        f"drain: {n} of {n} ReceiveMessage call(s) on {q} cut off while waiting; a message "
        "SQS handed out in that instant comes back after its visibility timeout"
        for q, n in (("a", 3), ("b", 2))
    )
    assert all(r.levelno == logging.INFO for r in cut)
