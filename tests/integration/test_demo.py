"""`broker demo`: run for real in a subprocess, and its verdict on executions unit-tested."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.local.demo import run_demo
from broker.local.demo_person import PersonReport
from broker.local.demo_plan import (
    Case,
    Judgement,
    PlannedExecution,
    Verdict,
    expected_for,
    judge,
    plan_executions,
)
from broker.local.demo_report import exit_code, summary_table
from broker.local.executions import ExecutionResult
from tests.cli import clean_env

_COLUMNS = [
    "executions",
    "succeeded",
    "failed as expected",
    "waiting as expected",
    "unexpected",
    "stuck",
]
_STARTED = datetime(2026, 1, 1, tzinfo=UTC)


def parse_table(output: str) -> dict[str, dict[str, int]]:
    """The summary table as {row label: {column: count}}; cells are 2+ spaces apart."""
    lines = output.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("flow  "))
    header = re.split(r"\s{2,}", lines[header_at].strip())
    assert header == ["flow", *_COLUMNS]
    table: dict[str, dict[str, int]] = {}
    for line in lines[header_at + 1 :]:
        if not line.strip():
            break
        if set(line) == {"-"}:
            continue
        label, *cells = re.split(r"\s{2,}", line.strip())
        table[label] = dict(zip(_COLUMNS, map(int, cells), strict=True))
    return table


def test_demo_runs_every_execution_as_its_handler_decides(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "broker", "demo", "--executions", "40", "--timeout", "120"],
        env=clean_env(),  # as on a fresh machine: no AWS setup, no broker settings
        cwd=tmp_path,  # no .env, no checkout: the installed package only
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    table = parse_table(completed.stdout)
    assert list(table) == [*(case.label for case in Case), "total"]
    total = table["total"]
    assert total["executions"] == 40
    assert (total["unexpected"], total["stuck"]) == (0, 0)
    assert total["succeeded"] + total["failed as expected"] + total["waiting as expected"] == 40
    # 12 approvals: the first only opened (GET), then approved and rejected in turn.
    assert table["verification GET only"]["waiting as expected"] == 1
    assert table["verification approved"]["succeeded"] == 6
    assert table["verification rejected"]["failed as expected"] == 5
    for label, row in table.items():
        assert sum(row[column] for column in _COLUMNS[1:]) == row["executions"], label
    assert (
        "all 40 executions as their handlers and the person decided: 39 ended, 1 still "
        "waiting for a decision (its link opened, never used)"
    ) in completed.stdout
    assert (
        "decisions    12 sent through SNS to the inbox queue; 24 GETs (mail scanner, person) "
        "showed the page, decided nothing"
    ) in completed.stdout
    assert (
        "6 approved, 5 rejected (POST); 1 only opened, still waiting as planned; "
        "a link POSTed twice: 409"
    ) in completed.stdout
    assert "messages left: none" in completed.stdout
    assert "Traceback" not in completed.stderr


def test_demo_without_moto_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)
    assert run_demo(argparse.Namespace(executions=1, timeout=1.0)) == 2
    assert "pip install 'sfn-callback-broker[local]'" in capsys.readouterr().err


# --- the plan and the verdicts (no emulator) --------------------------------------------


def test_plan_mixes_the_flows() -> None:
    counts = {case: 0 for case in Case}
    for planned in plan_executions(300):
        counts[planned.case] += 1
    assert counts == {
        Case.CALLBACK: 120,
        Case.VERIFY_APPROVE: 45,
        Case.VERIFY_REJECT: 44,
        Case.VERIFY_WAITING: 1,
        Case.PURCHASE: 45,
        Case.REFUND: 45,
    }
    # Interleaved, so that every queue is busy from the start.
    assert {planned.case.flow for planned in plan_executions(3)} == {
        "callback",
        "verification",
        "transactions",
    }


def result(status: str, output: Any = None, error: str | None = None) -> ExecutionResult:
    return ExecutionResult(
        arn="arn:aws:states:us-east-1:123456789012:execution:demo-callback:00001-x",
        status=status,
        output=output,
        error=error,
        cause=None,
        started_at=_STARTED,
        stopped_at=None if status == "RUNNING" else _STARTED + timedelta(milliseconds=80),
    )


def first_of(case: Case) -> PlannedExecution:
    return next(p for p in plan_executions(20) if p.case is case)


@pytest.mark.parametrize(
    ("case", "outcome", "verdict"),
    [
        (Case.CALLBACK, result("SUCCEEDED", {"body": "Return from callback"}), Verdict.SUCCEEDED),
        (Case.CALLBACK, result("SUCCEEDED", {"body": "something else"}), Verdict.UNEXPECTED),
        (Case.CALLBACK, result("SUCCEEDED", "Return from callback"), Verdict.UNEXPECTED),
        (Case.CALLBACK, result("FAILED", error="Broker.InvalidInput"), Verdict.UNEXPECTED),
        (Case.CALLBACK, result("RUNNING"), Verdict.STUCK),
        (
            Case.VERIFY_REJECT,
            result("FAILED", error="Approval.Rejected"),
            Verdict.FAILED_AS_EXPECTED,
        ),
        (Case.VERIFY_REJECT, result("FAILED", error="States.Timeout"), Verdict.UNEXPECTED),
        (Case.VERIFY_REJECT, result("SUCCEEDED", {"approved": True}), Verdict.UNEXPECTED),
        (
            Case.VERIFY_APPROVE,
            result("SUCCEEDED", {"approved": True, "decided_at": "2026-01-01T00:00:00Z"}),
            Verdict.SUCCEEDED,
        ),
        (Case.VERIFY_APPROVE, result("SUCCEEDED", {"approved": True}), Verdict.UNEXPECTED),
        (Case.VERIFY_APPROVE, result("RUNNING"), Verdict.STUCK),
        (Case.VERIFY_WAITING, result("RUNNING"), Verdict.WAITING_AS_EXPECTED),
        (Case.VERIFY_WAITING, result("SUCCEEDED", {"approved": True}), Verdict.UNEXPECTED),
        (
            Case.PURCHASE,
            result(
                "SUCCEEDED",
                {
                    "TransactionType": "PURCHASE",
                    "Timestamp": "2026-01-01 00:00:00",
                    "Message": "Hello from the broker inside the ProcessPurchase handler",
                },
            ),
            Verdict.SUCCEEDED,
        ),
        (
            Case.REFUND,
            result(
                "SUCCEEDED",
                {
                    "TransactionType": "PURCHASE",
                    "Timestamp": "2026-01-01 00:00:00",
                    "Message": "Hello from Refund Processor!",
                },
            ),
            Verdict.UNEXPECTED,
        ),
    ],
)
def test_judge(case: Case, outcome: ExecutionResult, verdict: Verdict) -> None:
    got, reason = judge(expected_for(first_of(case)), outcome)
    assert got is verdict
    ok = {Verdict.SUCCEEDED, Verdict.FAILED_AS_EXPECTED, Verdict.WAITING_AS_EXPECTED}
    assert (reason is None) == (verdict in ok)


def test_the_first_verification_is_the_one_left_waiting() -> None:
    verifications = [p for p in plan_executions(40) if p.case.flow == "verification"]
    assert [p.case for p in verifications[:4]] == [
        Case.VERIFY_WAITING,
        Case.VERIFY_APPROVE,
        Case.VERIFY_REJECT,
        Case.VERIFY_APPROVE,
    ]
    # What the person finds the execution by, and what the page shows.
    first = verifications[0]
    assert first.input["order"] == first.index
    assert first.input["subject"].startswith(f"Approve order {first.index} ")


def test_link_problems_fail_the_demo() -> None:
    callbacks = [p for p in plan_executions(10) if p.case is Case.CALLBACK]
    judgements = judged(callbacks, [{"body": "Return from callback"}] * 4)
    person = PersonReport(problems=["order 2: GET answered 500 text/plain, not the page"])
    assert exit_code(judgements, planned=4) == 0
    assert exit_code(judgements, planned=4, person=PersonReport()) == 0
    assert exit_code(judgements, planned=4, person=person) == 1


def judged(executions: Sequence[PlannedExecution], outputs: Sequence[Any]) -> list[Judgement]:
    judgements = []
    for execution, output in zip(executions, outputs, strict=True):
        outcome = result("SUCCEEDED", output)
        verdict, reason = judge(expected_for(execution), outcome)
        judgements.append(Judgement(execution, outcome, verdict, reason))
    return judgements


def test_a_wrong_output_is_counted_unexpected_and_fails_the_demo() -> None:
    callbacks = [p for p in plan_executions(10) if p.case is Case.CALLBACK]
    right = {"body": "Return from callback"}
    judgements = judged(callbacks, [right, right, {"body": "tampered"}, right])

    table = parse_table("\n".join(summary_table(judgements)))
    assert table["callback"] == {
        "executions": 4,
        "succeeded": 3,
        "failed as expected": 0,
        "waiting as expected": 0,
        "unexpected": 1,
        "stuck": 0,
    }
    assert table["total"]["unexpected"] == 1
    assert exit_code(judgements, planned=4) == 1
    assert exit_code(judged(callbacks, [right] * 4), planned=4) == 0
    # Executions that never started (a timeout while starting) fail the demo too.
    assert exit_code(judged(callbacks, [right] * 4), planned=5) == 1
