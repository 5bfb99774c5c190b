"""A tiny HTTP server on loopback for the browser suite's own pages.

It serves what a test registers (a page that frames a decision link, a static stand-in
page) from another port than the broker's, so the browser sees another origin, as it
would see an attacker's site.  Threads, bounded: each request is answered at once and
the server is shut down when the test ends.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

#: (method, path, body) -> (status, headers, body)
Answer = tuple[int, dict[str, str], bytes]
Route = Callable[[str, str, bytes], Answer]

_MAX_BODY: Final = 64 * 1024


@dataclass
class LoopbackSite:
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def page(self, path: str, html: str, headers: dict[str, str] | None = None) -> str:
        """Serve ``html`` on GET ``path``; its URL."""
        head = {"Content-Type": "text/html; charset=utf-8", **(headers or {})}
        payload = html.encode()

        def route(method: str, _path: str, _body: bytes) -> Answer:
            return (200, head, payload) if method == "GET" else (405, {}, b"")

        self.routes[path] = route
        return self.url(path)


def _handler_class(site: LoopbackSite) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
            body = self.rfile.read(length) if length else b""
            site.requests.append((self.command, self.path))
            route = site.routes.get(self.path)
            status, headers, payload = (
                route(self.command, self.path, body) if route else (404, {}, b"not found")
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


@contextmanager
def loopback_site() -> Iterator[LoopbackSite]:
    site = LoopbackSite()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(site))
    server.daemon_threads = True
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="loopback-site", daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
