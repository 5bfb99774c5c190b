"""Run the ``broker`` command as a user would: a subprocess with a clean environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without BROKER_*/AWS_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    # Any free port for /livez /readyz /metrics: tests run brokers side by side.
    env["BROKER_HTTP_PORT"] = "0"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process may take it before use)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
