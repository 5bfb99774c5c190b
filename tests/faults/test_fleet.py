"""A fleet on one Step Functions quota: no throttling storm, the quota used (issue 14).

Three ``broker run`` with default settings share one queue and one token bucket of
200 burst / 200 per s for SendTask* in the AWS stub; one is SIGKILLed mid-run and a
fourth started.  ``FLEET_TASKS`` sets the number of tasks (default 4,000; no fewer).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .fleet import run

pytestmark = pytest.mark.faults


def test_a_fleet_shares_the_quota_without_a_storm(tmp_path: Path, record_table: list[str]) -> None:
    tasks = max(4000, int(os.environ.get("FLEET_TASKS", "4000")))
    report = run(tasks=tasks, log_dir=tmp_path, timeout_s=100)
    record_table.append(f"fleet: 3 replicas, one killed, one added\n{report.table()}")
    print(report.table())

    assert report.wrong == [], "every task ends as its handler decided"
    assert (report.lost, report.stuck, report.left_in_queue) == (0, 0, 0)
    assert report.unknown_tokens == 0
    assert report.exit_codes == [0, 0, 0], "the replicas left drain and exit 0"
    # The run had a backlog to share: at 200/s, 4,000 tasks take 20 s.
    assert report.backlog_s >= 10
    assert report.throttled_share <= 0.05, "throttled SendTask* calls <= 5 %"
    assert report.quota_used >= 0.90, "the quota used >= 90 % while a backlog exists"
    assert report.wall_s < 100
