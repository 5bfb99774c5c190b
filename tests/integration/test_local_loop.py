"""``broker local`` as a handler author uses it: the README's "Try your handler locally"
section run as written on ``broker local up`` (a port of its own: tests run side by side),
with the README's plugin in a directory of the test's own; and the refusals."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.local.target import LoopbackAws
from tests.cli import free_port, run_cli
from tests.local_loop import (
    author_env,
    blocks,
    expected_endings,
    readme_section,
    run_script,
    write_plugin,
)


@dataclass
class Up:
    process: subprocess.Popen[str]
    port: int
    #: What it printed before `# ready`.
    lines: list[str]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _exported(stdout: str) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines as the shell reads them."""
    exports = {}
    for line in stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        (exports[name],) = shlex.split(value)
    return exports


def _rows(stdout: str, variable: str = "BROKER_QUEUES") -> list[Any]:
    rows: list[Any] = json.loads(_exported(stdout)[variable])
    return rows


def _start_up(command: str, cwd: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    """The README's ``broker local up`` on a free port; again on another if that port was
    taken between the probe and the bind (tests run side by side)."""
    for _ in range(3):
        port = free_port()
        process = subprocess.Popen(
            ["bash", "-c", "exec " + command.replace("broker local up", f"{UP} --port {port}")],
            env=author_env(),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            if line.startswith("# ready"):
                return process, port, lines
            lines.append(line.rstrip("\n"))
        _, err = process.communicate(timeout=10)
        assert "is not available" in err, err
    raise AssertionError("no free port for broker local up in 3 tries")


UP = "broker local up"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """The README's first-terminal command, on a free port (the README's --port)."""
    (command,) = (line for line in blocks(readme_section(), "sh")[0].splitlines() if line)
    assert command.startswith(UP + " "), command
    process, port, lines = _start_up(command, tmp_path)
    try:
        yield Up(process, port, lines)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_the_readme_loop_runs_your_plugin_on_broker_local_up(up: Up, tmp_path: Path) -> None:
    section = readme_section()
    plugin = write_plugin(section, tmp_path)
    assert plugin != "handlers"  # the author's own module, not the seed handlers
    script = blocks(section, "sh")[1]
    script = script.replace("broker local env", f"broker local env --port {up.port}")
    ran = run_script(script, env=author_env(), cwd=tmp_path, timeout_s=120)
    assert ran.returncode == 0, ran.stderr
    endings = ran.endings()
    # As the README's comments say: the handler's output, and its TaskFailed error.
    assert endings == expected_endings(script), ran.stderr
    assert endings[0] == {"status": "SUCCEEDED", "output": {"accepted": 7}}
    assert (endings[1]["status"], endings[1]["error"]) == ("FAILED", "Order.Invalid")
    # The queue came with its dead-letter queue: the broker started without a warning,
    # and `kill %1; wait` saw it drain and exit 0 (bash -e).
    assert "WARNING" not in ran.stderr, ran.stderr
    assert '"broker stopped: succeeded=1, failed=1"' in ran.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_up_prints_what_env_prints_and_stops_cleanly(
    stop: signal.Signals, up: Up, tmp_path: Path
) -> None:
    env = run_cli("local", "env", "--port", str(up.port), env=author_env(), cwd=tmp_path)
    assert env.returncode == 0, env.stderr
    assert up.lines == env.stdout.splitlines()
    assert f"export AWS_ENDPOINT_URL={up.endpoint}" in up.lines
    up.process.send_signal(stop)
    assert up.process.wait(timeout=20) == 0
    assert up.process.stderr is not None
    assert up.process.stderr.read() == f"broker local up: {stop.name}: stopped\n"


def test_start_wait_says_running_and_exits_1_at_its_timeout(up: Up, tmp_path: Path) -> None:
    env = author_env(AWS_ENDPOINT_URL=up.endpoint)
    assert run_cli("local", "deploy", "--queue", "idle", env=env, cwd=tmp_path).returncode == 0
    # No broker: nothing completes the task.
    done = run_cli(
        "local", "start", "idle", "{}", "--wait", "--timeout", "1", env=env, cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == {"status": "RUNNING", "output": None}
    started = run_cli("local", "start", "idle", '"x"', env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(r"arn:aws:states:[^:]+:\d+:execution:idle:idle-\S+\n", started.stdout)


def test_deploy_twice_is_the_same_deploy(up: Up, tmp_path: Path) -> None:
    env = author_env(AWS_ENDPOINT_URL=up.endpoint)
    args = ("local", "deploy", "--queue", "refunds", "--shape", "seed-004", "--type", "refund")
    first, second = (run_cli(*args, env=env, cwd=tmp_path) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    (line,) = first.stdout.splitlines()
    assert line.startswith("export BROKER_QUEUES=")
    (row,) = _rows(first.stdout)
    assert row == {
        "name": "refunds",
        "token_fields": ["TaskToken"],
        "payload_fields": ["Payload"],
        "type_attribute": None,
        "type_field": None,
        "default_handler": "refund",
        "dead_letter_queue": "refunds-dlq",
    }
    # A second queue keeps the first one's row in BROKER_QUEUES.
    env["BROKER_QUEUES"] = json.dumps([row])
    other = run_cli("local", "deploy", "--queue", "orders", env=env, cwd=tmp_path)
    names = [r["name"] for r in _rows(other.stdout)]
    assert names == ["refunds", "orders"], other.stderr


def test_start_of_a_flow_that_is_not_there_names_the_deployed_ones(up: Up, tmp_path: Path) -> None:
    env = author_env(AWS_ENDPOINT_URL=up.endpoint)
    assert run_cli("local", "deploy", "--queue", "orders", env=env, cwd=tmp_path).returncode == 0
    done = run_cli("local", "start", "order", "{}", "--wait", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"broker local start: no flow 'order' at {up.endpoint} (deployed: orders); "
        "broker local deploy makes one"
    )
    assert done.stdout == ""


def test_up_on_a_port_in_use_is_one_line_and_exit_1(up: Up, tmp_path: Path) -> None:
    done = run_cli("local", "up", "--port", str(up.port), env=author_env(), cwd=tmp_path)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("broker local up: ")
    assert "another `broker local up`?" in line


# --- refused before any call: no emulator needed --------------------------------------------

_CLOSED = "http://127.0.0.1:9"  # discard: nothing listens; a call would fail (exit 1), not 2


@pytest.mark.parametrize(
    ("args", "endpoint", "says"),
    [
        (["--queue", "orders", "--endpoint", "http://10.0.0.1:4566"], None, "not on loopback"),
        (["--queue", "orders"], "https://sqs.eu-west-1.amazonaws.com", "not on loopback"),
        (["--queue", "orders"], None, "AWS_ENDPOINT_URL is not set"),
        (["--queue", "has space"], _CLOSED, "as AWS requires"),
        (["--queue", "q" * 77], _CLOSED, "1 to 76 letters"),
        (["--queue", "orders.fifo"], _CLOSED, "FIFO queues are not deployed"),
        (["--queue", "orders", "--shape", "seed-000"], _CLOSED, "give --type"),
    ],
)
def test_deploy_refuses_before_any_call(
    args: list[str], endpoint: str | None, says: str, tmp_path: Path
) -> None:
    env = author_env(**({"AWS_ENDPOINT_URL": endpoint} if endpoint else {}))
    started = time.monotonic()
    done = run_cli("local", "deploy", *args, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("broker local deploy: ")
    assert says in line, line
    assert done.stdout == ""
    assert time.monotonic() - started < 15  # no connection attempts and retries


def test_start_refuses_input_that_is_not_json(tmp_path: Path) -> None:
    env = author_env(AWS_ENDPOINT_URL=_CLOSED)
    done = run_cli("local", "start", "orders", "{id: 7}", "--wait", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("broker local start: INPUT is not JSON")
    # The LocalStack alias is the same command.
    alias = subprocess.run(
        [sys.executable, "-m", "broker.local.localstack", "start", "callback", "{"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert alias.returncode == 2
    assert "INPUT is not JSON" in alias.stderr, alias.stderr


@pytest.mark.parametrize(
    "command", [["deploy", "--queue", "orders"], ["start", "o", "{}"], ["inbox"]]
)
def test_no_emulator_is_said_at_once(command: list[str], tmp_path: Path) -> None:
    started = time.monotonic()
    done = run_cli("local", *command, env=author_env(AWS_ENDPOINT_URL=_CLOSED), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"broker local {command[0]}: no emulator answers at {_CLOSED}")
    assert time.monotonic() - started < 5  # not after botocore's retries


def test_up_without_moto_says_how_to_install_it(tmp_path: Path) -> None:
    # A `moto` that cannot be imported stands for the `local` extra not installed.
    (tmp_path / "moto").mkdir()
    (tmp_path / "moto" / "__init__.py").write_text("raise ImportError('no moto here')\n")
    env = author_env(PYTHONPATH=str(tmp_path))
    done = run_cli("local", "up", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "broker local up: the embedded AWS emulator needs moto: "
        "pip install 'sfn-callback-broker[local]'"
    )


@pytest.mark.parametrize("command", ["up", "env", "deploy", "start", "inbox"])
def test_every_command_has_a_description_and_an_example(command: str, tmp_path: Path) -> None:
    done = run_cli("local", command, "--help", env=author_env(), cwd=tmp_path)
    assert done.returncode == 0
    usage, description, *_ = done.stdout.split("\n\n")
    assert usage.startswith(f"usage: broker local {command}")
    assert description.strip()
    assert re.search(rf"\nexample:\n  .*broker local {command}\b", done.stdout), done.stdout


def test_the_seed_preset_on_moto_serves_the_seed_flows(up: Up, tmp_path: Path) -> None:
    env = author_env(AWS_ENDPOINT_URL=up.endpoint)
    deployed = run_cli(
        "local", "deploy", "--preset", "seeds", "--prefix", "p", env=env, cwd=tmp_path
    )
    assert deployed.returncode == 0, deployed.stderr
    exported = _exported(deployed.stdout)
    handlers = json.loads(exported["BROKER_HANDLERS"])
    assert handlers == ["handlers.seeds:router", "handlers.approval:router"]
    queues = _rows(deployed.stdout)
    assert [q["name"] for q in queues] == [
        "p-callback",
        "p-verification",
        "p-transactions",
    ]
    assert all(q["dead_letter_queue"] == q["name"] + "-dlq" for q in queues)
    # moto cannot serve an activity: none is deployed, none is configured.
    assert "BROKER_ACTIVITIES" not in exported
    assert "moto has no GetActivityTask" in deployed.stderr
    refused = run_cli("local", "deploy", "--activity", "review", env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("deploy activities on LocalStack")
    # The preset's flows run with the seed handlers, as the demo's do.
    decision_port = str(free_port())
    serve = exported | {
        "BROKER_DECISION_PORT": decision_port,
        "BROKER_DECISION_BASE_URL": f"http://127.0.0.1:{decision_port}",
    }
    script = (
        f'eval "$(broker local env --port {up.port})"\n'
        "broker run &\n"
        'broker local start p-transactions \'{"TransactionType": "PURCHASE"}\' --wait\n'
        "kill %1; wait\n"
    )
    ran = run_script(script, env={**env, **serve}, cwd=tmp_path, timeout_s=120)
    assert ran.returncode == 0, ran.stderr
    (ended,) = ran.endings()
    assert ended["status"] == "SUCCEEDED", ended


def _heartbeat_answer(endpoint: str, queue: str) -> str:
    """Start the flow ``queue``, take its message and heartbeat its token: "ok" or the
    error code Step Functions answers."""
    aws = LoopbackAws(endpoint, region="us-east-1")
    sfn, sqs = aws.client("stepfunctions"), aws.client("sqs")
    machine = next(
        m["stateMachineArn"]
        for m in sfn.list_state_machines()["stateMachines"]
        if m["name"] == queue
    )
    sfn.start_execution(stateMachineArn=machine, input="{}")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    deadline = time.monotonic() + 30
    messages: list[dict[str, Any]] = []
    while not messages and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
    assert messages, "the flow sent no message"
    token = json.loads(messages[0]["Body"])["TaskToken"]
    try:
        sfn.send_task_heartbeat(taskToken=token)
    except sfn.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "ok"


def test_deploy_heartbeat_and_decisions_for_your_own_queue(up: Up, tmp_path: Path) -> None:
    env = author_env(AWS_ENDPOINT_URL=up.endpoint)
    plain = run_cli("local", "deploy", "--queue", "plain", env=env, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "BROKER_DECISION_TOPIC" not in _exported(plain.stdout)
    deployed = run_cli(
        "local", "deploy", "--queue", "beating", "--type", "approve", "--heartbeat", "60",
        "--decisions", "--prefix", "mine", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert "HeartbeatSeconds 60" in deployed.stderr
    assert "decision topic mine-decisions" in deployed.stderr
    # The state has HeartbeatSeconds: a heartbeat is taken, where without it the
    # emulator answers InvalidToken.
    assert _heartbeat_answer(up.endpoint, "plain") == "InvalidToken"
    assert _heartbeat_answer(up.endpoint, "beating") == "ok"
    exported = _exported(deployed.stdout)
    assert exported["BROKER_DECISION_TOPIC"].endswith(":mine-decisions")
    assert len(json.loads(exported["BROKER_DECISION_KEYS"])) == 1
    assert exported["BROKER_DECISION_BASE_URL"] == "http://127.0.0.1:8081"
    # The inbox is subscribed to the topic: what is published there, `inbox` prints.
    sns = LoopbackAws(up.endpoint, region="us-east-1").client("sns")
    sns.publish(TopicArn=exported["BROKER_DECISION_TOPIC"], Message='{"approve_url": "x"}')
    inbox = run_cli("local", "inbox", "--prefix", "mine", env=env, cwd=tmp_path)
    assert inbox.returncode == 0, inbox.stderr
    assert json.loads(inbox.stdout.splitlines()[0]) == {"approve_url": "x"}
    refused = run_cli(
        "local", "deploy", "--preset", "seeds", "--heartbeat", "5", env=env, cwd=tmp_path
    )
    assert refused.returncode != 0
    assert "--heartbeat and --decisions are for --queue and --activity" in refused.stderr
