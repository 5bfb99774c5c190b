"""The broker's HTTP listeners: ``aiohttp.web`` behind an accept loop of our own.

The probes' listener (``/livez``, ``/readyz``, ``/metrics``) is the first; the public
decision endpoint is meant to be a second one, with its own routes and address, through
the same ``serve_routes``.  Both run as tasks in the broker's root task group, and no
number or behaviour of clients may stop the broker, so the listener:

- accepts connections itself (not ``loop.create_server``): ``accept()`` errors such as
  ``EMFILE`` are logged and waited out here, never raised into the task group;
- holds at most ``max_connections`` sockets, and fewer when the process' file limit is
  low, so the broker's own AWS connections always find a descriptor.  At the cap, a new
  connection takes the place of the one idle the longest (connected, no request being
  handled): idle clients can't lock a probe out, they only push each other out;
- gives each connection ``request_timeout_s`` to send a request head (aiohttp's keep-alive
  timer, which it arms at connect), ``handler_timeout_s`` per request and
  ``max_connection_s`` in all; header and body sizes are bounded.

``aiohttp`` does the HTTP: parsing, HEAD, 404 and 405.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import anyio
import anyio.lowlevel
import orjson
from aiohttp import web
from anyio.abc import TaskGroup, TaskStatus

__all__ = [
    "PROBE_LIMITS",
    "Health",
    "HttpEndpoints",
    "ListenerLimits",
    "connection_cap",
    "serve_http",
    "serve_routes",
]

log = logging.getLogger("broker.http")

#: How long a rendered /metrics is served again: a scrape flood renders once per interval.
METRICS_TTL_S: Final = 1.0
_METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: accept() errors that say "nothing to accept after all" (accept(2), Linux notes).
_ACCEPT_RETRY: Final = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
    }
)
#: accept() errors that say "this process or the system is out of something".
_ACCEPT_STARVED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Connections accepted in one go before the loop serves those already open.
_ACCEPT_BATCH: Final = 16
_STARVED_PAUSE_S: Final = 0.1
_SATURATED_POLL_S: Final = 0.02
#: A connection this young is never evicted: time enough to send its request and have
#: it picked up even on a busy loop, so a flood of new connections can't push a probe
#: out before it is answered.
_EVICT_AFTER_S: Final = 0.2
_SWEEP_EVERY_S: Final = 1.0
#: One warning per this interval for each kind of client trouble: clients can't flood the log.
_WARN_EVERY_S: Final = 60.0
_SHUTDOWN_S: Final = 2.0


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


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What one listener allows its clients.  The defaults suit probes and a scrape."""

    #: Open connections at most; also at most 1/8 of the process' file limit.
    max_connections: int = 64
    #: From connect (or the last response) to a complete request head.
    request_timeout_s: float = 5.0
    #: One request's handler; past it the client gets a 503.
    handler_timeout_s: float = 5.0
    #: A connection's whole life, however busy: slow readers are cut off.
    max_connection_s: float = 30.0
    max_line_bytes: int = 4096
    max_field_bytes: int = 4096
    max_headers: int = 32
    max_body_bytes: int = 1024
    #: False: one request per connection ("Connection: close" on every response).
    keep_alive: bool = False
    backlog: int = 128


PROBE_LIMITS: Final = ListenerLimits()


def connection_cap(limits: ListenerLimits) -> int:
    """``max_connections``, lowered to 1/8 of the soft file limit when that is smaller.

    An eighth leaves room for a second listener and, above all, for the broker's own
    connections to AWS, whatever the clients of these ports do.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return limits.max_connections
    return max(1, min(limits.max_connections, soft // 8))


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


async def serve_routes(
    name: str,
    routes: Iterable[web.AbstractRouteDef],
    host: str,
    port: int,
    *,
    limits: ListenerLimits,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled; reports the bound port.

    Binding raises ``OSError`` (the caller names the setting); once started, nothing a
    client does raises out of here: failures are logged and the listener goes on.
    """
    sockets = _bind(host, port, limits.backlog)
    try:
        listener = _Listener(name, limits)
        runner = web.AppRunner(
            listener.application(routes),
            handle_signals=False,
            access_log=None,
            logger=listener.client_errors,
            keepalive_timeout=limits.request_timeout_s,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_field_bytes,
            max_headers=limits.max_headers,
            # A request body nobody reads is not drained: the connection is closed.
            lingering_time=0,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_S,
        )
        await runner.setup()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    bound = int(sockets[0].getsockname()[1])
    log.info("%s on http://%s:%d (at most %d connections)", name, host, bound, listener.cap)
    try:
        server = runner.server
        assert server is not None  # set by setup()
        task_status.started(bound)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(listener.sweep)
            for sock in sockets:
                tasks.start_soon(listener.accept_forever, sock, server, tasks)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_S + 1):
            try:
                await runner.cleanup()
            except Exception:
                log.exception("%s: shutting the HTTP server down failed", name)
        listener.abort_all()
        for sock in sockets:
            sock.close()


def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """One listening socket per address ``host`` resolves to, all on the same port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, str(address[0])) in seen:
                continue
            seen.add((family, str(address[0])))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets[0] is not sock:  # port 0: every address on the first one's port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass(eq=False, slots=True)
class _Connection:
    sock: socket.socket
    opened: float
    #: Since when it waits for a request: its accept, or the end of its last request.
    idle_since: float
    transport: asyncio.Transport | None = None
    #: Requests being handled now: a busy connection is never evicted.
    busy: int = 0

    @property
    def closed(self) -> bool:
        # The transport closes our socket object once the connection is really gone.
        return self.sock.fileno() == -1

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # frees the descriptor on the next loop turn
        else:
            self.sock.close()


@dataclass(slots=True)
class _Warnings:
    """At most one log line per kind and interval."""

    every_s: float
    next_at: dict[str, float] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self.next_at.get(kind, float("-inf")):
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        self.next_at[kind] = now + self.every_s
        more = self.suppressed.pop(kind, 0)
        log.warning(message + (f" ({more} more since the last report)" if more else ""), *args)


class _ClientErrorFilter(logging.Filter):
    """aiohttp logs each malformed request as an error with a traceback; a client's
    garbage is not the broker's error: one warning line per interval instead."""

    def __init__(self, warnings: _Warnings, name: str) -> None:
        super().__init__()
        self._warnings = warnings
        self._name = name

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        reason = f"{type(exc).__name__}: {exc}"[:200] if exc else record.getMessage()[:200]
        self._warnings.warn("client", "%s: bad request refused (%s)", self._name, reason)
        return False


class _Listener:
    """Connections of one listening address: admitted, tracked, evicted, swept."""

    def __init__(self, name: str, limits: ListenerLimits) -> None:
        self.name = name
        self.limits = limits
        self.cap = connection_cap(limits)
        #: Open connections, the one idle the longest first.
        self._open: dict[_Connection, None] = {}
        self._by_transport: dict[asyncio.Transport, _Connection] = {}
        self._warnings = _Warnings(_WARN_EVERY_S)
        # A logger of its own, outside the logging tree: aiohttp's reports of bad
        # requests go through the filter, which rewrites them as rate-limited warnings.
        self.client_errors = logging.Logger(f"broker.http.{name}")
        self.client_errors.addFilter(_ClientErrorFilter(self._warnings, name))

    def application(self, routes: Iterable[web.AbstractRouteDef]) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.limits.max_body_bytes)
        app.add_routes(routes)
        if not self.limits.keep_alive:
            app.on_response_prepare.append(_close_after)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        connection = self._by_transport.get(request.transport)  # type: ignore[arg-type]
        if connection is not None:
            connection.busy += 1
        try:
            async with asyncio.timeout(self.limits.handler_timeout_s):
                return await handler(request)
        except web.HTTPException:
            raise  # 404, 405, ...: aiohttp answers them
        except TimeoutError:
            self._warnings.warn("slow", "%s: %s took too long: 503", self.name, request.path)
            return web.Response(status=503, text="handler timed out\n")
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.path)
            return web.Response(status=500, text="internal error\n")
        finally:
            if connection is not None:
                connection.busy -= 1
                if not connection.busy and connection in self._open:
                    # Idle again from now: last in the eviction order.
                    connection.idle_since = time.monotonic()
                    del self._open[connection]
                    self._open[connection] = None

    async def accept_forever(
        self, sock: socket.socket, server: web.Server, tasks: TaskGroup
    ) -> None:
        """Accept until cancelled.  Never raises: an accept loop that died would leave
        the probes unanswered and the orchestrator would restart a working broker."""
        while True:
            try:
                await anyio.wait_readable(sock)
                await self._accept_batch(sock, server, tasks)
            except Exception:
                log.exception("%s: accepting connections failed; going on", self.name)
                await anyio.sleep(1)
            # Let the connections just accepted read their requests before taking more.
            await anyio.lowlevel.checkpoint()

    async def _accept_batch(
        self, sock: socket.socket, server: web.Server, tasks: TaskGroup
    ) -> None:
        for _ in range(_ACCEPT_BATCH):
            # Every connection is in a handler (each bounded by handler_timeout_s) or
            # too young to evict: leave the newcomers in the kernel's backlog a moment.
            # Polled, as aiohttp tells nobody when it closes a connection.
            while not self._make_room():  # noqa: ASYNC110
                await anyio.sleep(_SATURATED_POLL_S)
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                if exc.errno in _ACCEPT_STARVED:
                    # Out of descriptors (or memory) for the whole process, not through
                    # this listener (it holds at most its cap): leave what is left to
                    # the broker's own work and try again shortly.
                    self._warnings.warn(
                        "starved",
                        "%s: cannot accept connections (%s); %d open here, retrying",
                        self.name,
                        exc.strerror or exc,
                        len(self._open),
                    )
                    await anyio.sleep(_STARVED_PAUSE_S)
                    return
                raise
            now = time.monotonic()
            connection = _Connection(conn, opened=now, idle_since=now)
            self._open[connection] = None
            tasks.start_soon(self._adopt, connection, server)

    def _make_room(self) -> bool:
        """True when one more connection fits, if need be by closing the one idle longest."""
        self._forget_closed()
        if len(self._open) < self.cap:
            return True
        if self._evict_one():
            self._warnings.warn(
                "cap",
                "%s: %d connections open, the cap: closing the one idle the longest",
                self.name,
                self.cap,
            )
            return True
        return False

    def _evict_one(self) -> bool:
        old_enough = time.monotonic() - _EVICT_AFTER_S
        for connection in self._open:
            if connection.idle_since > old_enough:
                break  # ordered by idle_since: the rest are younger still
            if not connection.busy and connection.transport is not None:
                del self._open[connection]
                connection.abort()
                return True
        return False

    def _forget_closed(self) -> None:
        for connection in [c for c in self._open if c.closed]:
            del self._open[connection]
        for transport in [t for t, c in self._by_transport.items() if c.closed]:
            del self._by_transport[transport]

    async def _adopt(self, connection: _Connection, server: web.Server) -> None:
        """Hand an accepted socket to aiohttp."""
        loop = asyncio.get_running_loop()
        try:
            connection.sock.setblocking(False)
            transport, _ = await loop.connect_accepted_socket(server, connection.sock)
        except Exception as exc:  # noqa: BLE001 - the client may be gone; nothing may escape
            connection.sock.close()
            self._open.pop(connection, None)
            log.debug("%s: connection dropped before it was served (%r)", self.name, exc)
            return
        except BaseException:
            connection.sock.close()
            raise
        connection.transport = transport
        self._by_transport[transport] = connection
        if connection not in self._open:
            transport.abort()  # evicted or swept while it was being set up

    async def sweep(self) -> None:
        """Close connections past ``max_connection_s``: a client reading its response
        one byte a minute must not keep a connection forever."""
        while True:
            await anyio.sleep(_SWEEP_EVERY_S)
            try:
                oldest_allowed = time.monotonic() - self.limits.max_connection_s
                for connection in [c for c in self._open if c.opened < oldest_allowed]:
                    del self._open[connection]
                    connection.abort()
                self._forget_closed()
            except Exception:
                log.exception("%s: closing old connections failed; going on", self.name)

    def abort_all(self) -> None:
        for connection in self._open:
            connection.abort()
        self._open.clear()
        self._by_transport.clear()


async def _close_after(request: web.Request, response: web.StreamResponse) -> None:
    response.force_close()
