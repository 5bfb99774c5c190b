"""A loopback endpoint in front of moto that forwards every call, except the ones it is
told to hold: those it keeps, unanswered, until the test lets go (and then drops them).

Pointing one broker process's ``AWS_ENDPOINT_URL`` here makes the moment between "the
handler returned and its verdict was recorded" and "Step Functions has the completion"
last as long as the test wants: the broker is inside SendTaskSuccess, the test SIGKILLs
it there.  Requests are read by ``X-Amz-Target`` (every call the broker makes is an AWS
JSON call); moto does not check signatures, so the Host header the broker signed for
(this endpoint) is passed on as it is.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["HoldingEndpoint"]

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class HoldingEndpoint:
    """Forwards to ``upstream``; holds the calls whose target is in ``hold`` once armed."""

    def __init__(self, upstream: str, hold: frozenset[str]) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._hold = hold
        self.armed = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.held: list[bytes] = []
        self.forwarded = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def held_count(self) -> int:
        with self._lock:
            return len(self.held)

    def let_go(self) -> None:
        """Drop every held call (its client is gone by now) and hold no more."""
        self.armed.clear()
        self._release.set()

    def __enter__(self) -> HoldingEndpoint:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.let_go()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
                if endpoint.armed.is_set() and target in endpoint._hold:
                    with endpoint._lock:
                        endpoint.held.append(body)
                    endpoint._release.wait(120)
                    self.close_connection = True  # never answered
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(*endpoint._upstream, timeout=70)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    upstream.request("POST", self.path, body=body, headers=headers)
                    reply = upstream.getresponse()
                    data = reply.read()
                    self.send_response_only(reply.status, reply.reason)
                    for key, value in reply.getheaders():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    with endpoint._lock:
                        endpoint.forwarded += 1
                finally:
                    upstream.close()

        return Handler
