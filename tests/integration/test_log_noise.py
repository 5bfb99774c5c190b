"""What a real command logs about credentials, on the embedded moto server (issue 15)."""

from __future__ import annotations

from pathlib import Path

from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from tests.cli import clean_env, run_cli


def test_the_credential_source_is_one_debug_line_of_the_broker(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    queue = seed_flows.queues["callback"].rsplit("/", 1)[-1]
    base = {
        **aws.env(),
        "BROKER_QUEUES": f'[{{"name": "{queue}", "default_handler": "callback"}}]',
        "BROKER_HANDLERS": '["handlers.seeds:router"]',
        "BROKER_LOG_FORMAT": "text",
        "AWS_SECRET_ACCESS_KEY": "a-secret-nobody-may-log",
    }
    quiet = run_cli("check", env=clean_env(**base), cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "credentials" not in quiet.stderr.lower(), quiet.stderr
    debug = run_cli("check", env=clean_env(**base, BROKER_LOG_LEVEL="DEBUG"), cwd=tmp_path)
    assert debug.returncode == 0, debug.stderr
    lines = [line for line in debug.stderr.splitlines() if "credentials" in line.lower()]
    assert len(lines) == 1, debug.stderr
    assert "DEBUG   broker.aws: AWS credentials: env" in lines[0]
    assert "a-secret-nobody-may-log" not in debug.stderr
