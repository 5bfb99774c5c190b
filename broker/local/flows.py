"""The seed flows, defined once: deployed to moto (the demo, tests/integration) and to
LocalStack (``broker local deploy --preset seeds``, tests/localstack).

Three callback flows, each one SQS queue and one ``sqs:sendMessage.waitForTaskToken``
state machine (seeds 000, 004 and 001), optionally a dead-letter queue per queue, and the
activity flow (seed 003), which only LocalStack can run (moto has no GetActivityTask).
Seed 004 is a person's approval: its handler (``handlers.approval``) publishes the
decision links to an SNS topic, which delivers them (raw) to an SQS "inbox" queue that
stands for the person's mailbox.  Their definitions are in ``local.definitions``;
``seed_queue_settings`` and ``seed_decision_settings`` say how a deployment configures
the broker for them.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any, Final

from broker.local.definitions import activity_definition, callback_definitions
from broker.local.endpoint import AwsEndpoint
from broker.local.shapes import SHAPES

__all__ = [
    "APPROVAL_HANDLERS",
    "FLOWS",
    "SEED_HANDLERS",
    "SEED_ROUTERS",
    "ActivityFlow",
    "SeedFlows",
    "decision_settings",
    "deploy_activity_flow",
    "deploy_decision_topic",
    "deploy_seed_flows",
    "put_state_machine",
    "queue_name",
    "seed_decision_settings",
    "seed_queue_settings",
]

#: The seed handlers, as ``BROKER_HANDLERS`` names them.
SEED_HANDLERS: Final = "handlers.seeds:router"
#: Seed 004's approval handler.
APPROVAL_HANDLERS: Final = "handlers.approval:router"
#: Every router the seed flows need, as ``BROKER_HANDLERS`` lists them.
SEED_ROUTERS: Final = (SEED_HANDLERS, APPROVAL_HANDLERS)
#: The callback flows, by logical name.
FLOWS: Final = ("callback", "verification", "transactions")
# Emulators accept any role; this one is only there because CreateStateMachine requires it.
_ROLE_ARN: Final = "arn:aws:iam::123456789012:role/sfn-callback-broker-demo"


@dataclass(frozen=True)
class SeedFlows:
    """What deploy_seed_flows created, by flow: queue URLs, state machine ARNs, and the
    dead-letter queue URLs (empty unless asked for); the decision topic and the inbox
    queue subscribed to it."""

    queues: dict[str, str]
    state_machines: dict[str, str]
    dead_letter_queues: dict[str, str] = field(default_factory=dict)
    #: The SNS topic the approval handler publishes decision links to.
    topic_arn: str = ""
    #: An SQS queue subscribed to the topic with raw delivery: the person's "mailbox".
    inbox_url: str = ""


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def deploy_seed_flows(
    aws: AwsEndpoint, *, prefix: str = "demo", dead_letter_queues: bool = False
) -> SeedFlows:
    """Create the seed queues and state machines, named f"{prefix}-<flow>", and with
    ``dead_letter_queues`` one f"{prefix}-<flow>-dlq" per queue.

    Safe to call again with the same prefix: existing queues are reused and existing state
    machines get the current definition.
    """
    sqs = aws.client("sqs")
    sfn = aws.client("stepfunctions")
    queues = {
        flow: sqs.create_queue(
            QueueName=f"{prefix}-{flow}", Attributes={"VisibilityTimeout": "30"}
        )["QueueUrl"]
        for flow in FLOWS
    }
    dead_letters = {
        flow: sqs.create_queue(QueueName=f"{queue_name(url)}-dlq")["QueueUrl"]
        for flow, url in queues.items()
        if dead_letter_queues
    }
    state_machines = {
        flow: put_state_machine(sfn, f"{prefix}-{flow}", json.dumps(definition))
        for flow, definition in callback_definitions(queues).items()
    }
    topic_arn, inbox_url = deploy_decision_topic(aws, prefix)
    return SeedFlows(queues, state_machines, dead_letters, topic_arn, inbox_url)


def deploy_decision_topic(aws: AwsEndpoint, prefix: str) -> tuple[str, str]:
    """The topic f"{prefix}-decisions" and the queue f"{prefix}-decisions-inbox" on it.

    Raw delivery: the queue receives the message's ``default`` text (the approval
    handler's JSON document), not SNS's envelope around it.  Both calls, and Subscribe
    for the same queue, are idempotent.
    """
    sns, sqs = aws.client("sns"), aws.client("sqs")
    topic_arn: str = sns.create_topic(Name=f"{prefix}-decisions")["TopicArn"]
    inbox_url: str = sqs.create_queue(QueueName=f"{prefix}-decisions-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    subscribed = any(
        subscription["Endpoint"] == inbox_arn
        for subscription in sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    )
    if not subscribed:
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=inbox_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
    return topic_arn, inbox_url


def seed_decision_settings(flows: SeedFlows, *, port: int) -> dict[str, str]:
    """The decision settings (``BROKER_DECISION_*``) for seed 004's approval handler: the
    deployed topic, one fresh key, and the listener on loopback at ``port`` (no proxy in
    front, so the links point at it directly)."""
    return decision_settings(flows.topic_arn, port=port)


def decision_settings(topic_arn: str, *, port: int) -> dict[str, str]:
    """The decision settings for ``topic_arn``: one fresh key, the listener on loopback at
    ``port`` (no proxy in front, so the links point at it directly)."""
    # A key as `broker decisions keygen` prints one: 32 random bytes, URL-safe base64.
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return {
        "BROKER_DECISION_TOPIC": topic_arn,
        "BROKER_DECISION_KEYS": json.dumps([key]),
        "BROKER_DECISION_BASE_URL": f"http://127.0.0.1:{port}",
        "BROKER_DECISION_HOST": "127.0.0.1",
        "BROKER_DECISION_PORT": str(port),
    }


def seed_queue_settings(flows: SeedFlows) -> list[dict[str, Any]]:
    """The broker's queue settings for the seed flows (``BROKER_QUEUES`` rows), by name as
    on AWS; each with its dead-letter queue when the flows have them."""

    def queue(flow: str, shape: str, message_type: str | None = None) -> dict[str, Any]:
        dead_letters = flows.dead_letter_queues.get(flow)
        return SHAPES[shape].queue_row(
            queue_name(flows.queues[flow]),
            queue_name(dead_letters) if dead_letters else None,
            message_type,
        )

    return [
        # seed 000: {"input", "MyTaskToken"}; one handler for the whole queue.
        queue("callback", "seed-000", "callback"),
        # seed 004: {"Payload", "TaskToken"}; a person approves it (handlers.approval).
        queue("verification", "seed-004", "approval"),
        # seed 001: purchases and refunds share a queue; the `type` attribute routes.
        queue("transactions", "seed-001"),
    ]


def put_state_machine(sfn: Any, name: str, definition: str) -> str:
    """Create the state machine, or give the existing one this definition; its ARN."""
    try:
        arn: str = sfn.create_state_machine(name=name, definition=definition, roleArn=_ROLE_ARN)[
            "stateMachineArn"
        ]
    except sfn.exceptions.StateMachineAlreadyExists:
        # AWS refuses a second create with another definition...
        arn = next(
            sm["stateMachineArn"]
            for page in sfn.get_paginator("list_state_machines").paginate()
            for sm in page["stateMachines"]
            if sm["name"] == name
        )
    # ...while moto answers with the old machine unchanged: compare and update in both cases.
    if sfn.describe_state_machine(stateMachineArn=arn)["definition"] != definition:
        sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=_ROLE_ARN)
    return arn


# --- the activity flow (seed 003) -------------------------------------------------------


@dataclass(frozen=True)
class ActivityFlow:
    activity_arn: str
    state_machine_arn: str


def deploy_activity_flow(
    aws: AwsEndpoint,
    *,
    name: str,
    heartbeat_s: int | None = None,
    timeout_s: int = 120,
) -> ActivityFlow:
    """One activity and a state machine with one Task on it, both called ``name``.

    ``heartbeat_s`` sets the task's ``HeartbeatSeconds``: a worker silent for longer
    fails the execution with ``States.Timeout``.
    """
    sfn = aws.client("stepfunctions")
    # Both calls are idempotent, so deploying again is safe.
    activity_arn: str = sfn.create_activity(name=name)["activityArn"]
    definition = activity_definition(activity_arn, heartbeat_s=heartbeat_s, timeout_s=timeout_s)
    machine_arn = put_state_machine(sfn, name, json.dumps(definition))
    return ActivityFlow(activity_arn=activity_arn, state_machine_arn=machine_arn)
