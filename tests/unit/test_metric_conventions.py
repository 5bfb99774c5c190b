"""/metrics by Prometheus' conventions (issue 15, item 6): standard collectors, build info,
zero-initialised error and throttle series, long polls apart from call latency."""

from __future__ import annotations

import platform
from typing import Any

import anyio

from broker import ActivitySettings, QueueSettings, Router, Task, __version__
from broker.observability.metric_names import HOT_ERROR_CODES, STANDARD_METRIC_NAMES, hot_apis
from broker.testing import FakeSfn, TestBroker
from tests.observing import samples, value

from .conftest import make_settings


def router() -> Router:
    r = Router()

    @r.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "fine"

    return r


async def test_standard_collectors_and_build_info_are_exposed() -> None:
    async with TestBroker(router()) as tb:
        text = tb.broker.health.metrics()
    found = samples(text)
    names = {name for name, _ in found}
    for family in STANDARD_METRIC_NAMES:
        assert family in names, family
    assert value(found, "process_cpu_seconds_total") > 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert (
        value(found, "broker_build_info", version=__version__, python=platform.python_version())
        == 1
    )


async def test_throttle_and_error_series_of_the_hot_apis_start_at_zero() -> None:
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1),
        activities=(ActivitySettings(name="work", handler="ok"),),
    )
    async with TestBroker(router(), settings, sfn=FakeSfn(activity_poll_s=0.05)) as tb:
        text = tb.broker.health.metrics()
    found = samples(text)
    apis = hot_apis(queues=True, activities=True)
    assert {"ReceiveMessage", "DeleteMessageBatch", "SendTaskSuccess", "GetActivityTask"} <= set(
        apis
    )
    for api in apis:
        assert ("broker_throttles_total", frozenset({("api", api)})) in found, api
        assert value(found, "broker_throttles_total", api=api) == 0
        for code in HOT_ERROR_CODES[api]:
            key = ("broker_aws_call_errors_total", frozenset({("api", api), ("code", code)}))
            assert found.get(key) == 0, (api, code)
    assert (
        "broker_aws_call_errors_total",
        frozenset({("api", "SendTaskSuccess"), ("code", "TaskTimedOut")}),
    ) in found


async def test_only_the_apis_a_broker_calls_get_zero_series() -> None:
    async with TestBroker(router()) as tb:  # queues, no activities
        found = samples(tb.broker.health.metrics())
    throttled = {dict(labels)["api"] for name, labels in found if name == "broker_throttles_total"}
    assert throttled == set(hot_apis(queues=True, activities=False))
    assert "GetActivityTask" not in throttled


async def test_long_polls_have_their_own_histogram() -> None:
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1),
        activities=(ActivitySettings(name="work", handler="ok"),),
    )
    sfn = FakeSfn(activity_poll_s=0.05)
    async with TestBroker(router(), settings, sfn=sfn) as tb:
        await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
        with anyio.fail_after(5):
            while sfn.calls["get_activity_task"] < 2:
                await anyio.sleep(0.01)
        found = samples(tb.broker.health.metrics())
    latency = "broker_aws_call_duration_seconds_count"
    polls = "broker_aws_poll_duration_seconds_count"
    assert value(found, latency, api="SendTaskSuccess") == 1
    for api in ("ReceiveMessage", "GetActivityTask"):
        assert value(found, latency, api=api) == 0, api
        assert (latency, frozenset({("api", api)})) not in found
        assert value(found, polls, api=api) >= 1, api
    assert value(found, polls, api="SendTaskSuccess") == 0
    # Buckets that hold a long poll's wait: 20 s ReceiveMessage, 60 s GetActivityTask.
    assert (
        "broker_aws_poll_duration_seconds_bucket",
        frozenset({("api", "GetActivityTask"), ("le", "60.0")}),
    ) in found
