"""The seed flows' state machine definitions (Amazon States Language), by flow.

``local.flows`` deploys them; the comments name the seed document each one comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from broker.local.shapes import SHAPES

__all__ = ["activity_definition", "callback_definitions", "callback_flow_definition"]

_CALLBACK_RESOURCE: Final = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
#: The approval state's timeout: the links' default lifetime (86,400 s) and an hour more.
_DECISION_TIMEOUT_S: Final = 90_000


def _callback_task(
    queue_url: str,
    message_body: Mapping[str, str],
    *,
    message_type: str | None = None,
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": dict(message_body)}
    if message_type is not None:
        # moto's Step Functions engine forwards MessageAttributes to SQS (checked in
        # tests/integration/test_emulator.py), so the type travels as an attribute, as
        # it would on AWS, and the body stays the seed's {"input", "TaskToken"}.
        parameters["MessageAttributes"] = {
            "type": {"DataType": "String", "StringValue": message_type}
        }
    return {"Type": "Task", "Resource": _CALLBACK_RESOURCE, "Parameters": parameters}


def callback_definitions(queues: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The three callback flows, each sending to its queue in ``queues`` (by flow)."""
    transaction_body = SHAPES["seed-001"].body

    def transaction(message_type: str) -> dict[str, Any]:
        task = _callback_task(queues["transactions"], transaction_body, message_type=message_type)
        return {**task, "End": True}

    def choice(value: str, state: str) -> dict[str, str]:
        return {"Variable": "$.TransactionType", "StringEquals": value, "Next": state}

    return {
        # seed 000: the plain callback example, token field `MyTaskToken`.
        "callback": {
            "Comment": "Callback flow: wait for a worker, then finish.",
            "StartAt": "WaitForCallback",
            "States": {
                "WaitForCallback": {
                    **_callback_task(queues["callback"], SHAPES["seed-000"].body),
                    "Next": "Done",
                },
                "Done": {"Type": "Pass", "End": True},
            },
        },
        # seed 004 (CDK): payload under `Payload`, token under `TaskToken`.  A person
        # decides (handlers.approval): the state waits at most a little longer than the
        # links live (BROKER_DECISION_TTL_S, a day), and has no HeartbeatSeconds, since
        # nothing heartbeats a task handed to a person (docs/decisions.md).
        "verification": {
            "Comment": "Verification flow: a person approves or rejects the payload.",
            "StartAt": "Verify",
            "States": {
                "Verify": {
                    **_callback_task(queues["verification"], SHAPES["seed-004"].body),
                    "TimeoutSeconds": _DECISION_TIMEOUT_S,
                    "End": True,
                },
            },
        },
        # seed 001 as a callback flow: one queue, the message type as an SQS attribute.
        # No Default branch, as in the seed: another type fails the execution
        # (States.NoChoiceMatched on AWS, States.Runtime on moto).
        "transactions": {
            "Comment": "Transaction flow: route purchases and refunds to one queue.",
            "StartAt": "ProcessTransaction",
            "States": {
                "ProcessTransaction": {
                    "Type": "Choice",
                    "Choices": [
                        choice("PURCHASE", "ProcessPurchase"),
                        choice("REFUND", "ProcessRefund"),
                    ],
                },
                "ProcessPurchase": transaction("purchase"),
                "ProcessRefund": transaction("refund"),
            },
        },
    }


def callback_flow_definition(
    queue_url: str,
    message_body: Mapping[str, str],
    *,
    message_type: str | None,
    heartbeat_s: int | None = None,
) -> dict[str, Any]:
    """One callback task on one queue (``broker local deploy --queue``); its result is the
    execution's output.  ``heartbeat_s``: its ``HeartbeatSeconds`` (without it, Step
    Functions answers a heartbeat for the task ``InvalidToken``)."""
    task: dict[str, Any] = {
        **_callback_task(queue_url, message_body, message_type=message_type),
        "End": True,
    }
    if heartbeat_s is not None:
        task["HeartbeatSeconds"] = heartbeat_s
    return {
        "Comment": "broker local deploy: one callback task, completed by the broker.",
        "StartAt": "Handle",
        "States": {"Handle": task},
    }


def activity_definition(
    activity_arn: str, *, heartbeat_s: int | None, timeout_s: int
) -> dict[str, Any]:
    """Seed 003: one Task on the activity."""
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": activity_arn,
        "TimeoutSeconds": timeout_s,
        "End": True,
    }
    if heartbeat_s is not None:
        task["HeartbeatSeconds"] = heartbeat_s
    return {"StartAt": "TestActivity", "States": {"TestActivity": task}}
