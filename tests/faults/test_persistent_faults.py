"""A persistent fault multiplies no handler run where the broker knew the verdict.

Issue 21 items 6 and 8, on loopback against the AWS stub, one ``broker run`` (two for
the 8 s row) with a 4 s visibility timeout (tests/faults/persistent.py).  Each row fails
above one handler run per task.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .persistent import Fault, run_persistent

pytestmark = pytest.mark.faults

FAULTS = [
    # Deletes failing for 20 s: 150 tasks ran their handlers 900 times.
    Fault("DeleteMessageBatch answering 500", "DeleteMessageBatch", 20, error_rate=1.0),
    # SendTaskSuccess answering 500 for 30 s: 6,949 calls, a handler run up to 9 times.
    Fault("SendTaskSuccess answering 500", "SendTaskSuccess", 30, error_rate=1.0),
    # SendTaskSuccess taking 8 s, twice the visibility timeout, two replicas: 38 of 60
    # ran twice (one replica alone waited for its own first copy).
    Fault("SendTaskSuccess taking 8 s", "SendTaskSuccess", 12, latency_ms=8000, replicas=2),
    # Taking 20 s, beyond the 15 s read timeout of then: 25 of 60 ran twice.
    Fault("SendTaskSuccess taking 20 s", "SendTaskSuccess", 22, latency_ms=20_000),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_a_known_verdict_never_runs_the_handler_again(
    fault: Fault, tmp_path: Path, record_table: list[str]
) -> None:
    tasks = 150 if fault.error_rate else 60
    report = run_persistent(fault, tasks=tasks, log_path=tmp_path / "broker.log")
    record_table.append(report.table())
    print(report.table())

    assert report.faulty_calls > 0
    assert report.wrong == []
    assert (report.open_tasks, report.left_in_queue) == (0, 0)
    assert report.exit_codes == [0] * fault.replicas
    assert len(report.runs) == tasks, "every task's handler ran"
    assert report.max_runs == 1, f"{report.run_again} task(s) ran their handler again"
