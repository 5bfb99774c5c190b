"""``idempotent=True`` across two ``broker run`` processes on the embedded moto server.

The seed callback flow sends one message per execution to its queue; the test takes
each one from there and sends it twice to the queue the two brokers share (the
duplicates a standard queue may deliver, here certain).  Replica A reaches AWS through
``HoldingEndpoint``, which holds its SendTaskSuccess calls.  Once A has no free slot
(each is inside a held completion, or a copy waiting in-process for one), every
handler run A began has made its side effect and had its verdict recorded in the
table, A is SIGKILLed: between the handler's return and the completion Step Functions
never got.  Its messages come back to replica B after their visibility timeout.  The
handler appends one line per side effect to a shared file: each token must be there
once.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Any

from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from tests.cli import clean_env, run_cli
from tests.integration.holding_endpoint import HoldingEndpoint

ROOT = Path(__file__).resolve().parents[2]
#: Executions (tokens); each message is sent twice to the brokers' queue.
TASKS = 24
COPIES = 2
#: Replica A's BROKER_CONCURRENCY, and B's (fewer, so that A fills up).
SLOTS_A = 4
SLOTS_B = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Replica:
    """One ``broker run`` with its log in a file (read while it runs)."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.http_port = free_port()
        env = {**env, "BROKER_HTTP_PORT": str(self.http_port), "BROKER_HTTP_HOST": "127.0.0.1"}
        self.log_path = cwd / f"{name}.log"
        self._log: IO[str] = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_running(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while "broker running" not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text()

    def free_slots(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return sum(
            int(float(n)) for n in re.findall(r"^broker_free_slots\{.*\} (\S+)$", text, re.M)
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def create_table(aws: EmbeddedAws, cwd: Path) -> str:
    table = f"idem-{uuid.uuid4().hex[:8]}"
    created = run_cli("idempotency", "create-table", table, env=clean_env(**aws.env()), cwd=cwd)
    assert created.returncode == 0, created.stdout + created.stderr
    assert f"idempotency table {table}: created (" in created.stdout
    return table


def forward_twice(aws: EmbeddedAws, inbox: str, work: str, count: int) -> None:
    """Each message of ``inbox`` sent ``COPIES`` times to ``work`` (and taken off inbox)."""
    sqs = aws.client("sqs")
    moved, deadline = 0, time.monotonic() + 60
    while moved < count:
        assert time.monotonic() < deadline, f"only {moved} of {count} messages came"
        batch = sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in batch.get("Messages", ()):
            entries = [{"Id": str(n), "MessageBody": message["Body"]} for n in range(COPIES)]
            assert not sqs.send_message_batch(QueueUrl=work, Entries=entries).get("Failed")
            sqs.delete_message(QueueUrl=inbox, ReceiptHandle=message["ReceiptHandle"])
            moved += 1


def effect_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def a_is_quiet(
    a: Replica, holding: HoldingEndpoint, dynamodb: Any, table: str, effects: Path
) -> bool:
    """A holds no free slot, and every run A began made its effect and recorded it."""
    if not holding.held_count() or a.free_slots():
        return False
    pid = str(a.process.pid)
    lines = [line.split() for line in effect_lines(effects)]
    started = {key for kind, key, _, who in lines if kind == "start" and who == pid}
    effected = {key for kind, key, _, who in lines if kind == "effect" and who == pid}
    if started != effected:
        return False
    for key in effected:
        item = dynamodb.get_item(TableName=table, Key={"id": {"S": key}}, ConsistentRead=True)
        if item.get("Item", {}).get("state") != {"S": "done"}:
            return False
    return True


def test_two_replicas_run_each_tokens_side_effect_once_through_duplicates_and_a_kill(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    table = create_table(aws, tmp_path)
    dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
    work = sqs.create_queue(
        QueueName=f"idem-work-{uuid.uuid4().hex[:6]}",
        # Short, so that a killed replica's messages come back within seconds.
        Attributes={"VisibilityTimeout": "4"},
    )["QueueUrl"]
    effects = tmp_path / "effects.log"
    env = clean_env(
        **aws.env(),
        BROKER_QUEUES=json.dumps([{"name": work, "default_handler": "charge", "wait_time_s": 1}]),
        BROKER_HANDLERS='["tests.integration.idem_plugin:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_IDEMPOTENCY_TABLE=table,
        BROKER_RETRY_BASE_DELAY_S="0.5",
        BROKER_RETRY_MAX_DELAY_S="2",
        BROKER_LOG_FORMAT="text",
        IDEM_TEST_EFFECTS=str(effects),
        PYTHONPATH=str(ROOT),
    )
    replicas: list[Replica] = []
    with HoldingEndpoint(aws.endpoint_url, frozenset({"SendTaskSuccess"})) as holding:
        try:
            a = Replica(
                "a",
                {**env, "AWS_ENDPOINT_URL": holding.url, "BROKER_CONCURRENCY": str(SLOTS_A)},
                tmp_path,
            )
            b = Replica("b", {**env, "BROKER_CONCURRENCY": str(SLOTS_B)}, tmp_path)
            replicas += [a, b]
            a.wait_running()
            b.wait_running()
            holding.armed.set()
            arns = start_executions(
                aws,
                seed_flows.state_machines["callback"],
                [{"case": n} for n in range(TASKS)],
                name_prefix="idem",
            )
            forward_twice(aws, seed_flows.queues["callback"], work, TASKS)
            deadline, quiet = time.monotonic() + 60, 0
            while quiet < 3:  # three looks in a row, 0.2 s apart
                assert time.monotonic() < deadline, (holding.held_count(), a.log()[-3000:])
                time.sleep(0.2)
                quiet = quiet + 1 if a_is_quiet(a, holding, dynamodb, table, effects) else 0
            held_tokens = {json.loads(body)["taskToken"] for body in holding.held}
            for token in held_tokens:
                # A is inside SendTaskSuccess: the verdict was recorded before it.
                key = hashlib.sha256(token.encode()).hexdigest()
                item = dynamodb.get_item(TableName=table, Key={"id": {"S": key}})["Item"]
                assert item["state"] == {"S": "done"}, item
                assert token not in json.dumps(item)
            a.process.kill()  # SIGKILL: no drain, no hand-back
            a.process.wait(10)
            holding.let_go()
            results = wait_for_executions(aws, arns, timeout_s=120)
        finally:
            for replica in replicas:
                replica.stop()
    statuses = Counter(r.status for r in results.values())
    assert statuses == {"SUCCEEDED": TASKS}, (statuses, b.log()[-3000:])
    outputs = sorted(r.output["charged"] for r in results.values())
    assert outputs == list(range(TASKS))
    runs = [line.split()[1:] for line in effect_lines(effects) if line.startswith("effect ")]
    per_token = Counter(key for key, _, _ in runs)
    by_process = Counter(pid for _, _, pid in runs)
    print(
        f"\nidempotency: {TASKS} tokens, {TASKS * (COPIES - 1)} duplicates injected, "
        f"1 replica SIGKILLed holding {len(held_tokens)} recorded completions, "
        f"{len(runs)} side effects (by process: {dict(by_process)})"
    )
    assert len(per_token) == TASKS
    assert set(per_token.values()) == {1}, [k for k, n in per_token.items() if n > 1]
    assert "replaying its recorded verdict" in b.log()


def test_check_verifies_the_tables_key_and_ttl(aws: EmbeddedAws, tmp_path: Path) -> None:
    dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
    queue = sqs.create_queue(QueueName=f"idem-check-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    good = create_table(aws, tmp_path)
    wrong = f"idem-wrong-{uuid.uuid4().hex[:6]}"
    dynamodb.create_table(
        TableName=wrong,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def check(table: str) -> subprocess.CompletedProcess[str]:
        env = clean_env(
            **aws.env(),
            BROKER_QUEUES=json.dumps([queue]),
            BROKER_HANDLERS='["tests.integration.idem_plugin:router"]',
            BROKER_ENTRY_POINTS="false",
            BROKER_IDEMPOTENCY_TABLE=table,
            PYTHONPATH=str(ROOT),
        )
        return run_cli("check", env=env, cwd=tmp_path)

    ok = check(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"idempotency table {good}: ok (" in ok.stdout
    assert "TTL on expires_at" in ok.stdout
    assert "charge" in ok.stdout
    assert "idempotent" in ok.stdout
    bad = check(wrong)
    assert bad.returncode == 1
    assert "one string partition key 'id'" in bad.stdout
    assert "its TTL is not on 'expires_at'" in bad.stdout
    missing = check("no-such-table")
    assert missing.returncode == 1
    assert "BROKER_IDEMPOTENCY_TABLE table 'no-such-table' not found" in missing.stdout
    again = run_cli("idempotency", "create-table", good, env=clean_env(**aws.env()), cwd=tmp_path)
    assert again.returncode == 0
    assert f"idempotency table {good}: exists (" in again.stdout
    assert "Traceback" not in bad.stderr + missing.stderr + again.stderr
