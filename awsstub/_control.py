"""Drive a running stub from synchronous code: the control client and the stub process."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["StubControl", "StubProcess"]

_REPO_ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = "awsstub listening on "


class StubControl:
    """The ``/_stub/`` endpoints, over urllib (no dependency beyond the stdlib)."""

    def __init__(self, endpoint_url: str, timeout_s: float = 30.0) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(
        self, method: str, path: str, body: Any = None, timeout_s: float | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is the stub's own http URL
            f"{self.endpoint_url}/_stub/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as reply:  # noqa: S310
                return json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"stub {method} /_stub/{path}: {exc.code} {exc.read()!r}") from None

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def reset_stats(self) -> None:
        """Zero counters and latencies (after a warm-up); queues and tokens stay."""
        self._call("POST", "reset_stats", {})

    def create_queue(self, name: str, visibility_timeout_s: int = 30) -> str:
        reply = self._call(
            "POST", "queues", {"name": name, "visibility_timeout_s": visibility_timeout_s}
        )
        return str(reply["url"])

    def add_tasks(
        self,
        queue: str,
        count: int = 1,
        type: str = "callback",
        input: Any = None,
        rate_per_s: float | None = None,
        token_chars: int = 256,
    ) -> int:
        body = {
            "queue": queue,
            "count": count,
            "type": type,
            "input": {} if input is None else input,
            "rate_per_s": rate_per_s,
            "token_chars": token_chars,
        }
        return int(self._call("POST", "tasks", body)["accepted"])

    def add_messages(self, queue: str, messages: list[dict[str, Any]]) -> int:
        return int(self._call("POST", "tasks", {"queue": queue, "messages": messages})["accepted"])

    def set_faults(self, **faults: Any) -> None:
        self._call("POST", "faults", faults)

    def set_quotas(self, buckets: list[dict[str, Any]]) -> None:
        """Step Functions token buckets: ``[{"apis": [op, ...], "burst", "rate_per_s"}]``
        (an empty list: none).  ``stats()["quotas"]`` has their counts and timeline."""
        self._call("POST", "quotas", {"buckets": buckets})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def tasks(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "tasks")
        return result

    def queue_messages(self, name: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"queues/{name}/messages")
        return result

    def wait_closed(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until no registered token is open (or the timeout); the task counts."""
        result: dict[str, Any] = self._call(
            "POST", "wait", {"timeout_s": timeout_s}, timeout_s=timeout_s + 10
        )
        return result


class StubProcess:
    """``python -m awsstub`` in its own process, for the length of a ``with`` block."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        uvloop: bool = True,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
        quotas: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.port = port
        #: ``--quota`` flags (``APIS=BURST/RATE``).
        self.quotas = quotas
        self.uvloop = uvloop
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.endpoint_url = ""
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the stub process is not running")
        return self._process.pid

    def start(self) -> None:
        command = [sys.executable, "-m", "awsstub", "--host", self.host]
        command += ["--port", str(self.port)]
        if not self.uvloop:
            command.append("--no-uvloop")
        for quota in self.quotas:
            command += ["--quota", quota]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, cwd=_REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self.stop()
                    raise RuntimeError("the stub did not report ready in time")
                line = self._process.stdout.readline()
                if not line:
                    self.stop()
                    raise RuntimeError("the stub exited before it was ready")
                if line.startswith(READY_PREFIX):
                    self.endpoint_url = line[len(READY_PREFIX) :].strip()
                    return

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(self.stop_timeout_s)
        if process.stdout is not None:
            process.stdout.close()

    def control(self) -> StubControl:
        return StubControl(self.endpoint_url)

    def __enter__(self) -> StubProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
