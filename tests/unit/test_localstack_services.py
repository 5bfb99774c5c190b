"""LocalStack as `make localstack` starts it serves every service the broker calls, and a
LocalStack without one reads as such (issue 22, item 8)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The services the broker makes clients for (broker/aws/clients.py).
BROKER_SERVICES = ("sqs", "stepfunctions", "sns", "dynamodb")


def test_the_script_and_the_compose_file_enable_every_service_the_broker_calls() -> None:
    clients = (ROOT / "broker/aws/clients.py").read_text()
    assert set(re.findall(r'session\.client\(\s*"(\w+)"', clients)) == set(BROKER_SERVICES)
    script = re.search(r'^SERVICES="([^"]+)"', (ROOT / "scripts/localstack.sh").read_text(), re.M)
    compose = re.search(r"SERVICES: (\S+)", (ROOT / "docker-compose.yml").read_text())
    assert script
    assert compose
    for enabled in (script.group(1), compose.group(1)):
        assert set(BROKER_SERVICES) <= set(enabled.split(","))


@pytest.fixture
def health() -> Iterator[tuple[str, dict[str, Any]]]:
    """A loopback /_localstack/health answering what the test puts in the dict."""
    answer: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", answer
    finally:
        server.shutdown()
        server.server_close()


def script(listen: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts/localstack.sh"), command],
        env={"PATH": "/usr/bin:/bin", "LOCALSTACK_LISTEN": listen, "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_localstack_without_dynamodb_is_named_not_waited_for(
    health: tuple[str, dict[str, Any]],
) -> None:
    listen, answer = health
    answer["services"] = {
        "sqs": "running",
        "stepfunctions": "available",
        "sns": "available",
        "dynamodb": "disabled",
    }
    started = script(listen, "start")
    assert started.returncode == 1
    assert "runs without dynamodb" in started.stderr
    assert script(listen, "status").returncode == 1
    answer["services"]["dynamodb"] = "available"
    ready = script(listen, "start")
    assert ready.returncode == 0, ready.stderr
    assert "already healthy" in ready.stdout
