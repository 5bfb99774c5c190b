"""``broker demo``, the plan: which executions to start, and what each one must end as.

The expectations restate handlers/seeds.py and handlers/approval.py on purpose: the demo
checks the handlers too.  The verification flow (seed 004) is decided by a person: the
demo's ``local.demo_person`` approves some, rejects others, and only opens the link of
one (``Case.VERIFY_WAITING``), which must then still be waiting.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from broker.local.executions import ExecutionResult

__all__ = [
    "Case",
    "Expected",
    "Judgement",
    "PlannedExecution",
    "Verdict",
    "expected_for",
    "judge",
    "plan_executions",
]

_PURCHASE_MESSAGE: Final = "Hello from the broker inside the ProcessPurchase handler"
_REFUND_MESSAGE: Final = "Hello from Refund Processor!"


class Case(StrEnum):
    """What an execution exercises: one row of the summary table."""

    CALLBACK = "callback"
    VERIFY_APPROVE = "verify-approve"
    VERIFY_REJECT = "verify-reject"
    VERIFY_WAITING = "verify-waiting"
    PURCHASE = "purchase"
    REFUND = "refund"

    @property
    def label(self) -> str:
        return _CASE_LABELS[self]

    @property
    def flow(self) -> str:
        """The seed flow (state machine and queue) it runs through."""
        return _CASE_FLOWS[self]


_CASE_LABELS: Final = {
    Case.CALLBACK: "callback",
    Case.VERIFY_APPROVE: "verification approved",
    Case.VERIFY_REJECT: "verification rejected",
    Case.VERIFY_WAITING: "verification GET only",
    Case.PURCHASE: "transactions PURCHASE",
    Case.REFUND: "transactions REFUND",
}
_CASE_FLOWS: Final = {
    Case.CALLBACK: "callback",
    Case.VERIFY_APPROVE: "verification",
    Case.VERIFY_REJECT: "verification",
    Case.VERIFY_WAITING: "verification",
    Case.PURCHASE: "transactions",
    Case.REFUND: "transactions",
}
# Out of every ten executions: 4 callback, 3 transactions, 3 verification, interleaved so
# that all three queues are busy at once. Within a flow the two cases alternate, except
# that the first verification is the one whose link the person only opens.
_SLOTS: Final = (
    "callback",
    "transactions",
    "verification",
    "callback",
    "transactions",
    "verification",
    "callback",
    "transactions",
    "verification",
    "callback",
)
_FLOW_CASES: Final = {
    "callback": (Case.CALLBACK, Case.CALLBACK),
    "verification": (Case.VERIFY_APPROVE, Case.VERIFY_REJECT),
    "transactions": (Case.PURCHASE, Case.REFUND),
}


class Verdict(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED_AS_EXPECTED = "failed as expected"
    #: Still RUNNING, as planned: its link was opened (GET) and never used.
    WAITING_AS_EXPECTED = "waiting as expected"
    UNEXPECTED = "unexpected"
    STUCK = "stuck"


@dataclass(frozen=True)
class PlannedExecution:
    index: int
    case: Case
    input: dict[str, Any]


@dataclass(frozen=True)
class Expected:
    """What the seed handler (or the person) decides. In `output`, a type stands for any
    value of it.  ``status`` RUNNING: the execution must still be waiting."""

    status: str
    output: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Judgement:
    planned: PlannedExecution
    result: ExecutionResult
    verdict: Verdict
    reason: str | None


def plan_executions(count: int) -> list[PlannedExecution]:
    seen: Counter[str] = Counter()
    plan: list[PlannedExecution] = []
    for index in range(count):
        flow = _SLOTS[index % len(_SLOTS)]
        if flow == "verification" and not seen[flow]:
            case = Case.VERIFY_WAITING
        else:
            # The waiting one does not shift the alternation: approve comes next.
            case = _FLOW_CASES[flow][(seen[flow] - (flow == "verification")) % 2]
        seen[flow] += 1
        plan.append(PlannedExecution(index=index, case=case, input=_input_for(case, index)))
    return plan


def _input_for(case: Case, index: int) -> dict[str, Any]:
    if case.flow == "verification":
        # What handlers.approval reads (subject), and what the person finds the execution
        # by (order, in the details the handler makes of the other fields).
        amount = 10 + index % 90
        return {
            "subject": f"Approve order {index} ({amount} EUR)",
            "order": index,
            "amount": amount,
        }
    if case is Case.PURCHASE:
        return {"TransactionType": "PURCHASE", "order": index, "amount": 10 + index % 90}
    if case is Case.REFUND:
        return {"TransactionType": "REFUND", "order": index, "amount": 10 + index % 90}
    return {"order": index}


def expected_for(planned: PlannedExecution) -> Expected:
    """Restated from handlers/seeds.py on purpose: the demo checks the handlers too."""
    case = planned.case
    if case is Case.CALLBACK:
        return Expected("SUCCEEDED", output={"body": "Return from callback"})
    if case is Case.VERIFY_APPROVE:
        return Expected("SUCCEEDED", output={"approved": True, "decided_at": str})
    if case is Case.VERIFY_REJECT:
        return Expected("FAILED", error="Approval.Rejected")
    if case is Case.VERIFY_WAITING:
        return Expected("RUNNING")
    message = _PURCHASE_MESSAGE if case is Case.PURCHASE else _REFUND_MESSAGE
    return Expected(
        "SUCCEEDED",
        output={
            "TransactionType": planned.input["TransactionType"],
            "Timestamp": str,
            "Message": message,
        },
    )


def judge(expected: Expected, result: ExecutionResult) -> tuple[Verdict, str | None]:
    """The verdict on one execution, and why when it is not the expected one."""
    if expected.status == "RUNNING":
        if result.status == "RUNNING":
            return Verdict.WAITING_AS_EXPECTED, None
        return Verdict.UNEXPECTED, f"{result.status}, expected it to be still waiting"
    if result.status == "RUNNING":
        return Verdict.STUCK, "still RUNNING"
    if result.status != expected.status:
        error = f" ({result.error})" if result.error else ""
        return Verdict.UNEXPECTED, f"{result.status}{error}, expected {expected.status}"
    if expected.status == "FAILED":
        if result.error != expected.error:
            return Verdict.UNEXPECTED, f"error {result.error!r}, expected {expected.error!r}"
        return Verdict.FAILED_AS_EXPECTED, None
    if not _matches(result.output, expected.output):
        return Verdict.UNEXPECTED, f"output {_short(result.output)} does not match the handler's"
    return Verdict.SUCCEEDED, None


def _matches(actual: Any, expected: Any) -> bool:
    if isinstance(expected, type):
        return isinstance(actual, expected)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(_matches(actual[key], value) for key, value in expected.items())
        )
    return bool(actual == expected)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
