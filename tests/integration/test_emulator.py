"""The embedded emulator and the seed flows, driven by a plain boto3 consumer.

These tests also pin the moto behaviour the broker is built around: MessageAttributes
reach SQS, `cause` is dropped, a second completion answers InvalidToken.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioboto3
import botocore.session
import pytest
from botocore.exceptions import ClientError

from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import SeedFlows, deploy_seed_flows, seed_queue_settings
from broker.local.localstack import deploy_all
from broker.local.moto import EmbeddedAws, EmulatorUnavailable


@dataclass(frozen=True)
class Fail:
    error: str
    cause: str


# Given the SQS message and its parsed body, return the task output or a Fail.
Decide = Callable[[dict[str, Any], dict[str, Any]], Any]


def consume(
    aws: EmbeddedAws,
    queue_url: str,
    *,
    count: int,
    token_field: str,
    decide: Decide,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Receive, parse, complete the task, delete; until `count` messages are handled."""
    sqs = aws.client("sqs")
    sfn = aws.client("stepfunctions")
    handled: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(handled) < count:
        assert time.monotonic() < deadline, f"{len(handled)} of {count} messages arrived"
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        )
        for message in response.get("Messages", []):
            body = json.loads(message["Body"])
            outcome = decide(message, body)
            if isinstance(outcome, Fail):
                sfn.send_task_failure(
                    taskToken=body[token_field], error=outcome.error, cause=outcome.cause
                )
            else:
                sfn.send_task_success(taskToken=body[token_field], output=json.dumps(outcome))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            handled.append(message)
    return handled


def queue_depth(aws: EmbeddedAws, queue_url: str) -> tuple[int, int]:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


# --- the emulator itself ----------------------------------------------------------------


def test_endpoint_is_loopback_and_moto_port_points_at_it(aws: EmbeddedAws) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", aws.endpoint_url)
    assert os.environ["MOTO_PORT"] == str(aws.port)
    assert aws.env() == {
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


def test_second_emulator_start_stop_releases_port_and_restores_moto_port(
    aws: EmbeddedAws,
) -> None:
    other = EmbeddedAws(region="eu-west-1")
    with other:
        assert other.port != aws.port
        assert os.environ["MOTO_PORT"] == str(other.port)
        assert other.client("sqs").list_queues().get("QueueUrls", []) == []
        port = other.port
    assert os.environ["MOTO_PORT"] == str(aws.port)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass
    with pytest.raises(RuntimeError, match="not started"):
        _ = other.endpoint_url


def test_start_without_moto_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)
    with pytest.raises(EmulatorUnavailable, match=r"pip install 'sfn-callback-broker\[local\]'"):
        EmbeddedAws().start()


def test_start_on_a_taken_port_fails_fast() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(OSError, match=f"127.0.0.1:{port} is not available"):
            EmbeddedAws(port=port).start()
        assert time.monotonic() - began < 2


def test_reset_clears_state_and_keeps_executions_switched_on(aws: EmbeddedAws) -> None:
    deploy_seed_flows(aws, prefix="before-reset")
    aws.reset()
    assert aws.client("sqs").list_queues().get("QueueUrls", []) == []
    assert aws.client("stepfunctions").list_state_machines()["stateMachines"] == []

    flows = deploy_seed_flows(aws, prefix="after-reset")
    [arn] = start_executions(aws, flows.state_machines["callback"], [{"n": 1}], name_prefix="r")
    consume(
        aws,
        flows.queues["callback"],
        count=1,
        token_field="MyTaskToken",
        decide=lambda _m, body: {"seen": body["input"]},
    )
    result = wait_for_executions(aws, [arn], timeout_s=10)[arn]
    assert (result.status, result.output) == ("SUCCEEDED", {"seen": {"n": 1}})


def test_deploy_is_idempotent(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    prefix = seed_flows.queues["callback"].rsplit("/", 1)[1].removesuffix("-callback")
    assert deploy_seed_flows(aws, prefix=prefix) == seed_flows
    sqs = aws.client("sqs")
    queues = [*seed_flows.queues.values(), seed_flows.inbox_url]
    assert sorted(sqs.list_queues()["QueueUrls"]) == sorted(queues)
    # One topic, and the inbox subscribed to it once, with raw delivery.
    sns = aws.client("sns")
    assert [t["TopicArn"] for t in sns.list_topics()["Topics"]] == [seed_flows.topic_arn]
    [subscription] = sns.list_subscriptions_by_topic(TopicArn=seed_flows.topic_arn)["Subscriptions"]
    attributes = sns.get_subscription_attributes(SubscriptionArn=subscription["SubscriptionArn"])
    assert attributes["Attributes"]["RawMessageDelivery"] == "true"
    for url in seed_flows.queues.values():
        found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert found["VisibilityTimeout"] == "30"
        assert "FifoQueue" not in found
    assert sorted(seed_flows.state_machines) == ["callback", "transactions", "verification"]


def test_deploy_with_dead_letter_queues_gives_each_queue_one(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    prefix = seed_flows.queues["callback"].rsplit("/", 1)[1].removesuffix("-callback")
    flows = deploy_seed_flows(aws, prefix=prefix, dead_letter_queues=True)
    assert (flows.queues, flows.state_machines) == (seed_flows.queues, seed_flows.state_machines)
    assert deploy_seed_flows(aws, prefix=prefix, dead_letter_queues=True) == flows
    sqs = aws.client("sqs")
    assert sorted(flows.dead_letter_queues) == sorted(flows.queues)
    for flow, url in flows.dead_letter_queues.items():
        assert url == flows.queues[flow] + "-dlq"
        assert sqs.get_queue_url(QueueName=url.rsplit("/", 1)[1])["QueueUrl"] == url
    rows = seed_queue_settings(flows)
    assert [row["dead_letter_queue"] for row in rows] == [
        url.rsplit("/", 1)[1] for url in flows.dead_letter_queues.values()
    ]
    # Without dead-letter queues the settings name none.
    assert all("dead_letter_queue" not in row for row in seed_queue_settings(seed_flows))


def test_the_localstack_deploy_names_a_dead_letter_queue_for_every_queue(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    # deploy_all only needs an endpoint: run here, it shows what `deploy` exports. A queue
    # without one makes `broker run` warn at every start.
    exported = deploy_all(aws)
    queues = json.loads(exported["BROKER_QUEUES"])
    assert [queue["name"] for queue in queues] == [
        "local-callback",
        "local-verification",
        "local-transactions",
    ]
    sqs = aws.client("sqs")
    for queue in queues:
        assert queue["dead_letter_queue"] == queue["name"] + "-dlq"
        sqs.get_queue_url(QueueName=queue["dead_letter_queue"])
    # Seed 004 is served by the approval handler, with everything it needs to start.
    assert queues[1]["default_handler"] == "approval"
    assert json.loads(exported["BROKER_HANDLERS"]) == [
        "handlers.seeds:router",
        "handlers.approval:router",
    ]
    assert exported["BROKER_DECISION_TOPIC"].endswith(":local-decisions")
    assert len(json.loads(exported["BROKER_DECISION_KEYS"])) == 1
    assert exported["BROKER_DECISION_BASE_URL"] == "http://127.0.0.1:8081"


def test_executions_get_unique_names(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    machine = seed_flows.state_machines["verification"]
    same_input = [{"same": True}] * 3
    arns = start_executions(aws, machine, same_input, name_prefix="dup") + start_executions(
        aws, machine, same_input, name_prefix="dup"
    )
    assert len(set(arns)) == 6
    listed = aws.client("stepfunctions").list_executions(stateMachineArn=machine)["executions"]
    assert {e["executionArn"] for e in listed} == set(arns)


def test_wait_returns_running_executions_at_timeout(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    [arn] = start_executions(
        aws, seed_flows.state_machines["callback"], [{"n": 1}], name_prefix="never"
    )
    began = time.monotonic()
    result = wait_for_executions(aws, [arn], timeout_s=0.6, poll_interval_s=0.1)[arn]
    elapsed = time.monotonic() - began
    assert 0.6 <= elapsed < 3
    assert (result.status, result.output, result.stopped_at) == ("RUNNING", None, None)
    assert (result.error, result.cause) == (None, None)


# --- the three seed flows ---------------------------------------------------------------


def test_callback_flow_succeeds_and_fails(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    inputs = [{"order": 1, "approve": True}, {"order": 2, "approve": False}]
    arns = start_executions(aws, seed_flows.state_machines["callback"], inputs, name_prefix="cb")

    def decide(_message: dict[str, Any], body: dict[str, Any]) -> Any:
        if body["input"]["approve"]:
            return {"approved": body["input"]["order"]}
        return Fail("Demo.Rejected", f"order {body['input']['order']} rejected")

    messages = consume(
        aws, seed_flows.queues["callback"], count=2, token_field="MyTaskToken", decide=decide
    )
    bodies = [json.loads(m["Body"]) for m in messages]
    assert all(set(body) == {"input", "MyTaskToken"} for body in bodies)
    assert sorted((b["input"] for b in bodies), key=lambda i: i["order"]) == inputs

    results = wait_for_executions(aws, arns, timeout_s=10)
    assert list(results) == arns
    ok, rejected = results[arns[0]], results[arns[1]]
    assert (ok.status, ok.output, ok.error) == ("SUCCEEDED", {"approved": 1}, None)
    assert ok.stopped_at is not None
    assert ok.stopped_at >= ok.started_at
    assert (rejected.status, rejected.output, rejected.error) == ("FAILED", None, "Demo.Rejected")
    # moto drops `cause` (its SendTaskFailure handler never reads it). If this starts
    # failing, moto has fixed it: update the design notes and this assertion.
    assert rejected.cause is None


def test_verification_flow_succeeds_and_fails(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    inputs = [{"user": "ada", "document": "passport"}, {"user": "bob", "document": "none"}]
    arns = start_executions(
        aws, seed_flows.state_machines["verification"], inputs, name_prefix="verify"
    )

    def decide(_message: dict[str, Any], body: dict[str, Any]) -> Any:
        payload = body["Payload"]
        if payload["document"] == "none":
            return Fail("Verification.NoDocument", payload["user"])
        return {"verified": payload["user"]}

    messages = consume(
        aws, seed_flows.queues["verification"], count=2, token_field="TaskToken", decide=decide
    )
    assert all(set(json.loads(m["Body"])) == {"Payload", "TaskToken"} for m in messages)

    results = wait_for_executions(aws, arns, timeout_s=10)
    assert (results[arns[0]].status, results[arns[0]].output) == (
        "SUCCEEDED",
        {"verified": "ada"},
    )
    assert (results[arns[1]].status, results[arns[1]].error) == (
        "FAILED",
        "Verification.NoDocument",
    )


def test_transactions_flow_carries_type_as_message_attribute(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    inputs = [
        {"TransactionType": "PURCHASE", "amount": 30},
        {"TransactionType": "REFUND", "amount": 12},
    ]
    arns = start_executions(
        aws, seed_flows.state_machines["transactions"], inputs, name_prefix="tx"
    )

    def decide(message: dict[str, Any], body: dict[str, Any]) -> Any:
        kind = message["MessageAttributes"]["type"]["StringValue"]
        if kind == "refund":
            return Fail("Refund.Declined", f"amount {body['input']['amount']}")
        return {"charged": body["input"]["amount"]}

    messages = consume(
        aws, seed_flows.queues["transactions"], count=2, token_field="TaskToken", decide=decide
    )
    by_type = {json.loads(m["Body"])["input"]["TransactionType"]: m for m in messages}
    assert set(by_type) == {"PURCHASE", "REFUND"}
    for transaction_type, message in by_type.items():
        assert message["MessageAttributes"] == {
            "type": {"DataType": "String", "StringValue": transaction_type.lower()}
        }
        # The type travels only as an attribute: the body is the seed's shape.
        assert set(json.loads(message["Body"])) == {"input", "TaskToken"}

    results = wait_for_executions(aws, arns, timeout_s=10)
    purchase, refund = results[arns[0]], results[arns[1]]
    assert (purchase.status, purchase.output) == ("SUCCEEDED", {"charged": 30})
    assert (refund.status, refund.error) == ("FAILED", "Refund.Declined")


def test_transactions_flow_fails_unknown_type_without_a_message(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    [arn] = start_executions(
        aws,
        seed_flows.state_machines["transactions"],
        [{"TransactionType": "CHARGEBACK"}],
        name_prefix="unknown",
    )
    result = wait_for_executions(aws, [arn], timeout_s=10)[arn]
    # AWS names this States.NoChoiceMatched; moto says States.Runtime. Unlike a
    # SendTaskFailure, an engine failure keeps its cause.
    assert (result.status, result.error) == ("FAILED", "States.Runtime")
    assert result.cause is not None
    assert "No branching option" in result.cause
    assert queue_depth(aws, seed_flows.queues["transactions"]) == (0, 0)


def test_second_completion_answers_invalid_token(aws: EmbeddedAws, seed_flows: SeedFlows) -> None:
    [arn] = start_executions(
        aws, seed_flows.state_machines["verification"], [{"x": 1}], name_prefix="twice"
    )
    [message] = consume(
        aws,
        seed_flows.queues["verification"],
        count=1,
        token_field="TaskToken",
        decide=lambda _m, _b: {"first": True},
    )
    token = json.loads(message["Body"])["TaskToken"]
    sfn = aws.client("stepfunctions")
    # AWS answers TaskTimedOut here; moto (like LocalStack) answers InvalidToken.
    with pytest.raises(ClientError) as raised:
        sfn.send_task_success(taskToken=token, output=json.dumps({"second": True}))
    assert raised.value.response["Error"]["Code"] == "InvalidToken"
    result = wait_for_executions(aws, [arn], timeout_s=10)[arn]
    assert result.output == {"first": True}


@pytest.mark.parametrize(
    ("output", "described"),
    [("ok", "ok"), ('say "hi"', 'say "hi"'), ([1, 2], [1, 2]), (None, None)],
)
def test_non_object_outputs_survive_describe(
    aws: EmbeddedAws, seed_flows: SeedFlows, output: Any, described: Any
) -> None:
    # moto answers DescribeExecution with a JSON string output bare (`ok`, not `"ok"`),
    # and without `output` for null; through a Pass state as here, or not.
    [arn] = start_executions(
        aws, seed_flows.state_machines["callback"], [{"n": 1}], name_prefix="bare"
    )
    consume(
        aws,
        seed_flows.queues["callback"],
        count=1,
        token_field="MyTaskToken",
        decide=lambda _m, _b: output,
    )
    result = wait_for_executions(aws, [arn], timeout_s=10)[arn]
    assert (result.status, result.output) == ("SUCCEEDED", described)


# --- environment for a broker process ---------------------------------------------------


def test_aws_env_lets_a_default_client_reach_the_emulator(
    aws_env: dict[str, str], seed_flows: SeedFlows
) -> None:
    # Endpoint, region and credentials all from the environment, as in a broker process.
    sqs: Any = botocore.session.get_session().create_client("sqs")
    assert sqs.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    queues = [*seed_flows.queues.values(), seed_flows.inbox_url]
    assert sorted(sqs.list_queues()["QueueUrls"]) == sorted(queues)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AWS_PROFILE", "no-such-profile"),
        ("AWS_DEFAULT_PROFILE", "no-such-profile"),
        ("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:9"),
    ],
)
def test_aws_env_clears_the_users_own_aws_setup(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # Set before aws_env applies broker.local.env.AWS_OVERRIDES, as a user's shell would.
    monkeypatch.setenv(name, value)
    aws_env: dict[str, str] = request.getfixturevalue("aws_env")
    seed_flows: SeedFlows = request.getfixturevalue("seed_flows")
    sqs: Any = botocore.session.get_session().create_client("sqs")
    assert sqs.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    queues = [*seed_flows.queues.values(), seed_flows.inbox_url]
    assert sorted(sqs.list_queues()["QueueUrls"]) == sorted(queues)


async def test_aioboto3_completes_a_callback_under_aws_env(
    aws: EmbeddedAws, aws_env: dict[str, str], seed_flows: SeedFlows
) -> None:
    [arn] = start_executions(
        aws,
        seed_flows.state_machines["transactions"],
        [{"TransactionType": "PURCHASE"}],
        name_prefix="aio",
    )
    queue_url = seed_flows.queues["transactions"]
    session = aioboto3.Session()
    async with session.client("sqs") as sqs, session.client("stepfunctions") as sfn:
        messages: list[Any] = []
        deadline = time.monotonic() + 10
        while not messages and time.monotonic() < deadline:
            response = await sqs.receive_message(
                QueueUrl=queue_url, WaitTimeSeconds=1, MessageAttributeNames=["type"]
            )
            messages = response.get("Messages", [])
        assert len(messages) == 1
        body = json.loads(messages[0]["Body"])
        await sfn.send_task_success(
            taskToken=body["TaskToken"],
            output=json.dumps({"type": messages[0]["MessageAttributes"]["type"]["StringValue"]}),
        )
        deleted = await sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": "0", "ReceiptHandle": messages[0]["ReceiptHandle"]}],
        )
        assert [entry["Id"] for entry in deleted["Successful"]] == ["0"]
    result = wait_for_executions(aws, [arn], timeout_s=10)[arn]
    assert (result.status, result.output) == ("SUCCEEDED", {"type": "purchase"})


# --- throughput (reported, not asserted: moto proves correctness, not speed) ------------


def test_callback_flow_completes_a_hundred_executions(
    aws: EmbeddedAws, seed_flows: SeedFlows, record_property: Callable[[str, object], None]
) -> None:
    count = 100
    stop = threading.Event()
    handled = 0

    def worker() -> None:
        nonlocal handled
        sqs = aws.client("sqs")
        sfn = aws.client("stepfunctions")
        queue_url = seed_flows.queues["callback"]
        while not stop.is_set():
            response = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in response.get("Messages", []):
                body = json.loads(message["Body"])
                sfn.send_task_success(
                    taskToken=body["MyTaskToken"], output=json.dumps({"n": body["input"]["n"]})
                )
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                handled += 1

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        arns = start_executions(
            aws,
            seed_flows.state_machines["callback"],
            [{"n": n} for n in range(count)],
            name_prefix="bulk",
        )
        results = wait_for_executions(aws, arns, timeout_s=120)
    finally:
        stop.set()
        thread.join(timeout=5)
    elapsed = time.monotonic() - began

    assert [results[arn].status for arn in arns] == ["SUCCEEDED"] * count
    assert [results[arn].output for arn in arns] == [{"n": n} for n in range(count)]
    assert handled == count
    rate = count / elapsed
    record_property("completions_per_second", round(rate, 1))
    print(f"\n{count} callback executions in {elapsed:.2f} s: {rate:.1f} completions/s")
