"""The decision endpoint: ``/decisions/{blob}`` on a listener of its own.

Served by ``observability.listener.serve_routes`` (accept loop, connection cap,
timeouts) with limits of its own (``DECISION_LIMITS``: a link is up to about 8.5 KiB of
request line), apart from the probes: only this port is meant to be public, behind
TLS (docs/decisions.md).  Every answer, refusals, 404 and 405 included, carries
``SECURITY_HEADERS``: nothing is cached or sent on as a referrer, no script runs, and
no other site can frame the button.
"""

from __future__ import annotations

from typing import Final

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from broker.core.errors import ConfigError
from broker.core.settings import ENV_PREFIX
from broker.decisions.decide import Answer, Decisions, DecisionStatus, answer_page
from broker.observability.connections import ListenerLimits
from broker.observability.listener import serve_routes

__all__ = [
    "DECISION_LIMITS",
    "MAX_BODY_BYTES",
    "SECURITY_HEADERS",
    "decision_routes",
    "serve_decisions",
]

#: A POST's body is never read beyond this (the form sends none).
MAX_BODY_BYTES: Final = 4096
SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
_ALLOW: Final = "GET, HEAD, POST"

DECISION_LIMITS: Final = ListenerLimits(
    max_connections=256,
    priority_connections=0,
    request_timeout_s=10.0,
    # Above the decision's own deadline (decide.DECIDE_DEADLINE_S), which answers 503
    # with the headers; this one would answer without them.
    handler_timeout_s=30.0,
    max_connection_s=60.0,
    # The request line carries the link; headers may carry a corporate domain's cookies.
    max_line_bytes=16_384,
    max_field_bytes=16_384,
    max_headers=64,
    max_body_bytes=MAX_BODY_BYTES,
)


def decision_routes(decisions: Decisions) -> list[web.RouteDef]:
    """``/decisions/{blob}`` for every method, and everything else a 404 with headers."""

    async def link(request: web.Request) -> web.Response:
        if request.method == "POST" and not await _body_fits(request):
            return _reply(_refuse(decisions, DecisionStatus.TOO_LARGE))
        return _reply(await decisions.answer(request.method, request.match_info["blob"]))

    async def elsewhere(request: web.Request) -> web.Response:
        return _reply(_refuse(decisions, DecisionStatus.NOT_FOUND))

    # "*": the methods are answered here (405 with the headers), not by aiohttp.
    return [web.route("*", "/decisions/{blob}", link), web.route("*", "/{tail:.*}", elsewhere)]


async def _body_fits(request: web.Request) -> bool:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return False
    try:
        await request.read()  # aiohttp stops at client_max_size (MAX_BODY_BYTES)
    except web.HTTPRequestEntityTooLarge:
        return False
    return True


def _refuse(decisions: Decisions, status: DecisionStatus) -> Answer:
    answer = Answer(status, answer_page(status))
    decisions.record(answer)
    return answer


def _reply(answer: Answer) -> web.Response:
    response = web.Response(
        status=answer.http_status,
        text=answer.page,
        content_type="text/html",
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )
    if answer.status is DecisionStatus.METHOD_NOT_ALLOWED:
        response.headers["Allow"] = _ALLOW
    return response


async def serve_decisions(
    decisions: Decisions,
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the decision endpoint until cancelled; reports the bound port."""
    try:
        await serve_routes(
            "decision endpoint",
            decision_routes(decisions),
            host,
            port,
            limits=DECISION_LIMITS,
            task_status=task_status,
        )
    except OSError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}DECISION_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from exc
