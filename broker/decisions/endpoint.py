"""The decision endpoint: ``/decisions/{blob}`` on a listener of its own.

Served by ``observability.listener.serve_routes`` (accept loop, connection cap,
timeouts) with limits of its own (``DECISION_LIMITS``: a link is up to about 8.5 KiB of
request line), apart from the probes: only this port is meant to be public, behind
TLS (docs/decisions.md).  Every answer, refusals, 404, 405 and aiohttp's own 400s
included, carries ``SECURITY_HEADERS``: nothing is cached or sent on as a referrer, no
script runs, and no other site can frame the button.

A POST is looked at only once its link opened (a forged link is refused before a byte
of its body is read): then a browser's ``Sec-Fetch-Site`` / ``Origin`` must say the
request comes from the link's own page (none at all, as from curl, is fine), and the
body must arrive within ``BODY_DEADLINE_S``, meanwhile its connection may be evicted
at the cap like an idle one.  Slow clients can't hold the listener's connections.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

import anyio
from aiohttp import ClientError, web
from aiohttp.http_exceptions import HttpProcessingError
from anyio.abc import TaskStatus

from broker.core.errors import ConfigError
from broker.core.settings import ENV_PREFIX
from broker.decisions.decide import Answer, Decisions, DecisionStatus, answer_page
from broker.decisions.links import MAX_BLOB_CHARS
from broker.observability.connections import ListenerLimits, waiting_for_client
from broker.observability.listener import serve_routes

__all__ = [
    "BODY_DEADLINE_S",
    "DECISION_LIMITS",
    "MAX_BODY_BYTES",
    "SECURITY_HEADERS",
    "decision_routes",
    "serve_decisions",
]

#: A POST's body is never read beyond this (the form sends none).
MAX_BODY_BYTES: Final = 1024
#: From the request head to the whole body of a POST: a browser sends both at once.
BODY_DEADLINE_S: Final = 3.0
#: What a browser may say in ``Sec-Fetch-Site`` for the form on the link's own page
#: ("none": a request the person made themselves, such as a bookmark).
_OWN_SITE: Final = frozenset({"same-origin", "none"})
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
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
    # The request line carries the link (and maybe a tracker's query string); a header
    # line as much as common proxies pass (8 KiB), and no more headers than a browser's.
    max_line_bytes=MAX_BLOB_CHARS + 2048,
    max_field_bytes=8192,
    max_headers=32,
    max_body_bytes=MAX_BODY_BYTES,
)


def decision_routes(decisions: Decisions) -> list[web.RouteDef]:
    """``/decisions/{blob}`` for every method, and everything else a 404 with headers."""

    origin = _origin(decisions.codec.origin)

    async def link(request: web.Request) -> web.Response:
        async def admit() -> DecisionStatus | None:
            if _cross_site(request, origin):
                return DecisionStatus.CROSS_SITE
            return await _read_body(request)

        return _reply(
            await decisions.answer(request.method, request.match_info["blob"], admit=admit)
        )

    async def elsewhere(request: web.Request) -> web.Response:
        return _reply(_refuse(decisions, DecisionStatus.NOT_FOUND))

    # "*": the methods are answered here (405 with the headers), not by aiohttp.
    return [web.route("*", "/decisions/{blob}", link), web.route("*", "/{tail:.*}", elsewhere)]


def _cross_site(request: web.Request, public_origin: str) -> bool:
    """True when a browser says the POST comes from another site than the link's page.

    ``Sec-Fetch-Site`` (every current browser) is decisive; without it, ``Origin`` must
    be the public base URL's or this request's own host; a request with neither (curl,
    an old browser) is not a browser's cross-site form post, and is let through.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site.strip().lower() not in _OWN_SITE
    sent = request.headers.get("Origin")
    if sent is None:
        return False
    own = {public_origin, _origin(f"http://{request.host}"), _origin(f"https://{request.host}")}
    return _origin(sent) not in own - {""}


def _origin(url: str) -> str:
    """``scheme://host[:port]``, lower case, without the scheme's default port; "" for
    anything else ("null", garbage), which matches no origin."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and str(port) != _DEFAULT_PORTS[parts.scheme]:
        host += f":{port}"
    return f"{parts.scheme}://{host}"


async def _read_body(request: web.Request) -> DecisionStatus | None:
    """Read the POST's body (the form sends none) within its deadline and size."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return DecisionStatus.TOO_LARGE
    try:
        # Waiting for the client: at the cap, this connection may go first.
        with waiting_for_client(), anyio.fail_after(BODY_DEADLINE_S):
            await request.read()  # aiohttp stops at client_max_size (MAX_BODY_BYTES)
    except web.HTTPRequestEntityTooLarge:
        return DecisionStatus.TOO_LARGE
    except (TimeoutError, ConnectionError, ClientError, HttpProcessingError):
        return DecisionStatus.INCOMPLETE  # too slow, or cut off: nothing decided
    return None


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
            headers=SECURITY_HEADERS,
            task_status=task_status,
        )
    except OSError as exc:
        raise ConfigError(
            f"{ENV_PREFIX}DECISION_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from exc
