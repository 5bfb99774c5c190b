"""``broker run`` as a subprocess for the LocalStack suite: started, awaited, always stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


@dataclass(frozen=True)
class BrokerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def broker_process(env: dict[str, str], cwd: Path) -> Iterator[BrokerProcess]:
    """Start ``broker run``, wait until it serves, and kill it on the way out if it still
    runs (a test that stops it itself checks how it stopped)."""
    log_path = cwd / "broker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    broker = BrokerProcess(process, log_path)
    try:
        wait_until(
            lambda: "broker running" in broker.log or process.poll() is not None,
            "the broker to start",
            30,
        )
        assert process.poll() is None, broker.log
        yield broker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
