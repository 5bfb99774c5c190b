"""The built-in HTTP server: ``/livez``, ``/readyz`` and ``/metrics``.

Deliberately tiny (one request per connection, GET only, bounded reads and time):
it serves probes and a Prometheus scrape, nothing else, and runs as one more task in
the broker's root task group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
import orjson
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

__all__ = ["Health", "HttpEndpoints", "serve_http"]

log = logging.getLogger("broker.http")

_MAX_REQUEST_BYTES: Final = 8192
_REQUEST_TIMEOUT_S: Final = 5.0
_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    #: Why, in a few words per check; shown in the response body.
    checks: dict[str, str]


@dataclass(frozen=True, slots=True)
class HttpEndpoints:
    liveness: Callable[[], Health]
    readiness: Callable[[], Health]
    metrics: Callable[[], bytes]


async def serve_http(
    endpoints: HttpEndpoints,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port through ``task_status``."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = int(listener.extra(SocketAttribute.local_port))  # noqa: S610 - not Django
        log.info("health and metrics on http://%s:%d (/livez /readyz /metrics)", host, bound)
        task_status.started(bound)

        async def handle(stream: SocketStream) -> None:
            async with stream:
                with anyio.move_on_after(_REQUEST_TIMEOUT_S):
                    await _answer(stream, endpoints)

        await listener.serve(handle)


async def _answer(stream: SocketStream, endpoints: HttpEndpoints) -> None:
    request = b""
    try:
        while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST_BYTES:
            request += await stream.receive(4096)
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return
    method, _, rest = request.partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("latin-1")
    if method not in (b"GET", b"HEAD"):
        status, content_type, body = 405, "text/plain", b"GET only\n"
    elif path == "/metrics":
        status, content_type = 200, "text/plain; version=0.0.4; charset=utf-8"
        body = endpoints.metrics()
    elif path in ("/livez", "/healthz", "/readyz"):
        health = endpoints.readiness() if path == "/readyz" else endpoints.liveness()
        status = 200 if health.ok else 503
        content_type = "application/json"
        body = orjson.dumps({"ok": health.ok, "checks": health.checks}) + b"\n"
    else:
        status, content_type, body = 404, "text/plain", b"try /livez, /readyz or /metrics\n"
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    try:
        await stream.send(head + (b"" if method == b"HEAD" else body))
    except (anyio.BrokenResourceError, OSError):
        return
