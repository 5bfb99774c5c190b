"""Start-up under faults: half of every AWS call fails, and the broker still starts.

Each ``broker run`` resolves its queue and dead-letter queue against the loopback stub
while the stub throttles a quarter of all calls and answers 500 to another quarter.
Start-up calls retry transient errors until ``BROKER_STARTUP_TIMEOUT_S``; before that
fix, about one start in three exited 1 with "queue ... not found or not accessible
(RequestThrottled)".
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
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from awsstub import StubProcess

from .harness import REPO_ROOT, broker_env

pytestmark = pytest.mark.faults

STARTS = 20
AT_ONCE = 5
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Start:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    began: float = field(default_factory=time.monotonic)
    saw_starting: bool = False
    ready_after_s: float | None = None

    def readyz(self) -> tuple[int, dict[str, object]] | None:
        url = f"http://127.0.0.1:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return None  # not listening yet


def _launch(env: dict[str, str], log: Path) -> Start:
    port = _free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            cwd=REPO_ROOT,
            env={**env, "BROKER_HTTP_PORT": str(port), "BROKER_HTTP_HOST": "127.0.0.1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Start(process, port, log)


def _wait_ready(start: Start) -> None:
    while time.monotonic() - start.began < START_TIMEOUT_S:
        if start.process.poll() is not None:
            return
        answer = start.readyz()
        if answer is not None:
            status, body = answer
            if status == 200:
                start.ready_after_s = time.monotonic() - start.began
                return
            if body.get("checks") == {"state": "starting"}:
                start.saw_starting = True
        time.sleep(0.05)


def _stop(start: Start) -> int | None:
    if start.process.poll() is None:
        start.process.send_signal(signal.SIGTERM)
        try:
            start.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            start.process.kill()
            start.process.wait(5)
            return None
    return start.process.returncode


def test_twenty_starts_with_half_of_every_call_failing_all_reach_ready(tmp_path: Path) -> None:
    with StubProcess() as stub:
        control = stub.control()
        control.create_queue("startup")
        control.create_queue("startup-dlq")
        control.set_faults(throttle_rate=0.25, error_rate=0.25, seed=20)
        env = broker_env(stub.endpoint_url)
        env["BROKER_QUEUES"] = orjson.dumps(
            [{"name": "startup", "dead_letter_queue": "startup-dlq", "wait_time_s": 1}]
        ).decode()
        env["BROKER_SHUTDOWN_GRACE_S"] = "1"
        starts: list[Start] = []
        exits: list[str] = []
        for first in range(0, STARTS, AT_ONCE):
            batch = [
                _launch(env, tmp_path / f"broker-{n}.log")
                for n in range(first, min(STARTS, first + AT_ONCE))
            ]
            for start in batch:
                _wait_ready(start)
            for start in batch:
                if start.ready_after_s is None:
                    code = start.process.poll()
                    exits.append(f"{start.log.name}: exit {code}: {start.log.read_text()[-600:]}")
                code = _stop(start)
                if start.ready_after_s is not None and code != 0:
                    exits.append(f"{start.log.name}: ready, then SIGTERM gave exit {code}")
            starts += batch
        stats = control.stats()

    ready_s = sorted(start.ready_after_s or 0.0 for start in starts)
    print(f"starts {len(starts)}, ready after {ready_s[0]:.1f}..{ready_s[-1]:.1f}s")
    assert exits == [], "\n".join(exits)
    assert len(starts) == STARTS
    # The stub really failed the start-up calls, and the broker said "starting" meanwhile.
    failed_lookups = sum(
        stats["faults"].get(kind, {}).get(op, 0)
        for kind in ("throttle", "error")
        for op in ("GetQueueUrl", "GetQueueAttributes")
    )
    assert failed_lookups >= STARTS
    assert any(start.saw_starting for start in starts)
    logs = "".join(start.log.read_text() for start in starts)
    assert "not found" not in logs
