"""Each deploy example starts as written: ``broker check`` passes and ``broker run`` gets
ready with its settings, against moto holding exactly the resources the example names.

The settings are the example's own (the image's ENV under them, the Kubernetes Secret /
ECS secret with a fresh key, ``REGION`` and ``ACCOUNT`` filled in); only what cannot be
the same on a test machine is replaced: the AWS endpoint (moto) and the two ports (free
ones, since tests run side by side).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from broker.decisions.links import new_key
from broker.local.moto import EmbeddedAws
from tests.cli import clean_env, free_port, run_cli
from tests.deploy.test_deploy import ROOT, ecs_env, image_env, k8s_env

_REGION: Final = "us-east-1"
_ACCOUNT: Final = "123456789012"  # moto's default account
_READY_TIMEOUT_S: Final = 60
_LOOPBACK: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def compose_env() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env: dict[str, Any] = compose["services"]["broker"]["environment"]
    return {name: str(value) for name, value in env.items()}


def with_keys(env_of: Callable[[], dict[str, str]]) -> Callable[[], dict[str, str]]:
    """The example's environment with the keys its Secret / secret holds."""
    return lambda: {**env_of(), "BROKER_DECISION_KEYS": json.dumps([new_key()])}


EXAMPLES: Final = {
    "kubernetes": with_keys(k8s_env),
    "ecs": with_keys(ecs_env),
    "compose": compose_env,
}


def filled(value: str) -> str:
    return value.replace("REGION", _REGION).replace("ACCOUNT", _ACCOUNT)


def example_env(example: dict[str, str], aws: EmbeddedAws) -> dict[str, str]:
    env = clean_env(**{**image_env(), **{k: filled(v) for k, v in example.items()}})
    env.update(aws.env())  # moto's endpoint, its region, dummy credentials
    env["BROKER_HTTP_PORT"] = str(free_port())
    if "BROKER_DECISION_PORT" in env:
        env["BROKER_DECISION_PORT"] = str(free_port())
    return env


def create_what_it_names(aws: EmbeddedAws, env: dict[str, str]) -> None:
    """The example's queues, dead-letter queues and topic; nothing else (activities
    marked create_if_missing are the broker's to create)."""
    sqs = aws.client("sqs")
    for queue in json.loads(env["BROKER_QUEUES"]):
        for name in (queue["name"], queue.get("dead_letter_queue")):
            if name:
                sqs.create_queue(QueueName=name)
    topic = env.get("BROKER_DECISION_TOPIC")
    if topic:
        arn = aws.client("sns").create_topic(Name=topic.rsplit(":", 1)[-1])["TopicArn"]
        assert arn == topic or topic == arn.rsplit(":", 1)[-1], (arn, topic)


def readyz(port: str) -> int:
    try:
        with _LOOPBACK.open(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code
    except (urllib.error.URLError, ConnectionError):
        return 0


def runs_until_ready(env: dict[str, str], tmp_path: Path) -> str:
    """``broker run`` until /readyz answers 200, then SIGTERM; its log."""
    log_path = tmp_path / "broker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while readyz(env["BROKER_HTTP_PORT"]) != 200:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return log_path.read_text()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_checks_and_gets_ready_on_what_it_names(
    name: str, aws: EmbeddedAws, tmp_path: Path
) -> None:
    env = example_env(EXAMPLES[name](), aws)
    create_what_it_names(aws, env)
    checked = run_cli("check", env=env, cwd=ROOT)
    assert checked.returncode == 0, f"{checked.stdout}\n{checked.stderr}"
    assert "; 0 problems" in checked.stdout, checked.stdout
    runs_until_ready(env, tmp_path)


def test_a_topic_no_handler_publishes_to_is_not_looked_up(aws: EmbeddedAws, tmp_path: Path) -> None:
    """The examples as they were: BROKER_DECISION_TOPIC set, only the seed handlers (no
    notify=True route) and no such topic: nothing needs it, so nothing stops."""
    example = {**k8s_env(), "BROKER_HANDLERS": '["handlers.seeds:router"]'}
    env = example_env(example, aws)
    create_what_it_names(aws, {**env, "BROKER_DECISION_TOPIC": ""})
    checked = run_cli("check", env=env, cwd=ROOT)
    assert checked.returncode == 0, f"{checked.stdout}\n{checked.stderr}"
    assert "not looked up (no handler has notify=True)" in checked.stdout, checked.stdout
    log = runs_until_ready(env, tmp_path)
    assert "no handler has notify=True" in log, log
