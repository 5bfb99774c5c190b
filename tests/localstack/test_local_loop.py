"""The README's "Try your handler locally" on LocalStack: its LocalStack commands as
written, with the README's plugin, under a queue name unique per run (a shared LocalStack
may serve other suites at the same time); and an activity deployed the same way."""

from __future__ import annotations

import re
from pathlib import Path

from broker.local.localstack import LocalStackAws
from tests.local_loop import (
    author_env,
    blocks,
    expected_endings,
    readme_section,
    run_script,
    write_plugin,
)


def _script(unique: str) -> str:
    """The section's LocalStack block, its queue (and flow) ``orders`` renamed ``unique``."""
    script = blocks(readme_section(), "sh")[2]
    assert "--localstack" in script
    renamed = re.sub(r"(--queue|start) orders\b", rf"\1 {unique}", script)
    assert renamed.count(unique) == script.count(" orders ") > 0
    return renamed


def test_the_readme_loop_runs_your_plugin_on_localstack(
    localstack: LocalStackAws, unique: str, tmp_path: Path
) -> None:
    write_plugin(readme_section(), tmp_path)
    script = _script(unique)
    env = author_env(LOCALSTACK_ENDPOINT=localstack.endpoint_url)
    ran = run_script(script, env=env, cwd=tmp_path, timeout_s=180)
    assert ran.returncode == 0, ran.stderr
    endings = ran.endings()
    assert endings == expected_endings(script), ran.stderr
    assert endings[0] == {"status": "SUCCEEDED", "output": {"accepted": 7}}
    # LocalStack keeps the cause moto drops.
    assert (endings[1]["error"], endings[1]["cause"]) == (
        "Order.Invalid",
        "quantity must be positive",
    )
    assert "WARNING" not in ran.stderr, ran.stderr


def test_an_activity_deployed_for_your_plugin_runs(
    localstack: LocalStackAws, unique: str, tmp_path: Path
) -> None:
    plugin = write_plugin(readme_section(), tmp_path)
    script = f"""
eval "$(broker local env --localstack)"
eval "$(broker local deploy --activity {unique} --type order)"
PYTHONPATH=. BROKER_HANDLERS='["{plugin}:router"]' broker run &
broker local start {unique} '{{"id": 9, "quantity": 1}}' --wait
broker local deploy --activity {unique} --type order >/dev/null   # again: the same
broker local start {unique} '{{"id": 10, "quantity": 0}}' --wait
kill %1; wait
"""
    # An idle activity poll lasts 60 s: a short grace keeps the drain short.
    env = author_env(LOCALSTACK_ENDPOINT=localstack.endpoint_url, BROKER_SHUTDOWN_GRACE_S="2")
    ran = run_script(script, env=env, cwd=tmp_path, timeout_s=180)
    assert ran.returncode == 0, ran.stderr
    first, second = ran.endings()
    assert first == {"status": "SUCCEEDED", "output": {"accepted": 9}}
    assert (second["status"], second["error"]) == ("FAILED", "Order.Invalid")
