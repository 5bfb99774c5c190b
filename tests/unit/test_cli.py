"""The ``broker`` command as a user runs it: a subprocess, real environment variables."""

from __future__ import annotations

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
