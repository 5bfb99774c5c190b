"""What one listener admits, and the bookkeeping of its connections.

``ListenerLimits`` and ``connection_cap`` say how many connections a listener holds and
for how long; ``broker.observability.listener`` accepts and places connections, and the
classes here track them: which lane holds a connection, which one has been idle the
longest, and how client trouble is reported without flooding the log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final

try:
    import resource
except ImportError:  # not on Windows: no file limit to read there
    resource = None  # type: ignore[assignment]

__all__ = [
    "EVICT_AFTER_S",
    "ClientErrorFilter",
    "Connection",
    "Lane",
    "ListenerLimits",
    "Warnings",
    "connection_cap",
    "serving",
    "waiting_for_client",
]

log = logging.getLogger("broker.http")

#: A connection this young is never evicted: time enough to send its request and have
#: it picked up even on a busy loop, so a flood of new connections can't push a probe
#: out before it is answered.
EVICT_AFTER_S: Final = 0.2


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


@dataclass(eq=False, slots=True)
class Connection:
    sock: socket.socket
    lane: Lane
    opened: float
    #: Since when it waits for a request: its accept, or the end of its last request.
    idle_since: float
    transport: asyncio.Transport | None = None
    #: Requests being handled now: a busy connection is never evicted...
    busy: int = 0
    #: ...unless its handler waits for the client (a request body on its way): a slow
    #: sender is evicted like an idle connection, so slow bodies can't fill the cap.
    waiting: int = 0

    @property
    def closed(self) -> bool:
        # The transport closes our socket object once the connection is really gone.
        return self.sock.fileno() == -1

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # frees the descriptor on the next loop turn
        else:
            self.sock.close()


class Lane:
    """Connections admitted under one limit, the one idle the longest first."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[Connection, None] = {}

    def make_room(self, now: float) -> bool:
        """True when one more fits, if need be by closing the one idle the longest."""
        if len(self.open) < self.limit:
            return True
        self.forget_closed()
        if len(self.open) < self.limit:
            return True
        old_enough = now - EVICT_AFTER_S
        for connection in self.open:
            if connection.idle_since > old_enough:
                return False  # ordered by idle_since: the rest are younger still
            evictable = not connection.busy or connection.waiting
            if evictable and connection.transport is not None:
                del self.open[connection]
                connection.abort()
                return True
        return False

    def idle_again(self, connection: Connection, now: float) -> None:
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


#: The connection whose request the current task handles, set by the listener around
#: each handler (aiohttp runs every request in a task of its own).
serving: ContextVar[Connection | None] = ContextVar("broker_http_serving", default=None)


@contextmanager
def waiting_for_client() -> Iterator[None]:
    """Inside it, the current request's connection waits for its client (reading the
    body): at the cap it may be evicted, the one idle the longest first."""
    connection = serving.get()
    if connection is None:
        yield
        return
    connection.waiting += 1
    try:
        yield
    finally:
        connection.waiting -= 1


@dataclass(slots=True)
class Warnings:
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


class ClientErrorFilter(logging.Filter):
    """aiohttp logs each malformed request as an error with a traceback; a client's
    garbage is not the broker's error: one warning line per interval instead."""

    def __init__(self, warnings: Warnings, name: str) -> None:
        super().__init__()
        self._warnings = warnings
        self._name = name

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        reason = f"{type(exc).__name__}: {exc}"[:200] if exc else record.getMessage()[:200]
        self._warnings.warn("client", "%s: bad request refused (%s)", self._name, reason)
        return False
