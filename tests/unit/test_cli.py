"""The ``broker`` command as a user runs it: a subprocess, real environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.cli import clean_env, run_cli

PLUGIN = """
from broker import Router, Task

router = Router()

@router.handler("invoice")
async def invoice(task: Task) -> dict:
    return {"ok": True}
"""


def broker(*args: str, env: dict[str, str] | None = None, cwd: Path) -> CompletedProcess[str]:
    return run_cli(*args, env=clean_env(**(env or {})), cwd=cwd)


def test_handlers_lists_types_and_origins(tmp_path: Path) -> None:
    result = broker("handlers", env={"BROKER_HANDLERS": '["handlers.seeds:router"]'}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert {"callback", "purchase", "PURCHASE", "refund", "REFUND", "verify"} <= set(lines)
    assert "handlers.seeds:process_purchase typed  [handlers.seeds:router]" in lines["purchase"]


def test_entry_point_plugins_are_discovered(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "invoice_plugin.py").write_text(PLUGIN)
    dist = site / "invoice_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: invoice-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[callback_broker.handlers]\ninvoices = invoice_plugin:router\n"
    )
    env = {"PYTHONPATH": str(site)}
    result = broker("handlers", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "invoice" in result.stdout
    assert "entry point 'invoices' (invoice_plugin:router)" in result.stdout
    # The same plugin also named in BROKER_HANDLERS is the same router: no conflict.
    off = broker("handlers", env={**env, "BROKER_ENTRY_POINTS": "false"}, cwd=tmp_path)
    assert "invoice" not in off.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BROKER_CONCURRENCY": "many"}, "BROKER_CONCURRENCY"),
        ({"BROKER_QUEUES": "q1,q2"}, "BROKER_QUEUES"),
        ({"BROKER_HANDLERS": '["nowhere_module:router"]'}, "nowhere_module"),
        (
            {"BROKER_QUEUES": '[{"name": "q", "default_handler": "ghost"}]'},
            "default_handler 'ghost'",
        ),
    ],
)
def test_bad_settings_exit_2_naming_the_problem(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    result = broker("run", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_run_without_queues_says_so(tmp_path: Path) -> None:
    result = broker("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "BROKER_QUEUES: no queue configured" in result.stderr


def test_config_file_option(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('handlers = ["handlers.seeds:router"]\n')
    result = broker("--config", str(config), "handlers", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verify" in result.stdout


def test_no_command_prints_help(tmp_path: Path) -> None:
    result = broker(cwd=tmp_path)
    assert result.returncode == 2
    assert "run" in result.stdout
    assert "check" in result.stdout


# -- start-up failures: one line each, naming the region or the endpoint

NO_AWS_FILES = {
    # Nothing from this machine's ~/.aws or an instance role may answer for the test.
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting is refused


def _one_line(result: CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("broker: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_region_is_a_settings_error_not_a_traceback(tmp_path: Path) -> None:
    env = {**NO_AWS_FILES, **CREDENTIALS, "BROKER_QUEUES": '["q"]'}
    result = broker("run", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert _one_line(result).startswith("broker: AWS_REGION: no AWS region set")


def test_no_credentials_says_so_naming_the_region(tmp_path: Path) -> None:
    env = {
        **NO_AWS_FILES,
        "AWS_REGION": "eu-west-3",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
        "BROKER_QUEUES": '["q"]',
    }
    result = broker("run", env=env, cwd=tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith(
        "broker: no AWS credentials found calling GetQueueUrl for queue 'q' in region eu-west-3"
    )
    assert "not found (" not in line


def test_an_unreachable_endpoint_says_so_naming_it(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {
        **NO_AWS_FILES,
        **CREDENTIALS,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "BROKER_QUEUES": '["q"]',
        "BROKER_STARTUP_TIMEOUT_S": "1",
    }
    result = broker("run", env=env, cwd=tmp_path)
    assert result.returncode == 1
    line = _one_line(result)
    assert line.startswith(
        f"broker: cannot reach {endpoint}/ in region us-east-1 for queue 'q' (a transient "
        "error: EndpointConnectionError on GetQueueUrl); retried for "
    )
    assert "not found" not in line


# -- healthcheck: 0 or 1, never 2 (Docker reserves 2 in HEALTHCHECK)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ((), {"BROKER_CONCURRENCY": "many"}, "BROKER_CONCURRENCY"),
        ((), {"BROKER_HTTP_PORT": "null"}, "BROKER_HTTP_PORT is off"),
        ((), {"BROKER_HTTP_PORT": "0"}, "BROKER_HTTP_PORT is 0"),
        ((), {"BROKER_HTTP_PORT": str(_closed_port())}, "Connection refused"),
        (("--no-such-option",), {}, "unrecognized arguments"),
    ],
    ids=["bad-setting", "port-off", "port-0", "nothing-listening", "bad-option"],
)
def test_healthcheck_exits_1_on_every_failure(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    result = broker("healthcheck", *args, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


# -- check: what run refuses, listed, with one summary line


def test_check_without_queues_lists_the_problem_and_sums_up(tmp_path: Path) -> None:
    env = {**NO_AWS_FILES, **CREDENTIALS, "AWS_REGION": "us-east-1"}
    result = broker("check", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert "settings: PROBLEM: BROKER_QUEUES: no queue configured" in lines[0]
    assert lines[-1] == "check: 0 queues ok, 0 activities ok, 0 handler types; 1 problem"


def test_check_lists_a_missing_region_as_a_problem(tmp_path: Path) -> None:
    env = {**NO_AWS_FILES, "BROKER_QUEUES": '["q"]'}
    result = broker("check", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("aws: PROBLEM: AWS_REGION: no AWS region set")
    assert lines[-1].endswith("; 1 problem")
