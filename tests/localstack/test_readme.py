"""The README's "Run against LocalStack" commands, as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from broker.local.localstack import LocalStackAws
from tests.approval_flow import http
from tests.cli import clean_env

from .broker_process import broker_process

_ROOT = Path(__file__).resolve().parents[2]


def _localstack_cli(*args: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "broker.local.localstack", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_deploy_serve_and_start_as_the_readme_says(
    localstack: LocalStackAws, tmp_path: Path
) -> None:
    base = clean_env(LOCALSTACK_ENDPOINT=localstack.endpoint_url)
    exports = _localstack_cli("deploy", env=base, cwd=tmp_path)
    env = dict(base)
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    assert {"BROKER_QUEUES", "BROKER_ACTIVITIES", "AWS_ENDPOINT_URL"} <= env.keys()
    # An idle activity poll lasts 60 s: a short grace keeps the test's stop short.
    env["BROKER_SHUTDOWN_GRACE_S"] = "2"
    with broker_process(env, tmp_path) as broker:
        # Every seed queue comes with its dead-letter queue: a clean start warns of nothing.
        assert "WARNING" not in broker.log, broker.log
        runs = {
            ("activity", '{"in": "SUCCESS"}'): ("SUCCEEDED", None),
            ("activity", '{"in": "RANDOM"}'): ("FAILED", "NO_SUCCESS_INPUT"),
            ("transactions", '{"TransactionType": "PURCHASE"}'): ("SUCCEEDED", None),
            ("callback", '{"n": 1}'): ("SUCCEEDED", None),
        }
        for (flow, execution_input), expected in runs.items():
            ended = json.loads(
                _localstack_cli("start", flow, execution_input, env=base, cwd=tmp_path)
            )
            assert (ended["status"], ended.get("error")) == expected, (flow, ended)
        _approve_by_hand(base, tmp_path)
        broker.process.send_signal(signal.SIGTERM)
        assert broker.process.wait(timeout=20) == 0, broker.log
    # Nor does the drain: the idle activity poll cut at the grace's end is said at INFO.
    assert "WARNING" not in broker.log, broker.log


def _approve_by_hand(base: dict[str, str], cwd: Path) -> None:
    """Seed 004 as the README shows it: start one, read the links with ``inbox``, use one."""
    subject = f"Refund #{uuid.uuid4().hex[:8]}"
    start = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.local.localstack",
            "start",
            "verification",
            json.dumps({"subject": subject}),
            "--timeout",
            "60",
        ],
        env=base,
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        document = None
        deadline = time.monotonic() + 30
        while document is None and time.monotonic() < deadline:
            # Earlier runs may have left notifications in the inbox: find this one.
            for line in _localstack_cli("inbox", env=base, cwd=cwd).splitlines():
                if json.loads(line)["subject"] == subject:
                    document = json.loads(line)
        assert document is not None, "no notification in the inbox"
        assert http("GET", document["approve_url"]).status == 200
        assert http("POST", document["approve_url"]).status == 200
        out, _ = start.communicate(timeout=60)
        ended = json.loads(out)
        assert (ended["status"], ended["output"]["approved"]) == ("SUCCEEDED", True), ended
    finally:
        if start.poll() is None:
            start.kill()
            start.wait(timeout=10)
