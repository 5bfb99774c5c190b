"""What ``broker local deploy`` creates, and the broker settings that serve it.

A queue, its dead-letter queue and a one-task ``.waitForTaskToken`` state machine of the
same name (``deploy_queue``); an activity and its state machine (``deploy_activity``); or
the seed flows (``deploy_seeds``, as ``local.flows`` defines them). Every call is
idempotent: existing queues and activities are reused, state machines get the current
definition. Names are checked with AWS's rules before any call (``check_name``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from broker.local.definitions import callback_flow_definition
from broker.local.endpoint import AwsEndpoint
from broker.local.flows import (
    SEED_ROUTERS,
    decision_settings,
    deploy_activity_flow,
    deploy_decision_topic,
    deploy_seed_flows,
    put_state_machine,
    seed_decision_settings,
    seed_queue_settings,
)
from broker.local.shapes import Shape

__all__ = [
    "DECISION_PORT",
    "Deployed",
    "NameRefused",
    "check_heartbeat",
    "check_name",
    "deploy_activity",
    "deploy_decisions",
    "deploy_queue",
    "deploy_seeds",
    "merge_rows",
]

#: The decision listener's default port (BROKER_DECISION_PORT), for the seeds' approvals.
DECISION_PORT: Final = 8081
_DLQ_SUFFIX: Final = "-dlq"
#: SQS: 1..80 of these (a FIFO queue adds ``.fifo``); state machines and activities take
#: them too, so one name serves the queue and its flow.
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
_ACTIVITY_TIMEOUT_S: Final = 300


class NameRefused(ValueError):
    """A name AWS would refuse, or one this tool cannot deploy; the message says why."""


@dataclass(frozen=True)
class Deployed:
    """The flow to start (its state machine's name) and the settings rows that serve it."""

    flow: str
    state_machine_arn: str
    #: ``BROKER_QUEUES`` or ``BROKER_ACTIVITIES``.
    variable: str
    row: dict[str, Any]


def check_name(name: str, what: str, *, suffix: str = "") -> None:
    """AWS's naming rule for queues (and state machines, activities), checked here."""
    if name.endswith(".fifo"):
        raise NameRefused(f"{what} {name!r}: FIFO queues are not deployed by broker local")
    longest = 80 - len(suffix)
    if not _NAME.fullmatch(name) or len(name) > longest:
        room = f" (the {suffix!r} of its dead-letter queue must fit in 80)" if suffix else ""
        raise NameRefused(
            f"{what} {name!r}: 1 to {longest} letters, digits, '-' or '_'{room}, as AWS requires"
        )


def deploy_queue(
    aws: AwsEndpoint,
    name: str,
    shape: Shape,
    message_type: str | None,
    *,
    heartbeat_s: int | None = None,
) -> Deployed:
    """The queue ``name``, ``name-dlq`` and the state machine ``name`` sending ``shape``
    (its task with ``HeartbeatSeconds`` ``heartbeat_s`` when given)."""
    check_name(name, "queue", suffix=_DLQ_SUFFIX)
    if shape.type_required and message_type is None:
        raise NameRefused(f"shape {shape.name} carries no type in its body: give --type")
    sqs = aws.client("sqs")
    url: str = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    dead_letters = name + _DLQ_SUFFIX
    sqs.create_queue(QueueName=dead_letters)
    definition = callback_flow_definition(
        url,
        shape.body,
        message_type=message_type if shape.type_as_attribute else None,
        heartbeat_s=heartbeat_s,
    )
    arn = put_state_machine(aws.client("stepfunctions"), name, json.dumps(definition))
    return Deployed(name, arn, "BROKER_QUEUES", shape.queue_row(name, dead_letters, message_type))


def deploy_activity(
    aws: AwsEndpoint, name: str, message_type: str | None, *, heartbeat_s: int | None = None
) -> Deployed:
    """The activity ``name`` and a state machine ``name`` with one task on it."""
    check_name(name, "activity")
    check_heartbeat(heartbeat_s, activity=True)
    flow = deploy_activity_flow(
        aws, name=name, heartbeat_s=heartbeat_s, timeout_s=_ACTIVITY_TIMEOUT_S
    )
    # Without --type the broker routes by the input's `type` field, as on a queue.
    route = {"handler": message_type} if message_type is not None else {"type_field": "type"}
    return Deployed(name, flow.state_machine_arn, "BROKER_ACTIVITIES", {"name": name, **route})


def deploy_seeds(aws: AwsEndpoint, *, prefix: str, activity: bool) -> dict[str, str]:
    """Every seed flow named ``prefix-<flow>``, each queue with its dead-letter queue, and
    the settings for ``broker run`` (seed handlers, queues, activity, decision settings
    with a fresh key and the listener on 127.0.0.1:8081)."""
    check_name(f"{prefix}-decisions-inbox", "prefix", suffix=_DLQ_SUFFIX)
    flows = deploy_seed_flows(aws, prefix=prefix, dead_letter_queues=True)
    settings = {
        "BROKER_HANDLERS": json.dumps(list(SEED_ROUTERS)),
        "BROKER_QUEUES": json.dumps(seed_queue_settings(flows)),
    }
    if activity:
        name = f"{prefix}-activity"
        deploy_activity_flow(aws, name=name, heartbeat_s=60)
        settings["BROKER_ACTIVITIES"] = json.dumps([{"name": name, "handler": "verify"}])
    return {**settings, **seed_decision_settings(flows, port=DECISION_PORT)}


def check_heartbeat(heartbeat_s: int | None, *, activity: bool) -> None:
    """``HeartbeatSeconds`` as Step Functions takes it: positive, and below the task's
    ``TimeoutSeconds`` (an activity task's is 300 s here; a callback task has none)."""
    if heartbeat_s is None:
        return
    if heartbeat_s < 1:
        raise NameRefused(f"--heartbeat {heartbeat_s}: a number of seconds, at least 1")
    if activity and heartbeat_s >= _ACTIVITY_TIMEOUT_S:
        raise NameRefused(
            f"--heartbeat {heartbeat_s}: must be below the activity task's "
            f"TimeoutSeconds ({_ACTIVITY_TIMEOUT_S})"
        )


def deploy_decisions(aws: AwsEndpoint, *, prefix: str) -> dict[str, str]:
    """The decision topic ``prefix-decisions``, its inbox queue ``prefix-decisions-inbox``
    (``broker local inbox``), and the decision settings (a fresh key, the listener on
    127.0.0.1:8081)."""
    check_name(f"{prefix}-decisions-inbox", "prefix", suffix=_DLQ_SUFFIX)
    topic_arn, _ = deploy_decision_topic(aws, prefix)
    return decision_settings(topic_arn, port=DECISION_PORT)


def merge_rows(current: str | None, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``rows`` added to the JSON list ``current`` (a variable's value), a row of the same
    name replaced: deploying a second queue keeps the first one served."""
    try:
        existing = json.loads(current) if current else []
    except ValueError:
        existing = []
    if not isinstance(existing, list):
        existing = []
    names = {row["name"] for row in rows}

    def name_of(item: Any) -> Any:
        return item.get("name") if isinstance(item, dict) else item

    return [*(item for item in existing if name_of(item) not in names), *rows]
