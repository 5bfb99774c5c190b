"""``broker idempotency create-table`` as a process: what an endpoint without DynamoDB
reads as (issue 22, item 8), and no botocore chatter in its output (item 14)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli import clean_env, run_cli

#: What LocalStack answers for a service left out of its SERVICES.
_NOT_ENABLED = {
    "__type": "InternalFailure",
    "message": "Service 'dynamodb' is not enabled. Please check your 'SERVICES' configuration "
    "variable.",
}


@pytest.fixture
def no_dynamodb() -> Iterator[tuple[str, list[str]]]:
    """A loopback endpoint answering every call as LocalStack does without DynamoDB."""
    calls: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls.append(self.headers.get("X-Amz-Target", ""))
            body = json.dumps(_NOT_ENABLED).encode()
            self.send_response(501)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def aws_env(endpoint: str) -> dict[str, str]:
    return clean_env(
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
    )


def test_an_endpoint_without_dynamodb_is_named_as_such(
    no_dynamodb: tuple[str, list[str]], tmp_path: Path
) -> None:
    endpoint, calls = no_dynamodb
    began = time.monotonic()
    result = run_cli("idempotency", "create-table", "claims", env=aws_env(endpoint), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"idempotency table 'claims': the dynamodb service is not available at {endpoint} "
        "(InternalFailure, HTTP 501 on CreateTable: Service 'dynamodb' is not enabled"
    ) in result.stderr
    assert "transient" not in result.stderr
    assert "Traceback" not in result.stderr
    # Not retried as if it might pass: one call.
    assert calls == ["DynamoDB_20120810.CreateTable"]
    assert time.monotonic() - began < 30


def test_the_command_prints_no_botocore_info_lines(
    no_dynamodb: tuple[str, list[str]], tmp_path: Path
) -> None:
    endpoint, _ = no_dynamodb
    # The endpoint as a service variable: botocore resolves it, and says so at INFO.
    env = {**aws_env(endpoint), "AWS_ENDPOINT_URL_DYNAMODB": endpoint}
    del env["AWS_ENDPOINT_URL"]
    result = run_cli("idempotency", "create-table", "claims", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "idempotency table 'claims'" in result.stderr  # the command's own line stays
    assert "Found endpoint" not in result.stdout + result.stderr
    # Asked for by name, the logger speaks again.
    loud = run_cli(
        "idempotency",
        "create-table",
        "claims",
        env={**env, "BROKER_LOG_LEVELS": '{"botocore.configprovider": "INFO"}'},
        cwd=tmp_path,
    )
    assert "Found endpoint for dynamodb via: environment_service" in loud.stderr
