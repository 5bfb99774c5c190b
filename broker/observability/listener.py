"""A hardened HTTP listener: ``aiohttp.web`` behind an accept loop of our own.

Any set of routes is served through ``serve_routes``: the probes' listener
(``broker.observability.probes``) is the first; the public decision endpoint is meant to
be a second one, with its own routes, address and limits (``ListenerLimits``, in
``broker.observability.connections`` with the connections' bookkeeping).  Both run as
tasks in the broker's root task group, and no number or behaviour of clients may stop
the broker, so a listener:

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

``aiohttp`` does the HTTP: parsing, HEAD, 404 and 405.  Every answer, aiohttp's own
included, carries the listener's ``headers`` (``broker.observability.answers``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Literal

import anyio
import anyio.lowlevel
from aiohttp import web
from anyio.abc import TaskGroup, TaskStatus

from broker.observability.answers import answer_headers
from broker.observability.connections import (
    EVICT_AFTER_S,
    ClientErrorFilter,
    Connection,
    Lane,
    ListenerLimits,
    Warnings,
    connection_cap,
    serving,
)

__all__ = ["serve_routes"]

log = logging.getLogger("broker.http")

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
_SWEEP_EVERY_S: Final = 1.0
#: One warning per this interval for each kind of client trouble: clients can't flood the log.
_WARN_EVERY_S: Final = 60.0
_SHUTDOWN_S: Final = 2.0


async def serve_routes(
    name: str,
    routes: Iterable[web.AbstractRouteDef],
    host: str,
    port: int,
    *,
    limits: ListenerLimits,
    priority_paths: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``host:port`` until cancelled; reports the bound port.

    GET and HEAD requests for ``priority_paths`` get connection slots of their own.
    Every response carries ``headers``, aiohttp's own answers (400, 431, ...) included.

    Binding raises ``OSError`` (the caller names the setting); once started, nothing a
    client does raises out of here: failures are logged and the listener goes on.
    """
    sockets = _bind(host, port, limits.backlog)
    try:
        listener = _Listener(name, limits, priority_paths)
        app = listener.application(routes)
        runner = web.AppRunner(
            app,
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
        assert runner.server is not None  # set by setup()
        answer_headers(runner.server, app, headers or {}, keep_alive=limits.keep_alive)
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


#: What a new connection's first bytes ask for: a priority path, anything else, nothing
#: sent yet, or the client already gone.
_Asks = Literal["priority", "other", "unknown", "gone"]


class _Listener:
    """The connections of one listener: admitted, tracked, evicted, swept."""

    def __init__(self, name: str, limits: ListenerLimits, priority_paths: Iterable[str]) -> None:
        self.name = name
        self.limits = limits
        self.cap = connection_cap(limits)
        self._normal = Lane(self.cap)
        #: Requests for these paths (probes) get slots of their own: a flood of other
        #: requests, or of idle connections, can't make them wait behind it.
        self._priority_paths = frozenset(path.encode() for path in priority_paths)
        self._priority = Lane(min(limits.priority_connections, self.cap))
        self._by_transport: dict[asyncio.Transport, Connection] = {}
        #: Connections waiting for their first bytes before a lane is chosen.
        self._undecided: dict[socket.socket, anyio.CancelScope] = {}
        self._warnings = Warnings(_WARN_EVERY_S)
        # A logger of its own, outside the logging tree: aiohttp's reports of bad
        # requests go through the filter, which rewrites them as rate-limited warnings.
        self.client_errors = logging.Logger(f"broker.http.{name}")
        self.client_errors.addFilter(ClientErrorFilter(self._warnings, name))

    @property
    def limit(self) -> int:
        return self._normal.limit + (self._priority.limit if self._priority_paths else 0)

    def application(self, routes: Iterable[web.AbstractRouteDef]) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.limits.max_body_bytes)
        app.add_routes(routes)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        connection = self._by_transport.get(request.transport)  # type: ignore[arg-type]
        if connection is not None:
            connection.busy += 1
        serving.set(connection)  # this request's own task: for waiting_for_client()
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
                with anyio.move_on_after(EVICT_AFTER_S):
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
        connection = Connection(conn, lane, opened=now, idle_since=now)
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

    async def _adopt(self, connection: Connection, server: web.Server) -> None:
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
