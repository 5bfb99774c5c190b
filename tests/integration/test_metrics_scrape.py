"""/metrics of a real ``broker run`` process on the embedded moto server: the series
Prometheus' conventions ask for are there (issue 15, item 6)."""

from __future__ import annotations

import platform
import signal
import time
import urllib.request
from pathlib import Path

from broker import __version__
from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from tests.cli import clean_env, free_port
from tests.localstack.broker_process import broker_process
from tests.observing import samples, value


def _scrape(port: int) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body


def test_a_running_broker_exposes_the_conventional_series(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        **aws.env(),
        BROKER_QUEUES=(
            f'[{{"name": "{seed_flows.queues["callback"]}", "default_handler": "callback",'
            ' "wait_time_s": 1}]'
        ),
        BROKER_HANDLERS='["handlers.seeds:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_HTTP_PORT=str(port),
        BROKER_HTTP_HOST="127.0.0.1",
    )
    with broker_process(env, tmp_path) as broker:
        arns = start_executions(
            aws,
            seed_flows.state_machines["callback"],
            [{"i": i} for i in range(3)],
            name_prefix="m",
        )
        results = wait_for_executions(aws, arns, timeout_s=60)
        assert [r.status for r in results.values()] == ["SUCCEEDED"] * 3
        # One more idle long poll (1 s) than the one that received the messages has
        # returned: waited for, not slept on, since a loaded machine answers late.
        deadline = time.monotonic() + 30
        while True:
            found = samples(_scrape(port))
            polls = value(found, "broker_aws_poll_duration_seconds_count", api="ReceiveMessage")
            if polls >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        broker.process.send_signal(signal.SIGTERM)
        broker.process.wait(timeout=30)
    assert broker.process.returncode == 0, broker.log
    assert value(found, "process_cpu_seconds_total") > 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert ("python_info", frozenset()) not in found  # it has labels
    assert any(name == "python_info" for name, _ in found)
    assert (
        value(found, "broker_build_info", version=__version__, python=platform.python_version())
        == 1
    )
    # Zero, not missing: an alert on throttles or task-closed answers has a series.
    for api in ("ReceiveMessage", "DeleteMessageBatch", "SendTaskSuccess", "SendTaskFailure"):
        assert ("broker_throttles_total", frozenset({("api", api)})) in found, api
    assert (
        "broker_aws_call_errors_total",
        frozenset({("api", "SendTaskSuccess"), ("code", "TaskTimedOut")}),
    ) in found
    assert ("broker_throttles_total", frozenset({("api", "GetActivityTask")})) not in found
    # The long polls are timed apart from the call latency.
    assert value(found, "broker_aws_call_duration_seconds_count", api="SendTaskSuccess") == 3
    assert value(found, "broker_aws_call_duration_seconds_count", api="ReceiveMessage") == 0
    assert value(found, "broker_aws_poll_duration_seconds_count", api="ReceiveMessage") >= 2
