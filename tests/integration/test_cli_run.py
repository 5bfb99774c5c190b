"""``broker check`` and ``broker run`` as processes against the embedded moto server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from broker._emulator import EmbeddedAws, SeedFlows, start_executions, wait_for_executions
from tests.cli import clean_env, run_cli


def broker_env(aws: EmbeddedAws, **extra: str) -> dict[str, str]:
    return clean_env(**aws.env(), **extra)


def test_check_reaches_queues_and_lists_routes(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    env = broker_env(
        aws,
        BROKER_QUEUES=f'["{seed_flows.queues["callback"].rsplit("/", 1)[-1]}"]',
        BROKER_HANDLERS='["handlers.seeds:router"]',
    )
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ": ok (" in result.stdout
    assert "verify" in result.stdout


def test_missing_queue_is_a_clear_error_not_a_traceback(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    env = broker_env(aws, BROKER_QUEUES='["no-such-queue"]')
    for command in ("check", "run"):
        result = run_cli(command, env=env, cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "no-such-queue" in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_run_completes_work_and_stops_cleanly_on_sigterm(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    env = broker_env(
        aws,
        BROKER_QUEUES=(
            f'[{{"name": "{seed_flows.queues["callback"]}", "default_handler": "callback",'
            f' "wait_time_s": 2}}]'
        ),
        BROKER_HANDLERS='["handlers.seeds:router"]',
        BROKER_ENTRY_POINTS="false",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        arns = start_executions(
            aws,
            seed_flows.state_machines["callback"],
            [{"i": i} for i in range(10)],
            name_prefix="cli",
        )
        results = wait_for_executions(aws, arns, timeout_s=60)
        assert [r.status for r in results.values()] == ["SUCCEEDED"] * 10
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 10
    assert "SIGTERM received: draining" in stderr
    assert "broker stopped: succeeded=10" in stderr


def test_redrive_command_moves_messages_back(aws: EmbeddedAws, tmp_path: Path) -> None:
    sqs = aws.client("sqs")
    source = sqs.create_queue(QueueName="redrive-source")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="redrive-source-dlq")["QueueUrl"]
    for n in range(12):
        sqs.send_message(
            QueueUrl=dlq,
            MessageBody=f'{{"n": {n}}}',
            MessageAttributes={
                "broker.source_queue": {"DataType": "String", "StringValue": "redrive-source"},
                "broker.reason": {"DataType": "String", "StringValue": "InvalidJson"},
                "trace": {"DataType": "String", "StringValue": f"t{n}"},
            },
        )
    result = run_cli("redrive", "redrive-source-dlq", env=broker_env(aws), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "moved 12 message(s) to redrive-source" in result.stdout
    received = []
    while batch := sqs.receive_message(
        QueueUrl=source, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages"):
        received.extend(batch)
    assert sorted(m["Body"] for m in received) == sorted(f'{{"n": {n}}}' for n in range(12))
    assert all(set(m["MessageAttributes"]) == {"trace"} for m in received)
    left = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]
    assert (
        int(left["ApproximateNumberOfMessages"])
        + int(left["ApproximateNumberOfMessagesNotVisible"])
        == 0
    )
