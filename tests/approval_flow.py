"""Seed 004 for real, shared by the moto and LocalStack suites: ``broker run`` as a process
with ``handlers.approval``, the links arriving through SNS in the inbox queue, and each
answer of the decision endpoint over real HTTP."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from broker.decisions.links import DecisionKeys, LinkCodec, new_key
from broker.local.endpoint import AwsEndpoint
from broker.local.executions import (
    ExecutionResult,
    describe_execution,
    start_executions,
    wait_for_executions,
)
from broker.local.flows import APPROVAL_HANDLERS, SeedFlows, seed_queue_settings
from tests.cli import clean_env
from tests.localstack.broker_process import BrokerProcess, broker_process, wait_until

_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class ApprovalBroker:
    process: BrokerProcess
    codec: LinkCodec


@contextmanager
def approval_broker(aws: AwsEndpoint, flows: SeedFlows, cwd: Path) -> Iterator[ApprovalBroker]:
    """``broker run`` serving seed 004's queue with the approval handler, its decision
    listener on a free loopback port; the codec opens (and forges) its links."""
    key, port = new_key(), free_port()
    base_url = f"http://127.0.0.1:{port}"
    [verification] = [row for row in seed_queue_settings(flows) if "verification" in row["name"]]
    env = clean_env(
        **aws.env(),
        BROKER_QUEUES=json.dumps([{**verification, "wait_time_s": 2}]),
        BROKER_HANDLERS=json.dumps([APPROVAL_HANDLERS]),
        BROKER_DECISION_TOPIC=flows.topic_arn,
        BROKER_DECISION_KEYS=json.dumps([key]),
        BROKER_DECISION_BASE_URL=base_url,
        BROKER_DECISION_HOST="127.0.0.1",
        BROKER_DECISION_PORT=str(port),
        BROKER_DELETE_LINGER_S="0.02",
    )
    with broker_process(env, cwd) as process:
        wait_until(lambda: _accepts(port), "the decision listener", 15)
        yield ApprovalBroker(process, LinkCodec(DecisionKeys.parse([key]), base_url))


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: str


def http(method: str, url: str) -> Reply:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with _OPENER.open(request, timeout=15) as reply:
            return Reply(reply.status, dict(reply.headers), reply.read().decode())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read().decode())


def read_notifications(aws: AwsEndpoint, inbox_url: str, count: int) -> list[dict[str, Any]]:
    """``count`` messages from the inbox queue (raw delivery: the ``default`` documents)."""
    sqs = aws.client("sqs")
    documents: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(documents) < count:
        assert time.monotonic() < deadline, f"{len(documents)} of {count} notifications came"
        received = sqs.receive_message(
            QueueUrl=inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        for message in received.get("Messages", ()):
            documents.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=inbox_url, ReceiptHandle=message["ReceiptHandle"])
    return documents


def _status(aws: AwsEndpoint, arn: str) -> str:
    return describe_execution(aws.client("stepfunctions"), arn).status


def run_approval_scenario(aws: AwsEndpoint, flows: SeedFlows, cwd: Path) -> None:
    """Three approvals: one approved, one rejected, one only looked at; every answer."""
    machine = flows.state_machines["verification"]
    inputs = [{"subject": f"Order {n}", "order": n} for n in range(3)]
    arns = start_executions(aws, machine, inputs, name_prefix="approval")
    with approval_broker(aws, flows, cwd) as broker:
        by_order = {
            json.loads(document["details"])["order"]: document
            for document in read_notifications(aws, flows.inbox_url, 3)
        }
        approved, rejected, looked_at = (by_order[n] for n in range(3))
        codec = broker.codec
        for document in by_order.values():
            _no_token_in(document, codec)

        # GET shows the page and decides nothing, on both links (a mail scanner's visit).
        for url in (approved["approve_url"], approved["reject_url"], looked_at["approve_url"]):
            page = http("GET", url)
            assert page.status == 200, page
            assert page.headers["Content-Type"].startswith("text/html")
            assert '<form method="post"' in page.body
            assert page.headers["Cache-Control"] == "no-store"
            assert page.headers["X-Frame-Options"] == "DENY"
        assert "Order 0" in http("GET", approved["approve_url"]).body
        time.sleep(1)
        assert [_status(aws, arn) for arn in arns] == ["RUNNING"] * 3

        assert http("POST", approved["approve_url"]).status == 200
        assert http("POST", rejected["reject_url"]).status == 200
        results = wait_for_executions(aws, arns[:2], timeout_s=30)
        _assert_approved(results[arns[0]])
        ended = results[arns[1]]
        assert (ended.status, ended.error) == ("FAILED", "Approval.Rejected"), ended

        # The same link again, or its sibling: already decided.
        assert http("POST", approved["approve_url"]).status == 409
        assert http("POST", rejected["approve_url"]).status == 409
        # Both emulators answer SendTaskFailure for a closed task with 200 (and change
        # nothing), where AWS answers TaskTimedOut; a broker that decided the task
        # answers 409 from memory, another replica asks: only the execution's state is
        # checked here.
        sibling = http("POST", approved["reject_url"])
        assert sibling.status in (200, 409), sibling
        assert _status(aws, arns[0]) == "SUCCEEDED"

        # A changed character: refused before anything is decrypted into a decision.
        url = looked_at["approve_url"]
        at = len(url) - 10
        tampered = url[:at] + ("A" if url[at] != "A" else "B") + url[at + 1 :]
        assert http("POST", tampered).status == 403
        # A link of another key: refused alike.
        stranger = LinkCodec(DecisionKeys.parse([new_key()]), codec_base(url))
        assert http("POST", stranger.make(codec.open(codec.blob_of(url)))).status == 403
        # The real token, sealed with the right key, but expired: 410, nothing sent.
        link = codec.open(codec.blob_of(url))
        expired = dataclasses.replace(link, expires_at=datetime.now(UTC) - timedelta(hours=1))
        assert http("POST", codec.make(expired)).status == 410
        assert http("GET", codec.make(expired)).status == 410
        time.sleep(1)
        assert _status(aws, arns[2]) == "RUNNING"
        assert "Traceback" not in broker.process.log
        # The log names tasks by reference only: never a token, never a link.
        for document in by_order.values():
            assert codec.blob_of(document["approve_url"]) not in broker.process.log
            assert codec.open(codec.blob_of(document["approve_url"])).token not in (
                broker.process.log
            )


def codec_base(url: str) -> str:
    return url.rpartition("/decisions/")[0]


def _assert_approved(result: ExecutionResult) -> None:
    assert result.status == "SUCCEEDED", result
    assert result.output["approved"] is True
    assert set(result.output) == {"approved", "decided_at"}
    decided_at = datetime.fromisoformat(result.output["decided_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - decided_at).total_seconds()) < 120


def _no_token_in(document: dict[str, Any], codec: LinkCodec) -> None:
    token = codec.open(codec.blob_of(document["approve_url"])).token
    text = json.dumps(document)
    for form in (token, urllib.parse.quote(token, safe=""), urllib.parse.quote_plus(token)):
        assert form not in text
        assert form not in document["approve_url"]
