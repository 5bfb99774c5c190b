"""Executions of the seed flows on an emulator: start them, wait for them, read them.

DescribeExecution on moto 5.2 returns a JSON string output bare, without its quotes
(`"ok"` comes back as `ok`), and leaves `output` out when it is JSON `null`. Such an
output is kept as the raw string; a string that looks like another JSON value (`"42"`)
cannot be told apart and comes back parsed (`42`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from broker.local.endpoint import AwsEndpoint

__all__ = [
    "ExecutionResult",
    "describe_execution",
    "running_executions",
    "start_executions",
    "wait_for_executions",
]

_TERMINAL_EVENT_DETAILS: Final = (
    "executionFailedEventDetails",
    "executionTimedOutEventDetails",
    "executionAbortedEventDetails",
)
_NAME_MAX: Final = 80
_NAME_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ExecutionResult:
    """An execution as last seen; `status` is still RUNNING if the wait timed out."""

    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    started_at: datetime
    stopped_at: datetime | None


def start_executions(
    aws: AwsEndpoint,
    state_machine_arn: str,
    inputs: Sequence[Mapping[str, Any]],
    *,
    name_prefix: str,
) -> list[str]:
    """Start one execution per input; return their ARNs in input order.

    Every execution gets a fresh name: moto (like AWS) treats a repeated name with the same
    input as the same execution.
    """
    sfn = aws.client("stepfunctions")
    run_id = uuid.uuid4().hex[:12]
    arns: list[str] = []
    for index, execution_input in enumerate(inputs):
        suffix = f"-{run_id}-{index}"
        name = _NAME_UNSAFE.sub("-", name_prefix)[: _NAME_MAX - len(suffix)] + suffix
        response = sfn.start_execution(
            stateMachineArn=state_machine_arn, name=name, input=json.dumps(execution_input)
        )
        arns.append(response["executionArn"])
    return arns


def wait_for_executions(
    aws: AwsEndpoint,
    execution_arns: Sequence[str],
    *,
    timeout_s: float,
    poll_interval_s: float = 0.2,
) -> dict[str, ExecutionResult]:
    """Wait until none of the executions is RUNNING, or until timeout_s; describe them all.

    While waiting, one ListExecutions(statusFilter=RUNNING) per state machine per poll
    replaces a DescribeExecution per execution; each execution is described once at the end.
    """
    sfn = aws.client("stepfunctions")
    by_machine: dict[str, set[str]] = {}
    for arn in execution_arns:
        by_machine.setdefault(_state_machine_arn(arn), set()).add(arn)
    deadline = time.monotonic() + timeout_s
    while by_machine:
        for machine_arn in list(by_machine):
            running = set(running_executions(sfn, machine_arn))
            by_machine[machine_arn] &= running
            if not by_machine[machine_arn]:
                del by_machine[machine_arn]
        if not by_machine or time.monotonic() >= deadline:
            break
        time.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))
    return {arn: describe_execution(sfn, arn) for arn in dict.fromkeys(execution_arns)}


def _state_machine_arn(execution_arn: str) -> str:
    # arn:<partition>:states:<region>:<account>:execution:<machine>:<execution>
    parts = execution_arn.split(":")
    if len(parts) != 8 or parts[5] != "execution":
        raise ValueError(f"not a standard execution ARN: {execution_arn!r}")
    return ":".join([*parts[:5], "stateMachine", parts[6]])


def running_executions(sfn: Any, machine_arn: str) -> Iterator[str]:
    paginator = sfn.get_paginator("list_executions")
    for page in paginator.paginate(stateMachineArn=machine_arn, statusFilter="RUNNING"):
        for execution in page["executions"]:
            yield execution["executionArn"]


def describe_execution(sfn: Any, arn: str) -> ExecutionResult:
    described = sfn.describe_execution(executionArn=arn)
    status: str = described["status"]
    error: str | None = described.get("error")
    cause: str | None = described.get("cause")
    if status in {"FAILED", "TIMED_OUT", "ABORTED"} and error is None and cause is None:
        error, cause = _terminal_error(sfn, arn)
    return ExecutionResult(
        arn=arn,
        status=status,
        output=_parse_output(described.get("output")),
        error=error,
        cause=cause,
        started_at=described["startDate"],
        stopped_at=described.get("stopDate"),
    )


def _parse_output(raw_output: str | None) -> Any:
    if raw_output is None:
        return None
    try:
        return json.loads(raw_output)
    except ValueError:
        # moto's bare JSON string (see the module docstring): the raw text is the value.
        return raw_output


def _terminal_error(sfn: Any, arn: str) -> tuple[str | None, str | None]:
    # DescribeExecution normally carries error and cause; the last history event is the
    # fallback for emulators that leave them out there.
    # reverseOrder puts the terminal event on the first page on AWS; moto ignores it and
    # answers all events at once, so the whole page is searched.
    events = sfn.get_execution_history(executionArn=arn, reverseOrder=True)
    for event in events["events"]:
        for key in _TERMINAL_EVENT_DETAILS:
            if key in event:
                details = event[key]
                return details.get("error"), details.get("cause")
    return None, None
