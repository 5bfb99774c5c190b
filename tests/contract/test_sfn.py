"""The Step Functions behaviour the broker relies on, the same on every double.

AWS answers ``TaskTimedOut`` to a completion of a closed task; the emulators answer
``InvalidToken``.  The broker treats both as one outcome (``ErrorKind.TASK_CLOSED``),
so that is what these tests check: the classification, not the code.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import orjson
import pytest

from broker.aws.errors import ErrorKind, classify, is_not_found

from .doubles import (
    ACTIVITIES,
    ACTIVITY_API,
    FAILURE_ON_CLOSED,
    IDEMPOTENT_CREATE_ACTIVITY,
    IDLE_ACTIVITY_POLL,
    INVALID_OUTPUT,
    Double,
    LocalStack,
    Moto,
    client_error_code,
    require,
)

CLOSED_CODES = {"TaskTimedOut", "InvalidToken"}


async def refused(call: Awaitable[Mapping[str, Any]]) -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each caller checks the error
        await call
    return caught.value


def assert_closed(exc: BaseException) -> None:
    assert client_error_code(exc) in CLOSED_CODES
    assert classify(exc) is ErrorKind.TASK_CLOSED


async def closed(double: Double, token: str, timeout_s: float = 30) -> None:
    """Wait until ``double`` answers a heartbeat on ``token`` as closed.

    A completion closes its task a moment after it is accepted on the emulators (moto's
    execution thread, LocalStack): a second call sent at once may still be accepted,
    and how long the moment lasts depends on the machine's load.  A heartbeat changes
    nothing on an open task, so it is the probe; the deadline only bounds a failure.
    """
    with anyio.fail_after(timeout_s):
        while True:
            try:
                await double.sfn.send_task_heartbeat(taskToken=token)
            except Exception as exc:
                if classify(exc) is ErrorKind.TASK_CLOSED:
                    return
                if classify(exc) is not ErrorKind.TRANSIENT:
                    raise
            await anyio.sleep(0.05)


async def first_call(double: Double, call: Callable[[], Awaitable[Mapping[str, Any]]]) -> None:
    """The first call on a fresh token.

    moto now and then answers HTTP 500 while an execution is still starting, and
    LocalStack a heartbeat ``InvalidToken`` for a moment after the message lands
    (design.md, "Facts: local emulators"): there, and only there, try again briefly.
    """
    deadline = time.monotonic() + 5
    while True:
        try:
            await call()
        except Exception as exc:
            flaky = isinstance(double, Moto | LocalStack) and (
                classify(exc) is ErrorKind.TRANSIENT or client_error_code(exc) == "InvalidToken"
            )
            if not flaky or time.monotonic() > deadline:
                raise
            await anyio.sleep(0.2)
        else:
            return


# -- closed tasks -----------------------------------------------------------------------


async def test_a_completed_task_answers_closed_to_a_second_success_and_a_heartbeat(
    double: Double,
) -> None:
    token = await double.open_task()
    await first_call(double, lambda: double.sfn.send_task_success(taskToken=token, output="{}"))
    await closed(double, token)
    assert_closed(await refused(double.sfn.send_task_success(taskToken=token, output="{}")))
    assert_closed(await refused(double.sfn.send_task_heartbeat(taskToken=token)))


async def test_a_failed_task_answers_closed_to_a_success(double: Double) -> None:
    token = await double.open_task()
    await first_call(
        double, lambda: double.sfn.send_task_failure(taskToken=token, error="E", cause="c")
    )
    await closed(double, token)
    assert_closed(await refused(double.sfn.send_task_success(taskToken=token, output="{}")))


async def test_a_closed_task_answers_closed_to_a_failure(double: Double) -> None:
    require(double, FAILURE_ON_CLOSED)
    token = await double.open_task()
    await first_call(double, lambda: double.sfn.send_task_success(taskToken=token, output="{}"))
    assert_closed(
        await refused(double.sfn.send_task_failure(taskToken=token, error="E", cause="c"))
    )


async def test_a_heartbeat_on_an_open_task_is_accepted(double: Double) -> None:
    token = await double.open_task()
    await first_call(double, lambda: double.sfn.send_task_heartbeat(taskToken=token))
    await double.sfn.send_task_heartbeat(taskToken=token)
    await double.sfn.send_task_success(taskToken=token, output='{"ok": true}')


async def test_a_token_never_handed_out_is_invalid(double: Double) -> None:
    token = "AQB" + secrets.token_urlsafe(96)
    exc = await refused(double.sfn.send_task_success(taskToken=token, output="{}"))
    assert client_error_code(exc) == "InvalidToken"
    assert classify(exc) is ErrorKind.TASK_CLOSED
    assert_closed(await refused(double.sfn.send_task_heartbeat(taskToken=token)))


async def test_output_that_is_not_json_is_refused_and_the_task_stays_open(
    double: Double,
) -> None:
    require(double, INVALID_OUTPUT)
    token = await double.open_task()

    async def not_json() -> Mapping[str, Any]:
        return await double.sfn.send_task_success(taskToken=token, output="{not json")

    with pytest.raises(Exception) as caught:  # noqa: PT011 - the code is checked below
        await first_call(double, not_json)
    assert client_error_code(caught.value) == "InvalidOutput"
    assert classify(caught.value) is ErrorKind.INVALID_OUTPUT
    await double.sfn.send_task_success(taskToken=token, output="{}")


# -- activities -------------------------------------------------------------------------


async def test_an_activity_task_is_handed_out_once_with_its_input(double: Double) -> None:
    require(double, ACTIVITIES)
    arn = await double.create_activity(f"contract-{uuid.uuid4().hex[:10]}")
    task_input = {"order": 7, "items": ["a", "b"]}
    await double.schedule_activity_task(arn, task_input)
    with anyio.fail_after(20):
        handed = await double.sfn.get_activity_task(activityArn=arn, workerName="contract")
    token = handed["taskToken"]
    assert orjson.loads(handed["input"]) == task_input
    await double.sfn.send_task_heartbeat(taskToken=token)
    await double.sfn.send_task_success(taskToken=token, output='{"done": true}')
    await closed(double, token)
    assert_closed(await refused(double.sfn.send_task_success(taskToken=token, output="{}")))


async def test_an_idle_activity_poll_returns_no_token(double: Double) -> None:
    require(double, IDLE_ACTIVITY_POLL)
    arn = await double.create_activity(f"contract-{uuid.uuid4().hex[:10]}")
    with anyio.fail_after(10):
        answer = await double.sfn.get_activity_task(activityArn=arn, workerName="contract")
    assert not answer.get("taskToken")


async def test_creating_an_activity_again_answers_the_same_arn(double: Double) -> None:
    require(double, IDEMPOTENT_CREATE_ACTIVITY)
    name = f"contract-{uuid.uuid4().hex[:10]}"
    assert await double.create_activity(name) == await double.create_activity(name)


async def test_an_unknown_activity_is_not_found(double: Double) -> None:
    require(double, ACTIVITY_API)
    arn = f"arn:aws:states:us-east-1:000000000000:activity:contract-{uuid.uuid4().hex[:10]}"
    exc = await refused(double.sfn.describe_activity(activityArn=arn))
    assert client_error_code(exc) == "ActivityDoesNotExist"
    assert is_not_found(exc)
