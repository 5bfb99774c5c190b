"""A real ``broker run`` on the embedded moto server against hostile handlers (issue 21,
invariants 1 and 3): ``sys.exit()`` in a handler does not exit the process; SIGTERM
with a handler that ignores its cancellation exits within the documented bound
(``shutdown_grace_s`` + 15 s); a second SIGTERM exits at once."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.local.moto import EmbeddedAws
from broker.shutdown import DRAIN_AFTER_GRACE_S
from tests.cli import clean_env
from tests.localstack.broker_process import BrokerProcess, broker_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 2


@contextmanager
def hostile_broker(
    aws: EmbeddedAws, tmp_path: Path, grace_s: float = GRACE_S
) -> Iterator[tuple[BrokerProcess, str, Path]]:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=f"hostile-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    runs = tmp_path / "runs.log"
    env = clean_env(
        **aws.env(),
        BROKER_QUEUES=json.dumps([{"name": url, "wait_time_s": 1}]),
        BROKER_HANDLERS='["tests.integration.hostile_plugin:router"]',
        BROKER_ENTRY_POINTS="false",
        BROKER_MAX_ATTEMPTS="1",
        BROKER_SHUTDOWN_GRACE_S=str(grace_s),
        BROKER_LOG_FORMAT="text",
        HOSTILE_TEST_RUNS=str(runs),
        PYTHONPATH=str(ROOT),
    )
    with broker_process(env, tmp_path) as broker:
        yield broker, url, runs


def send(aws: EmbeddedAws, url: str, message_type: str) -> None:
    body = {"TaskToken": f"token-{uuid.uuid4().hex}", "type": message_type, "input": {}}
    aws.client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(body))


def started(runs: Path, kind: str) -> int:
    return runs.read_text().splitlines().count(kind) if runs.exists() else 0


def test_sys_exit_in_a_handler_fails_its_task_and_the_process_keeps_serving(
    aws: EmbeddedAws, tmp_path: Path
) -> None:
    with hostile_broker(aws, tmp_path) as (broker, url, runs):
        for _ in range(3):
            send(aws, url, "exits")
        send(aws, url, "interrupts")
        wait_until(lambda: started(runs, "exits") == 3, "three sys.exit() runs", 30)
        wait_until(lambda: started(runs, "interrupts") == 1, "a KeyboardInterrupt run", 30)
        send(aws, url, "ok")
        wait_until(lambda: started(runs, "ok") == 1, "the good handler after them", 30)
        wait_until(lambda: broker.log.count("SystemExit") >= 3, "three outcomes", 30)
        wait_until(lambda: "KeyboardInterrupt" in broker.log, "its outcome", 30)
        assert broker.process.poll() is None, broker.log
        # The process's own interrupt still stops it: a drain, exit 0.
        broker.process.send_signal(signal.SIGINT)
        broker.process.wait(timeout=30)
    assert broker.process.returncode == 0, broker.log
    assert "SIGINT received: draining" in broker.log
    assert "Traceback" not in broker.log


def test_sigterm_with_a_handler_ignoring_its_cancellation_exits_within_the_bound(
    aws: EmbeddedAws, tmp_path: Path
) -> None:
    with hostile_broker(aws, tmp_path) as (broker, url, runs):
        send(aws, url, "stubborn")
        wait_until(lambda: started(runs, "stubborn") == 1, "the stubborn handler", 30)
        signalled = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        broker.process.wait(timeout=GRACE_S + DRAIN_AFTER_GRACE_S + 10)
        took_s = time.monotonic() - signalled
    assert took_s < GRACE_S + DRAIN_AFTER_GRACE_S, (took_s, broker.log)
    assert broker.process.returncode == 0, broker.log
    assert started(runs, "stubborn cancelled") >= 1
    assert "abandoned" in broker.log


def test_a_second_sigterm_exits_at_once(aws: EmbeddedAws, tmp_path: Path) -> None:
    with hostile_broker(aws, tmp_path, grace_s=20) as (broker, url, runs):
        send(aws, url, "stubborn")
        wait_until(lambda: started(runs, "stubborn") == 1, "the stubborn handler", 30)
        broker.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining" in broker.log, "the drain to begin", 10)
        signalled = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        broker.process.wait(timeout=30)
        took_s = time.monotonic() - signalled
    # At once: the drain alone would last the 20 s grace (the handler runs on).
    assert took_s < 3, (took_s, broker.log)
    assert "received again: stopping now" in broker.log


def test_sigterm_while_a_handler_blocks_the_event_loop_exits_at_the_bound(
    aws: EmbeddedAws, tmp_path: Path
) -> None:
    with hostile_broker(aws, tmp_path) as (broker, url, runs):
        send(aws, url, "blocks")
        wait_until(lambda: started(runs, "blocks") == 1, "the blocking handler", 30)
        signalled = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        broker.process.wait(timeout=GRACE_S + DRAIN_AFTER_GRACE_S + 10)
        took_s = time.monotonic() - signalled
    # The watchdog, armed by the signal itself while the loop was blocked, ends it.
    assert took_s < GRACE_S + DRAIN_AFTER_GRACE_S + 2, (took_s, broker.log)
    assert broker.process.returncode == 1, broker.log
    assert "drain still running" in broker.log


def test_a_second_sigterm_exits_at_once_while_a_handler_blocks_the_event_loop(
    aws: EmbeddedAws, tmp_path: Path
) -> None:
    with hostile_broker(aws, tmp_path, grace_s=20) as (broker, url, runs):
        send(aws, url, "blocks")
        wait_until(lambda: started(runs, "blocks") == 1, "the blocking handler", 30)
        broker.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        signalled = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        broker.process.wait(timeout=60)
        took_s = time.monotonic() - signalled
    assert took_s < 3, (took_s, broker.log)
    assert "received again: stopping now" in broker.log
