"""``broker check`` and ``broker run`` as processes against the embedded moto server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from broker.decisions.links import new_key
from broker.local.executions import start_executions, wait_for_executions
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
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


def test_check_shows_what_run_warns_about_as_a_warning(aws: EmbeddedAws, tmp_path: Path) -> None:
    sqs = aws.client("sqs")
    for name in ("check-no-dlq", "check-dlq", "check-with-dlq"):
        sqs.create_queue(QueueName=name)
    queues = ["check-no-dlq", {"name": "check-with-dlq", "dead_letter_queue": "check-dlq"}]
    env = broker_env(
        aws,
        BROKER_QUEUES=json.dumps(queues),
        BROKER_HANDLERS='["handlers.seeds:router"]',
        BROKER_ENTRY_POINTS="false",
    )
    result = run_cli("check", env=env, cwd=tmp_path)
    # A warning is not a problem: the broker starts with it, so check passes.
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (
        "queue check-no-dlq: WARNING: no dead_letter_queue setting: poison messages are left "
        "to the queue's redrive policy (the queue has been found WITHOUT one)"
    ) in lines
    assert not any(line.startswith("queue check-with-dlq: WARNING") for line in lines)
    assert (
        lines[-1] == "check: 2 queues ok, 0 activities ok, 6 handler types; 0 problems, 1 warning"
    )


def test_check_and_run_find_the_decision_topic_or_name_the_setting(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    queue = seed_flows.queues["verification"].rsplit("/", 1)[-1]
    base = {
        "BROKER_QUEUES": json.dumps([{"name": queue, "default_handler": "approval"}]),
        "BROKER_HANDLERS": '["handlers.approval:router"]',
        "BROKER_DECISION_KEYS": json.dumps([new_key()]),
        "BROKER_DECISION_BASE_URL": "https://approvals.example.com",
        "BROKER_DECISION_PORT": "0",
    }
    topic = seed_flows.topic_arn.rsplit(":", 1)[-1]
    found = run_cli("check", env=broker_env(aws, **base, BROKER_DECISION_TOPIC=topic), cwd=tmp_path)
    assert found.returncode == 0, found.stdout + found.stderr
    assert f"decision topic {topic}: ok ({seed_flows.topic_arn})" in found.stdout
    missing = broker_env(aws, **base, BROKER_DECISION_TOPIC="no-such-topic")
    for command in ("check", "run"):
        result = run_cli(command, env=missing, cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "BROKER_DECISION_TOPIC topic 'no-such-topic' not found in region us-east-1" in (
            result.stdout + result.stderr
        )
        assert "Traceback" not in result.stderr


def test_missing_queue_is_a_clear_error_not_a_traceback(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    env = broker_env(aws, BROKER_QUEUES='["no-such-queue"]')
    for command in ("check", "run"):
        result = run_cli(command, env=env, cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "queue 'no-such-queue' not found in region us-east-1 (" in (
            result.stdout + result.stderr
        )
        assert "not accessible" not in result.stdout + result.stderr
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
    sqs.send_message(
        QueueUrl=dlq,
        MessageBody="names a queue the settings do not",
        MessageAttributes={
            "broker.source_queue": {"DataType": "String", "StringValue": "redrive-elsewhere"}
        },
    )
    env = broker_env(aws, BROKER_QUEUES='["redrive-source"]')
    result = run_cli("redrive", "redrive-source-dlq", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "moved 12 message(s) to redrive-source" in result.stdout
    assert "names 'redrive-elsewhere', a queue the settings do not name" in result.stdout
    received = []
    while batch := sqs.receive_message(
        QueueUrl=source, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages"):
        received.extend(batch)
    assert sorted(m["Body"] for m in received) == sorted(f'{{"n": {n}}}' for n in range(12))
    # The originals without the broker's, plus the mark of this redrive run.
    assert all(set(m["MessageAttributes"]) == {"trace", "broker.redriven"} for m in received)
    left = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]
    assert (
        int(left["ApproximateNumberOfMessages"])
        + int(left["ApproximateNumberOfMessagesNotVisible"])
        == 1
    ), "only the copy naming another queue is left"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_healthcheck_follows_the_running_broker_and_logs_are_json(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    port = str(_free_port())
    env = broker_env(
        aws,
        BROKER_QUEUES=f'["{seed_flows.queues["callback"]}"]',
        BROKER_HANDLERS='["handlers.seeds:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_HTTP_PORT=port,
        BROKER_HTTP_HOST="127.0.0.1",
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
        deadline = time.monotonic() + 30
        while run_cli("healthcheck", "--ready", env=env, cwd=tmp_path).returncode != 0:
            assert time.monotonic() < deadline, "never ready"
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        live = run_cli("healthcheck", env=env, cwd=tmp_path)
        assert live.returncode == 0
        assert json.loads(live.stdout)["ok"] is True
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    after = run_cli("healthcheck", env=env, cwd=tmp_path)
    assert after.returncode == 1
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert events, stderr
    assert {"time", "level", "logger", "message"} <= set(events[0])
    assert any("SIGTERM received" in e["message"] for e in events)


def test_healthcheck_without_a_port_exits_1_naming_it(tmp_path: Path) -> None:
    # Docker reserves exit 2 in HEALTHCHECK: the check says "unhealthy" (1), with why.
    result = run_cli("healthcheck", env=clean_env(BROKER_HTTP_PORT="null"), cwd=tmp_path)
    assert result.returncode == 1
    assert "BROKER_HTTP_PORT" in result.stderr


def test_check_reports_activities_without_creating_them(aws: EmbeddedAws, tmp_path: Path) -> None:
    arn = aws.client("stepfunctions").create_activity(name="check-present")["activityArn"]
    activities = [
        {"name": "check-present", "handler": "verify"},
        {"name": arn, "handler": "verify", "pollers": 2},
        {"name": "check-later", "handler": "verify", "create_if_missing": True},
        {"name": "check-absent", "handler": "verify"},
    ]
    env = broker_env(
        aws,
        BROKER_ACTIVITIES=json.dumps(activities),
        BROKER_HANDLERS='["handlers.seeds:router"]',
        BROKER_ENTRY_POINTS="false",
    )
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert f"activity check-present: ok ({arn}, 1 poller(s))" in lines
    assert f"activity {arn}: ok ({arn}, 2 poller(s))" in lines
    assert "activity check-later: not found; would be created at start-up" in lines
    assert any(
        line.startswith("activity check-absent: PROBLEM: activity 'check-absent' not found")
        for line in lines
    )
    assert lines[-1] == (
        "check: 0 queues ok, 2 activities ok, 1 activity to create at start-up, "
        "6 handler types; 1 problem"
    )
    names = [a["name"] for a in aws.client("stepfunctions").list_activities()["activities"]]
    assert "check-later" not in names


def test_check_refuses_what_run_refuses(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    callback = seed_flows.queues["callback"].rsplit("/", 1)[-1]
    queues = [
        {"name": callback, "dead_letter_queue": callback},
        {"name": callback + "-other", "dead_letter_queue": "no-such-dlq"},
    ]
    aws.client("sqs").create_queue(QueueName=callback + "-other")
    activities = [{"name": "check-unrouted", "handler": "ghost", "create_if_missing": True}]
    env = broker_env(
        aws,
        BROKER_QUEUES=json.dumps(queues),
        BROKER_ACTIVITIES=json.dumps(activities),
        BROKER_HANDLERS='["handlers.seeds:router"]',
        BROKER_ENTRY_POINTS="false",
    )
    run = run_cli("run", env=env, cwd=tmp_path)
    assert run.returncode == 2
    assert "handler 'ghost' is not registered" in run.stderr

    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("settings: PROBLEM: BROKER_ACTIVITIES: activity 'check-unrouted': handler")
        for line in lines
    )
    assert any(line.startswith(f"queue {callback}: ok (") for line in lines)
    assert (
        f"queue {callback}-other: PROBLEM: dead-letter queue 'no-such-dlq' (of queue "
        f"'{callback}-other') not found in region us-east-1 ("
    ) in result.stdout
    assert "activity check-unrouted: not found; would be created at start-up" in lines
    assert lines[-1] == (
        "check: 1 queue ok, 0 activities ok, 1 activity to create at start-up, "
        "6 handler types; 2 problems"
    )
    names = [a["name"] for a in aws.client("stepfunctions").list_activities()["activities"]]
    assert "check-unrouted" not in names
