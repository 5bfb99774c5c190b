"""SIGTERM on a ``broker run`` process while an activity task runs, on LocalStack.

Within the grace period the task finishes and its execution succeeds; cut off by the
grace period it is failed with ``Broker.ShuttingDown`` (there is no redelivery for an
activity), never left to time out.  Either way the process stops, bounded in time.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import deploy_activity_flow
from broker.local.localstack import LocalStackAws
from tests.cli import clean_env

from .broker_process import broker_process, wait_until

_ROOT = Path(__file__).resolve().parents[2]


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
