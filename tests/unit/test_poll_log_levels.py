"""A poll loop's failures: WARNING while retrying may cure them, ERROR only for what a
person must fix, and said at most once a minute in a streak (issue 22, item 12)."""

from __future__ import annotations

import logging

import pytest

from broker import Router, Task
from broker.core.slots import PollBackoff
from broker.testing import TestBroker, client_error

router = Router()


@router.handler("purchase")
async def purchase(task: Task[dict[str, int]]) -> dict[str, str]:
    return {"status": "charged"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def levels(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.levelname for r in caplog.records if r.name == "test.poll"]


def test_a_transient_streak_is_one_warning_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    backoff = PollBackoff("ReceiveMessage", "bench", logging.getLogger("test.poll"), clock=clock)
    caplog.set_level(logging.DEBUG, logger="test.poll")
    internal = client_error("InternalFailure", status=500)
    for _ in range(10):  # ten failures within a minute
        backoff.failed(internal)
        clock.now += 5
    assert levels(caplog) == ["WARNING"] + ["DEBUG"] * 9
    assert "(InternalFailure, transient)" in caplog.records[0].getMessage()
    clock.now = 61.0
    backoff.failed(internal)
    assert levels(caplog)[-1] == "WARNING"
    assert "11 in a row" in caplog.records[-1].getMessage()
    backoff.succeeded()
    assert levels(caplog)[-1] == "INFO"
    assert "answers again after 11 failure(s)" in caplog.records[-1].getMessage()
    assert "ERROR" not in levels(caplog)


def test_a_failure_a_person_must_fix_is_an_error_said_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    backoff = PollBackoff("ReceiveMessage", "bench", logging.getLogger("test.poll"), clock=clock)
    caplog.set_level(logging.DEBUG, logger="test.poll")
    denied = client_error("AccessDenied", status=403)
    for _ in range(3):
        backoff.failed(denied)
        clock.now += 10
    assert levels(caplog) == ["ERROR", "DEBUG", "DEBUG"]
    # A new streak after a success speaks up at once.
    backoff.succeeded()
    caplog.clear()
    backoff.failed(client_error("ThrottlingException"))
    assert levels(caplog) == ["WARNING"]


@pytest.mark.anyio
async def test_a_retried_receive_failure_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="broker")
    async with TestBroker(router) as broker:
        broker.sqs.fail_next("receive_message", client_error("InternalFailure", status=500), 3)
        token = await broker.start_task({}, message_type="purchase")
        await broker.wait_idle()
    assert broker.sfn.outcomes[token].status == "success"
    failed = [r for r in caplog.records if "ReceiveMessage on tasks failed" in r.getMessage()]
    assert len(failed) == 3
    assert [r.levelname for r in failed] == ["WARNING", "DEBUG", "DEBUG"]
