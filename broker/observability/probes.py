"""The probes' listener: ``/livez``, ``/healthz``, ``/readyz`` and ``/metrics``.

Routes only: the connections, limits and accept loop are ``broker.observability.listener``'s.
The probes' paths get connection slots of their own there, so a flood of scrapes or of
idle clients can't make a probe wait behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus

from broker.observability.connections import ListenerLimits
from broker.observability.listener import serve_routes

__all__ = [
    "METRICS_TTL_S",
    "PROBE_LIMITS",
    "PROBE_PATHS",
    "Health",
    "HttpEndpoints",
    "probe_routes",
    "serve_http",
]

#: How long a rendered /metrics is served again: a scrape flood renders once per interval.
METRICS_TTL_S: Final = 1.0
_METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


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


PROBE_LIMITS: Final = ListenerLimits()
#: The probes' paths: answered first, whatever else the port is asked.
PROBE_PATHS: Final = ("/livez", "/healthz", "/readyz")


async def serve_http(
    endpoints: HttpEndpoints,
    host: str,
    port: int,
    *,
    limits: ListenerLimits = PROBE_LIMITS,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the probes and metrics until cancelled; reports the bound port.

    ``OSError`` if the address can't be bound; nothing after that.
    """
    await serve_routes(
        "health and metrics",
        probe_routes(endpoints),
        host,
        port,
        limits=limits,
        priority_paths=PROBE_PATHS,
        task_status=task_status,
    )


def probe_routes(endpoints: HttpEndpoints) -> list[web.RouteDef]:
    metrics = _Cached(endpoints.metrics, METRICS_TTL_S)

    async def livez(request: web.Request) -> web.Response:
        return _health_response(endpoints.liveness())

    async def readyz(request: web.Request) -> web.Response:
        return _health_response(endpoints.readiness())

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.get(), headers={"Content-Type": _METRICS_TYPE})

    # web.get also answers HEAD; aiohttp answers 405 to other methods, 404 elsewhere.
    return [
        web.get("/livez", livez),
        web.get("/healthz", livez),
        web.get("/readyz", readyz),
        web.get("/metrics", scrape),
    ]


def _health_response(health: Health) -> web.Response:
    body = orjson.dumps({"ok": health.ok, "checks": health.checks}) + b"\n"
    return web.Response(
        status=200 if health.ok else 503, body=body, content_type="application/json"
    )


class _Cached:
    """The last rendering of ``render``, reused for ``ttl_s``.

    Rendering stays on the event loop (the counters it reads are changed there), so a
    flood of scrapes costs one rendering per interval, not one per request.
    """

    def __init__(self, render: Callable[[], bytes], ttl_s: float) -> None:
        self._render = render
        self._ttl_s = ttl_s
        self._body = b""
        self._expires = float("-inf")

    def get(self) -> bytes:
        now = time.monotonic()
        if now >= self._expires:
            self._body = self._render()
            self._expires = time.monotonic() + self._ttl_s
        return self._body
