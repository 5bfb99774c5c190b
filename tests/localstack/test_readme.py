"""The README's "Run against LocalStack" commands, as a user runs them (subprocesses).

The walk's ``broker local`` commands are read from the README. They run under a prefix
unique per test (``--prefix`` on ``deploy`` and ``inbox``, the flows ``local-…`` renamed):
a LocalStack shared with another broker serving the fixed ``local-*`` queues would
otherwise take this test's messages and approvals.
"""

from __future__ import annotations

import json
import re
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
from tests.local_loop import blocks, readme_section

from .broker_process import broker_process

_BROKER = ".venv/bin/broker"


def _walk() -> dict[str, list[list[str]]]:
    """The walk's ``broker local`` commands by subcommand, as argument lists."""
    (block,) = blocks(readme_section("Run against LocalStack"), "sh")
    found: dict[str, list[list[str]]] = {}
    for line in block.splitlines():
        command = re.sub(r'^eval "\$\((.*)\)"', r"\1", line.split("  #")[0].strip())
        if not command.startswith(f"{_BROKER} local "):
            continue
        args = shlex.split(command.removesuffix("&"))[2:]
        found.setdefault(args[0], []).append(args)
    return found


def _local_cli(args: list[str], prefix: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        _command(args, prefix),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _command(args: list[str], prefix: str) -> list[str]:
    renamed = [re.sub(r"^local-", f"{prefix}-", arg) for arg in args]
    if args[0] in ("deploy", "inbox"):
        renamed.extend(["--prefix", prefix])
    return [sys.executable, "-m", "broker", "local", *renamed]


def _exports(stdout: str, env: dict[str, str]) -> None:
    for line in stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            (env[name],) = shlex.split(value)
        else:
            assert line.startswith("unset "), line
            for name in line.split()[1:]:
                env.pop(name, None)


def test_deploy_serve_and_start_as_the_readme_says(
    localstack: LocalStackAws, unique: str, tmp_path: Path
) -> None:
    walk = _walk()
    assert sorted(walk) == ["deploy", "env", "inbox", "start"]
    base = clean_env(LOCALSTACK_ENDPOINT=localstack.endpoint_url)
    env = dict(base)
    (env_args,) = walk["env"]
    _exports(_local_cli(env_args, unique, env, tmp_path), env)
    (deploy_args,) = walk["deploy"]
    _exports(_local_cli(deploy_args, unique, env, tmp_path), env)
    assert {"BROKER_QUEUES", "BROKER_ACTIVITIES", "AWS_ENDPOINT_URL"} <= env.keys()
    assert all(q["name"].startswith(f"{unique}-") for q in json.loads(env["BROKER_QUEUES"]))
    # An idle activity poll lasts 60 s: a short grace keeps the test's stop short.
    env["BROKER_SHUTDOWN_GRACE_S"] = "2"
    starts = {tuple(args[1:3]): args for args in walk["start"]}
    with broker_process(env, tmp_path) as broker:
        # Every seed queue comes with its dead-letter queue: a clean start warns of nothing.
        assert "WARNING" not in broker.log, broker.log
        runs = {
            ("local-activity", '{"in": "SUCCESS"}'): ("SUCCEEDED", None),
            ("local-activity", '{"in": "RANDOM"}'): ("FAILED", "NO_SUCCESS_INPUT"),
            ("local-transactions", '{"TransactionType": "PURCHASE"}'): ("SUCCEEDED", None),
        }
        assert set(runs) <= set(starts), sorted(starts)
        runs[("local-callback", '{"n": 1}')] = ("SUCCEEDED", None)  # not in the README
        for key, expected in runs.items():
            args = starts.get(key, ["start", *key, "--wait"])
            ended = json.loads(_local_cli(args, unique, env, tmp_path))
            assert (ended["status"], ended.get("error")) == expected, (key, ended)
        (verification,) = (args for key, args in starts.items() if key[0] == "local-verification")
        (inbox_args,) = walk["inbox"]
        _approve_by_hand(verification, inbox_args, unique, env, tmp_path)
        broker.process.send_signal(signal.SIGTERM)
        assert broker.process.wait(timeout=20) == 0, broker.log
    # Nor does the drain: the idle activity poll cut at the grace's end is said at INFO.
    assert "WARNING" not in broker.log, broker.log


def _approve_by_hand(
    start_args: list[str], inbox_args: list[str], prefix: str, env: dict[str, str], cwd: Path
) -> None:
    """Seed 004 as the README shows it: start one, read the links with ``inbox``, use one."""
    subject = f"Refund #{uuid.uuid4().hex[:8]}"
    start_args = [*start_args[:2], json.dumps({"subject": subject}), *start_args[3:]]
    start = subprocess.Popen(
        _command(start_args, prefix), env=env, cwd=cwd, stdout=subprocess.PIPE, text=True
    )
    try:
        document = None
        deadline = time.monotonic() + 30
        while document is None and time.monotonic() < deadline:
            # Earlier runs may have left notifications in the inbox: find this one.
            for line in _local_cli(inbox_args, prefix, env, cwd).splitlines():
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
