"""The broker's HTTP listeners: ``aiohttp.web`` behind an accept loop of our own.

The probes' listener (``/livez``, ``/readyz``, ``/metrics``) is the first; the public
decision endpoint is meant to be a second one, with its own routes, address and limits,
through the same ``serve_routes``.  Both run as tasks in the broker's root task group,
and no number or behaviour of clients may stop the broker, so a listener:

- accepts connections itself (not ``loop.create_server``): ``accept()`` errors such as
  ``EMFILE`` are logged and waited out here, never raised into the task group, and an
  error of its own is logged and the loop goes on;
- holds at most ``max_connections`` sockets, and at most 1/8 of the process' file
  limit, so the broker's own AWS connections always find a descriptor.  At the cap, a
  new connection takes the place of the one idle the longest; when none is idle, new
  connections are closed at once, which keeps the kernel's queue moving;
- reads (without taking) the first bytes of each new connection: requests for its
  priority paths (the probes) get slots of their own, so a flood of scrapes or of idle
  connections can't make a probe wait behind it;
- gives each connection ``request_timeout_s`` to send a request head (aiohttp's keep-alive
  timer, which it arms at connect), ``handler_timeout_s`` per request and
  ``max_connection_s`` in all; header and body sizes are bounded.

``aiohttp`` does the HTTP: parsing, HEAD, 404 and 405.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

import anyio
import anyio.lowlevel
import orjson
from aiohttp import web
from anyio.abc import TaskGroup, TaskStatus

try:
    import resource
except ImportError:  # not on Windows: no file limit to read there
    resource = None  # type: ignore[assignment]

__all__ = [
    "PROBE_LIMITS",
    "PROBE_PATHS",
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
#: accept() errors that say "nothing to accept after all" (accept(2), Linux notes; some
#: of these names don't exist on every system).
_ACCEPT_RETRY: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH",
    )
    if hasattr(errno, name)
)  # fmt: skip
#: accept() errors that say "this process or the system is out of something".
_ACCEPT_STARVED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Connections accepted in one go before the loop serves those already open.
_ACCEPT_BATCH: Final = 16
_STARVED_PAUSE_S: Final = 0.1
#: Enough of a request to read its method and path.
_PEEK_BYTES: Final = 256
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
    #: More, for requests to the listener's priority paths (the probes), at most the cap.
    priority_connections: int = 8
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
    #: Connections the kernel queues while the listener is at its cap (Linux caps it
    #: at net.core.somaxconn): past it, new clients' SYNs are dropped and retried.
    backlog: int = 1024


PROBE_LIMITS: Final = ListenerLimits()
#: The probes' paths: answered first, whatever else the port is asked.
PROBE_PATHS: Final = ("/livez", "/healthz", "/readyz")


def connection_cap(limits: ListenerLimits) -> int:
    """``max_connections``, lowered to 1/8 of the soft file limit when that is smaller.

    An eighth leaves room for a second listener and, above all, for the broker's own
    connections to AWS, whatever the clients of these ports do.
    """
    if resource is None:
        return limits.max_connections
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


async def serve_routes(
    name: str,
    routes: Iterable[web.AbstractRouteDef],
    host: str,
    port: int,
    *,
    limits: ListenerLimits,
    priority_paths: Iterable[str] = (),
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled; reports the bound port.

    GET and HEAD requests for ``priority_paths`` get connection slots of their own.

    Binding raises ``OSError`` (the caller names the setting); once started, nothing a
    client does raises out of here: failures are logged and the listener goes on.
    """
    sockets = _bind(host, port, limits.backlog)
    try:
        listener = _Listener(name, limits, priority_paths)
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
    log.info("%s on http://%s:%d (at most %d connections)", name, host, bound, listener.limit)
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
    lane: _Lane
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


class _Lane:
    """Connections admitted under one limit, the one idle the longest first."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[_Connection, None] = {}

    def make_room(self, now: float) -> bool:
        """True when one more fits, if need be by closing the one idle the longest."""
        if len(self.open) < self.limit:
            return True
        self.forget_closed()
        if len(self.open) < self.limit:
            return True
        old_enough = now - _EVICT_AFTER_S
        for connection in self.open:
            if connection.idle_since > old_enough:
                return False  # ordered by idle_since: the rest are younger still
            if not connection.busy and connection.transport is not None:
                del self.open[connection]
                connection.abort()
                return True
        return False

    def idle_again(self, connection: _Connection, now: float) -> None:
        if connection in self.open:
            connection.idle_since = now
            del self.open[connection]  # last in the eviction order from now
            self.open[connection] = None

    def forget_closed(self) -> None:
        # Rebuilt rather than edited in place: cheaper, and the order is kept.
        self.open = {c: None for c in self.open if not c.closed}

    def sweep(self, opened_before: float) -> None:
        for connection in [c for c in self.open if c.opened < opened_before]:
            del self.open[connection]
            connection.abort()
        self.forget_closed()

    def abort_all(self) -> None:
        for connection in self.open:
            connection.abort()
        self.open.clear()


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


#: What a new connection's first bytes ask for: a priority path, anything else, nothing
#: sent yet, or the client already gone.
_Asks = Literal["priority", "other", "unknown", "gone"]


class _Listener:
    """The connections of one listener: admitted, tracked, evicted, swept."""

    def __init__(self, name: str, limits: ListenerLimits, priority_paths: Iterable[str]) -> None:
        self.name = name
        self.limits = limits
        self.cap = connection_cap(limits)
        self._normal = _Lane(self.cap)
        #: Requests for these paths (probes) get slots of their own: a flood of other
        #: requests, or of idle connections, can't make them wait behind it.
        self._priority_paths = frozenset(path.encode() for path in priority_paths)
        self._priority = _Lane(min(limits.priority_connections, self.cap))
        self._by_transport: dict[asyncio.Transport, _Connection] = {}
        #: Connections waiting for their first bytes before a lane is chosen.
        self._undecided: dict[socket.socket, anyio.CancelScope] = {}
        self._warnings = _Warnings(_WARN_EVERY_S)
        # A logger of its own, outside the logging tree: aiohttp's reports of bad
        # requests go through the filter, which rewrites them as rate-limited warnings.
        self.client_errors = logging.Logger(f"broker.http.{name}")
        self.client_errors.addFilter(_ClientErrorFilter(self._warnings, name))

    @property
    def limit(self) -> int:
        return self._normal.limit + (self._priority.limit if self._priority_paths else 0)

    def application(self, routes: Iterable[web.AbstractRouteDef]) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.limits.max_body_bytes)
        app.add_routes(routes)
        app.on_response_prepare.append(_plain_server_header)
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
                if not connection.busy:
                    connection.lane.idle_again(connection, time.monotonic())

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
                        len(self._normal.open) + len(self._priority.open),
                    )
                    await anyio.sleep(_STARVED_PAUSE_S)
                    return
                raise
            self._admit(conn, server, tasks)

    def _admit(self, conn: socket.socket, server: web.Server, tasks: TaskGroup) -> None:
        """Take the connection into a lane, or close it at once when there is no room.

        Closing at once, rather than leaving newcomers in the kernel's backlog, keeps
        that queue moving: a probe behind a flood reaches its own lane in moments.
        """
        conn.setblocking(False)
        asks = self._asks_for(conn)
        now = time.monotonic()
        if asks == "unknown" and self._priority_paths and not self._normal.make_room(now):
            # Nothing sent yet and no room: maybe a probe whose request is on its way,
            # maybe one more idle client.  Wait a moment for its first bytes; when too
            # many wait, the one waiting the longest is given up.
            if len(self._undecided) >= self.cap:
                self._undecided.pop(next(iter(self._undecided))).cancel()
            scope = anyio.CancelScope()
            self._undecided[conn] = scope
            tasks.start_soon(self._admit_when_heard, conn, scope, server, tasks)
            return
        self._place(conn, asks, server, tasks)

    async def _admit_when_heard(
        self, conn: socket.socket, scope: anyio.CancelScope, server: web.Server, tasks: TaskGroup
    ) -> None:
        try:
            with scope:
                with anyio.move_on_after(_EVICT_AFTER_S):
                    await anyio.wait_readable(conn)
                asks = self._asks_for(conn)
                self._place(conn, "other" if asks == "unknown" else asks, server, tasks)
                return
            conn.close()  # given up for a newer one
        except BaseException:
            conn.close()
            raise
        finally:
            self._undecided.pop(conn, None)

    def _place(
        self, conn: socket.socket, asks: _Asks, server: web.Server, tasks: TaskGroup
    ) -> None:
        if asks == "gone":
            conn.close()
            return
        now = time.monotonic()
        lanes = (self._priority, self._normal) if asks == "priority" else (self._normal,)
        lane = next((lane for lane in lanes if lane.make_room(now)), None)
        if lane is None:
            conn.close()
            self._warnings.warn(
                "cap",
                "%s: %d connections open, the cap, none idle: closing new ones at once",
                self.name,
                self.limit,
            )
            return
        connection = _Connection(conn, lane, opened=now, idle_since=now)
        lane.open[connection] = None
        if len(self._by_transport) > 2 * self.limit:
            self._by_transport = {t: c for t, c in self._by_transport.items() if not c.closed}
        tasks.start_soon(self._adopt, connection, server)

    def _asks_for(self, conn: socket.socket) -> _Asks:
        """What the request the client already sent asks for, read without taking it."""
        if not self._priority_paths:
            return "other"
        try:
            head = conn.recv(_PEEK_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return "unknown"
        except OSError:
            return "gone"
        if not head:
            return "gone"  # closed without a word
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if method in (b"GET", b"HEAD") and target in self._priority_paths:
            return "priority"
        return "other"

    async def _adopt(self, connection: _Connection, server: web.Server) -> None:
        """Hand an accepted socket to aiohttp."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(server, connection.sock)
        except Exception as exc:  # noqa: BLE001 - the client may be gone; nothing may escape
            connection.sock.close()
            connection.lane.open.pop(connection, None)
            log.debug("%s: connection dropped before it was served (%r)", self.name, exc)
            return
        except BaseException:
            connection.sock.close()
            raise
        connection.transport = transport
        self._by_transport[transport] = connection
        if connection not in connection.lane.open:
            transport.abort()  # swept while it was being set up

    async def sweep(self) -> None:
        """Close connections past ``max_connection_s``: a client reading its response
        one byte a minute must not keep a connection forever."""
        while True:
            await anyio.sleep(_SWEEP_EVERY_S)
            try:
                opened_before = time.monotonic() - self.limits.max_connection_s
                for lane in (self._normal, self._priority):
                    lane.sweep(opened_before)
                self._by_transport = {t: c for t, c in self._by_transport.items() if not c.closed}
            except Exception:
                log.exception("%s: closing old connections failed; going on", self.name)

    def abort_all(self) -> None:
        for lane in (self._normal, self._priority):
            lane.abort_all()
        self._by_transport.clear()


async def _close_after(request: web.Request, response: web.StreamResponse) -> None:
    response.force_close()
    response.headers["Connection"] = "close"  # aiohttp closes, this tells the client


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "broker"  # not which aiohttp and Python versions
