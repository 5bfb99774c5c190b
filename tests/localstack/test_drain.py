"""SIGTERM on a ``broker run`` process while an activity task runs, on LocalStack.

Within the grace period the task finishes and its execution succeeds; cut off by the
grace period it is failed with ``Broker.ShuttingDown`` (there is no redelivery for an
activity), never left to time out.  Either way the process stops, bounded in time.
Only a handler cut off is a warning: the idle GetActivityTask the drain cuts at the end
of the grace (it lasts up to 60 s) is said at INFO.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import deploy_activity_flow
from broker.local.localstack import LocalStackAws
from tests.cli import clean_env

from .broker_process import broker_process, wait_until

_ROOT = Path(__file__).resolve().parents[2]


def _events(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def _warnings(log: str) -> list[str]:
    return [e["message"] for e in _events(log) if e["level"] in ("WARNING", "ERROR")]


def _activity_started(localstack: LocalStackAws, execution_arn: str) -> bool:
    events = localstack.client("stepfunctions").get_execution_history(executionArn=execution_arn)
    return any(event["type"] == "ActivityStarted" for event in events["events"])


@pytest.mark.parametrize(
    ("grace_s", "sleep_s", "status", "error"),
    [(8, 2, "SUCCEEDED", None), (1, 600, "FAILED", "Broker.ShuttingDown")],
    ids=["finishes-within-grace", "cut-off-by-grace"],
)
def test_sigterm_while_an_activity_task_runs(
    localstack: LocalStackAws,
    unique: str,
    tmp_path: Path,
    grace_s: float,
    sleep_s: float,
    status: str,
    error: str | None,
) -> None:
    flow = deploy_activity_flow(localstack, name=unique, timeout_s=900)
    env = clean_env(
        **localstack.env(),
        BROKER_ACTIVITIES=json.dumps([{"name": unique, "handler": "slow-silent"}]),
        BROKER_HANDLERS='["tests.localstack.handlers:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_SHUTDOWN_GRACE_S=str(grace_s),
        PYTHONPATH=str(_ROOT),
    )
    with broker_process(env, tmp_path) as broker:
        (arn,) = start_executions(
            localstack, flow.state_machine_arn, [{"sleep_s": sleep_s}], name_prefix="drain"
        )
        wait_until(lambda: _activity_started(localstack, arn), "the task to start", 30)
        stop_sent_at = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        returncode = broker.process.wait(timeout=grace_s + 20)
        stopped_in_s = time.monotonic() - stop_sent_at
    output = broker.log
    assert returncode == 0, output
    # Bounded by the grace period (plus start-up of the shielded failure), not by the
    # minute-long poll that was open at the SIGTERM.
    assert stopped_in_s < grace_s + 10, output
    result = wait_for_executions(localstack, [arn], timeout_s=30)[arn]
    assert (result.status, result.error) == (status, error), output
    if status == "SUCCEEDED":
        assert result.output == {"slept": sleep_s}
        # The poll opened again after the task was handed over was idle: cut at INFO.
        assert _warnings(output) == [], output
        assert any(
            e["level"] == "INFO" and e["message"].startswith("grace period over: no handler")
            for e in _events(output)
        ), output
    else:
        assert any(
            w.startswith("grace period over: 1 handler(s) still running cancelled")
            for w in _warnings(output)
        ), output


def test_sigterm_on_an_idle_activity_broker_warns_of_nothing(
    localstack: LocalStackAws, unique: str, tmp_path: Path
) -> None:
    flow = deploy_activity_flow(localstack, name=unique, timeout_s=900)
    grace_s = 3
    env = clean_env(
        **localstack.env(),
        BROKER_ACTIVITIES=json.dumps([{"name": unique, "handler": "slow-silent", "pollers": 2}]),
        BROKER_HANDLERS='["tests.localstack.handlers:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_SHUTDOWN_GRACE_S=str(grace_s),
        PYTHONPATH=str(_ROOT),
    )
    with broker_process(env, tmp_path) as broker:
        time.sleep(0.5)  # both polls open: GetActivityTask waits up to 60 s for a task
        stop_sent_at = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        returncode = broker.process.wait(timeout=grace_s + 20)
        stopped_in_s = time.monotonic() - stop_sent_at
    output = broker.log
    assert returncode == 0, output
    assert stopped_in_s < grace_s + 5, output
    assert _warnings(output) == [], output
    (line,) = [e for e in _events(output) if e["message"].startswith("grace period over")]
    assert line["level"] == "INFO", output
    assert "2 idle activity poll(s) cut off" in line["message"], output
    assert flow.state_machine_arn  # deployed, never started: nothing ran
