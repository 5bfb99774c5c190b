"""Nothing lost, nothing stuck: the broker under injected faults and SIGKILLs.

The broker runs as a real process (``broker run``) against the fast AWS stub, which
throttles, fails and drops calls; the broker is killed three times and restarted.
``FAULT_TASKS`` sets the number of messages (default 1,000).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .harness import SHUTDOWN_GRACE_S, run

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("aws_client", ["lean", "botocore"])
def test_every_task_gets_its_decided_outcome_under_faults_and_kills(
    tmp_path: Path, record_table: list[str], aws_client: str
) -> None:
    tasks = int(os.environ.get("FAULT_TASKS", "1000"))
    report = run(
        tasks=tasks,
        kills=3,
        log_path=tmp_path / "broker.log",
        timeout_s=240,
        aws_client=aws_client,
    )
    transport = f"BROKER_AWS_CLIENT={aws_client}"
    record_table.append(f"{transport}\n{report.table()}")
    print(report.table())

    # The run really was hostile: every kind of fault happened, the broker was killed.
    assert all(report.faults.get(kind, 0) > 0 for kind in ("throttle", "error", "drop_before"))
    assert report.broker_starts == 1 + report.kills == 4
    assert report.redeliveries > 0

    assert report.wrong == [], "every task ends as its handler decided"
    assert (report.stuck, report.lost) == (0, 0)
    assert report.left_in_queue == 0
    assert report.dead_letter_problems == [], "poison and exhausted messages dead-lettered"
    assert report.unknown_tokens == 0
    # Every duplicate completion is explained: a lost response, or a redelivery.
    assert report.duplicates <= report.drop_after_completions + report.redeliveries
    assert report.final_exit_code == 0
    assert report.stop_s < SHUTDOWN_GRACE_S + 5
    assert report.leaked_tokens == 0, "task tokens never appear whole in the logs"
