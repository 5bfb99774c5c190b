"""Decision links end to end on the embedded moto server, ``broker run`` as a process.

The seed-004 flow (``{"Payload", "TaskToken"}``) with a minimal approval handler
(``decision_plugin``): GET leaves the execution running, POST approve succeeds it, POST
reject fails it with ``Approval.Rejected``, a second decision answers 409, a tampered
link 403, an expired one 410, a link of an unknown key 403, and links made before a key
rotation still decide after it.  No token, whole or URL-encoded, and no link in any
log line or metric of the run.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from broker.decisions.links import DecisionKeys, DecisionLink, LinkCodec, new_key
from broker.local.executions import describe_execution, start_executions, wait_for_executions
from broker.local.flows import SeedFlows, queue_name
from broker.local.moto import EmbeddedAws
from tests.cli import clean_env

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    def __init__(self, aws: EmbeddedAws, flows: SeedFlows, cwd: Path, keys: list[str]) -> None:
        self.decision_port, self.http_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.decision_port}"
        queue = {
            "name": queue_name(flows.queues["verification"]),
            "token_fields": ["TaskToken"],
            "payload_fields": ["Payload"],
            "default_handler": "approval-test",
            "type_attribute": None,
            "type_field": None,
            "wait_time_s": 1,
        }
        env = clean_env(
            **aws.env(),
            BROKER_QUEUES=json.dumps([queue]),
            BROKER_HANDLERS='["tests.integration.decision_plugin:router"]',
            BROKER_ENTRY_POINTS="false",
            BROKER_DECISION_KEYS=json.dumps(keys),
            BROKER_DECISION_BASE_URL=self.base,
            BROKER_DECISION_HOST="127.0.0.1",
            BROKER_DECISION_PORT=str(self.decision_port),
            BROKER_HTTP_PORT=str(self.http_port),
            BROKER_LOG_FORMAT="json",
            BROKER_LOG_LEVEL="DEBUG",
            DECISION_TEST_LINKS=str(cwd / "links.jsonl"),
            PYTHONPATH=str(ROOT),
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                with socket.create_connection(("127.0.0.1", self.decision_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the decision listener did not come up")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics") as reply:
            return str(reply.read().decode())

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, stderr
        return str(stderr)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def request(method: str, url: str) -> tuple[int, str]:
    data = b"" if method == "POST" else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method)) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_links(path: Path, cases: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            found = {row["case"]: row for row in map(json.loads, path.read_text().splitlines())}
            if cases <= set(found):
                return found
        time.sleep(0.2)
    raise AssertionError(f"links for {cases} not written in {timeout_s}s")


def status(aws: EmbeddedAws, arn: str) -> str:
    return describe_execution(aws.client("stepfunctions"), arn).status


def test_decision_links_decide_executions_on_moto(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    old, new = new_key(), new_key()
    cases = ["approve", "reject", "get-only", "expired", "rotated"]
    inputs: list[dict[str, Any]] = [{"case": c, "details": "<b>100 EUR</b>"} for c in cases]
    inputs[3]["ttl_s"] = 1
    arns = dict(
        zip(
            cases,
            start_executions(
                aws, seed_flows.state_machines["verification"], inputs, name_prefix="decide"
            ),
            strict=True,
        )
    )
    stderr = []
    first = BrokerProcess(aws, seed_flows, tmp_path, [old])
    try:
        links = wait_for_links(tmp_path / "links.jsonl", set(cases))
        # GET (a mail scanner, or the person reading): the page, nothing decided.
        code, page = request("GET", links["approve"]["approve"])
        assert code == 200
        assert "&lt;b&gt;100 EUR&lt;/b&gt;" in page
        assert '<form method="post">' in page
        assert request("GET", links["get-only"]["reject"])[0] == 200
        assert request("HEAD", links["get-only"]["approve"])[0] == 200
        time.sleep(1)
        assert status(aws, arns["approve"]) == "RUNNING"
        assert status(aws, arns["get-only"]) == "RUNNING"

        assert request("POST", links["approve"]["approve"])[0] == 200
        results = wait_for_executions(aws, [arns["approve"]], timeout_s=30)
        approved = results[arns["approve"]]
        assert approved.status == "SUCCEEDED"
        assert approved.output["approved"] is True
        assert approved.output["case"] == "approve"
        assert approved.output["decided_at"].endswith("+00:00")

        assert request("POST", links["reject"]["reject"])[0] == 200
        rejected = wait_for_executions(aws, [arns["reject"]], timeout_s=30)[arns["reject"]]
        assert (rejected.status, rejected.error) == ("FAILED", "Approval.Rejected")

        # A second decision: this broker decided these tasks, so it knows them closed
        # and answers 409 without a call (elsewhere Step Functions would answer the
        # closed token: moto InvalidToken, AWS TaskTimedOut).
        assert request("POST", links["approve"]["approve"])[0] == 409
        assert request("POST", links["reject"]["approve"])[0] == 409
        # moto (like LocalStack) accepts a SendTaskFailure on a task already closed,
        # where AWS answers TaskTimedOut; the broker's memory answers first.
        assert request("POST", links["approve"]["reject"])[0] == 409
        assert status(aws, arns["approve"]) == "SUCCEEDED"

        blob = links["get-only"]["approve"].rsplit("/", 1)[1]
        tampered = f"{first.base}/decisions/{blob[:10]}{'A' if blob[10] != 'A' else 'B'}{blob[11:]}"
        assert request("POST", tampered)[0] == 403
        assert request("GET", tampered)[0] == 403
        stranger = LinkCodec(DecisionKeys.parse([new_key()]), first.base).make(
            DecisionLink("any-token", "approve", approved.started_at, output={})
        )
        assert request("POST", stranger)[0] == 403

        time.sleep(1.5)  # the "expired" case's links lived 1 s
        assert request("GET", links["expired"]["approve"])[0] == 410
        assert request("POST", links["expired"]["approve"])[0] == 410
        assert status(aws, arns["expired"]) == "RUNNING"
        metrics = first.metrics()
        assert 'broker_decisions_total{action="approve",status="approved"} 1.0' in metrics
        assert 'broker_messages_total{outcome="deferred",queue="' in metrics
        assert 'type="approval-test"} 5.0' in metrics
        stderr.append(first.stop())
    finally:
        first.kill()

    # Rotation: a new key first, the old one kept; links made before still decide.
    second = BrokerProcess(aws, seed_flows, tmp_path, [new, old])
    try:
        # The same public link; this replica listens on another port.
        moved = links["rotated"]["approve"].replace(first.base, second.base)
        assert request("POST", moved)[0] == 200
        rotated = wait_for_executions(aws, [arns["rotated"]], timeout_s=30)[arns["rotated"]]
        assert rotated.status == "SUCCEEDED"
        assert status(aws, arns["get-only"]) == "RUNNING"
        metrics += second.metrics()
        stderr.append(second.stop())
    finally:
        second.kill()
    sfn = aws.client("stepfunctions")
    for case in ("get-only", "expired"):
        sfn.stop_execution(executionArn=arns[case])

    # One event per answer, and never a token or a link in the logs or the metrics.
    events = [
        json.loads(line)
        for text in stderr
        for line in text.splitlines()
        if line.startswith("{") and '"event":"decision"' in line
    ]
    assert [e["status"] for e in events if e["action"] == "approve"].count("approved") == 2
    codec = LinkCodec(DecisionKeys.parse([new, old]), first.base)
    everything = "\n".join([*stderr, metrics])
    for row in links.values():
        for url in (row["approve"], row["reject"]):
            blob = url.rsplit("/", 1)[1]
            token = codec.open(blob).token
            for secret in (token, quote(token, safe=""), quote_plus(token), blob):
                assert secret not in everything
