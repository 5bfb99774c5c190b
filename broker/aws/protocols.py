"""The AWS seam: the few client calls the broker makes, as four protocols.

The broker talks to SQS, Step Functions and SNS only through these, so tests (and the
benchmarks) can swap the network for a fake; ``broker.aws.clients`` builds the real ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["AwsClients", "DynamoApi", "SfnApi", "SnsApi", "SqsApi"]


# Read-only callables rather than methods, so that any keyword signature (botocore's
# client, a fake with explicit parameters) satisfies the protocol.
_Call = Callable[..., Awaitable[Mapping[str, Any]]]


class SqsApi(Protocol):
    """The SQS calls the broker makes (keyword arguments as in botocore)."""

    @property
    def get_queue_url(self) -> _Call: ...
    @property
    def get_queue_attributes(self) -> _Call: ...
    @property
    def receive_message(self) -> _Call: ...
    @property
    def delete_message_batch(self) -> _Call: ...
    @property
    def change_message_visibility(self) -> _Call: ...
    @property
    def change_message_visibility_batch(self) -> _Call: ...
    @property
    def send_message(self) -> _Call: ...
    @property
    def send_message_batch(self) -> _Call: ...


class SfnApi(Protocol):
    """The Step Functions calls the broker makes."""

    @property
    def send_task_success(self) -> _Call: ...
    @property
    def send_task_failure(self) -> _Call: ...
    @property
    def send_task_heartbeat(self) -> _Call: ...
    @property
    def get_activity_task(self) -> _Call: ...
    @property
    def describe_activity(self) -> _Call: ...
    @property
    def list_activities(self) -> _Call: ...
    @property
    def create_activity(self) -> _Call: ...


class SnsApi(Protocol):
    """The SNS calls the broker makes: the decision topic's look-up and its notifications
    (the demo and the seed deploy create topics and subscriptions through it too)."""

    @property
    def publish(self) -> _Call: ...
    @property
    def get_topic_attributes(self) -> _Call: ...
    @property
    def list_topics(self) -> _Call: ...
    @property
    def create_topic(self) -> _Call: ...
    @property
    def subscribe(self) -> _Call: ...


class DynamoApi(Protocol):
    """The DynamoDB calls of the idempotency table (``core.idempotency``): claims,
    records and releases on the hot path of ``idempotent=True`` routes; the table's
    check and creation (``aws.dynamo``) at start-up and in the ``broker`` command."""

    @property
    def put_item(self) -> _Call: ...
    @property
    def get_item(self) -> _Call: ...
    @property
    def update_item(self) -> _Call: ...
    @property
    def delete_item(self) -> _Call: ...
    @property
    def describe_table(self) -> _Call: ...
    @property
    def describe_time_to_live(self) -> _Call: ...
    @property
    def create_table(self) -> _Call: ...
    @property
    def update_time_to_live(self) -> _Call: ...


@dataclass(frozen=True, slots=True)
class AwsClients:
    sqs: SqsApi
    sfn: SfnApi
    #: A Step Functions client for GetActivityTask's minute-long poll (default: ``sfn``).
    sfn_poll: SfnApi | None = None
    #: SNS, opened only when a decision topic is configured (``BROKER_DECISION_TOPIC``).
    sns: SnsApi | None = None
    #: DynamoDB, opened only when an idempotency table is configured
    #: (``BROKER_IDEMPOTENCY_TABLE``).
    dynamodb: DynamoApi | None = None

    @property
    def activity_sfn(self) -> SfnApi:
        return self.sfn_poll if self.sfn_poll is not None else self.sfn
