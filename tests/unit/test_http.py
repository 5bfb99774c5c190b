"""The probes' HTTP listener against hostile clients, and the event-loop lag window.

Real sockets on loopback; the broker on the fakes where a broker is needed.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import anyio
import orjson
import pytest

from broker import Router, Task
from broker.observability import listener, probes
from broker.observability.connections import ListenerLimits
from broker.observability.probes import Health, HttpEndpoints, serve_http
from broker.observability.stats import LoopLag
from broker.testing import TestBroker
from tests.observing import http_get, samples, value

from .conftest import make_settings

pytestmark = pytest.mark.timeout(60)


def endpoints(metrics: Any = None) -> HttpEndpoints:
    return HttpEndpoints(
        liveness=lambda: Health(True, {"event_loop": "lag 0 ms"}),
        readiness=lambda: Health(False, {"state": "starting"}),
        metrics=metrics or (lambda: b"# metrics\n"),
    )


@asynccontextmanager
async def listening(
    ep: HttpEndpoints | None = None, limits: ListenerLimits = probes.PROBE_LIMITS
) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(
            lambda task_status: serve_http(
                ep or endpoints(), "127.0.0.1", 0, limits=limits, task_status=task_status
            )
        )
        yield port
        tg.cancel_scope.cancel()


async def raw(port: int, request: bytes, timeout_s: float = 5.0) -> bytes:
    """Send ``request`` as is, read until the server closes."""
    reply = b""
    with anyio.fail_after(timeout_s):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request)
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    reply += await stream.receive()
    return reply


def server_side_fds(clients: int, baseline: int) -> int:
    """Descriptors this process holds beyond ``baseline`` and its own client sockets."""
    return len(os.listdir("/proc/self/fd")) - baseline - clients


# -- what is served


async def test_probe_routes_methods_and_bodies() -> None:
    async with listening() as port:
        for path in ("/livez", "/healthz"):
            status, body = await http_get(port, path)
            assert (status, orjson.loads(body)) == (
                200,
                {"ok": True, "checks": {"event_loop": "lag 0 ms"}},
            )
        status, body = await http_get(port, "/readyz?verbose=1")
        assert (status, orjson.loads(body)["checks"]) == (503, {"state": "starting"})
        assert await http_get(port, "/metrics") == (200, b"# metrics\n")
        head = await raw(port, b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert head.endswith(b"\r\n\r\n")  # no body
        assert (await raw(port, b"DELETE /livez HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 405"
        )
        assert (await http_get(port, "/livez/../metrics/x"))[0] == 404
        # One request per connection: every answer says so, and the server closes.
        reply = await raw(port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"\r\nConnection: close\r\n" in reply


async def test_malformed_and_oversized_requests_get_4xx_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with listening() as port:
        with caplog.at_level(logging.DEBUG):
            for request in (
                b"GET /livez HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
                b"GET /livez HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
                b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"H: v\r\n" * 200 + b"\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 10,  # a TLS hello
            ):
                reply = await raw(port, request)
                assert reply == b"" or reply.split(b" ")[1][:1] == b"4", reply[:80]
        assert (await http_get(port, "/livez"))[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    refused = [r for r in caplog.records if "bad request refused" in r.getMessage()]
    assert len(refused) == 1  # rate-limited: clients can't flood the log


async def test_metrics_are_rendered_once_per_interval_under_a_scrape_burst() -> None:
    renders = 0

    def render() -> bytes:
        nonlocal renders
        renders += 1
        return b"# render %d\n" % renders

    async with listening(endpoints(render)) as port:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(http_get, port, "/metrics")
        assert renders == 1
        await anyio.sleep(probes.METRICS_TTL_S + 0.1)
        assert await http_get(port, "/metrics") == (200, b"# render 2\n")


# -- clients that hold connections


async def test_a_connection_that_never_sends_is_closed_after_the_request_timeout() -> None:
    limits = ListenerLimits(request_timeout_s=0.5)
    async with listening(limits=limits) as port:
        async with await anyio.connect_tcp("127.0.0.1", port) as silent:
            began = time.monotonic()
            with anyio.fail_after(5), suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await silent.receive()
            waited = time.monotonic() - began
        # A client sending its request head one byte at a time is cut off the same way.
        async with await anyio.connect_tcp("127.0.0.1", port) as slow:
            began = time.monotonic()
            with anyio.fail_after(5), suppress(anyio.BrokenResourceError, OSError):
                for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    await slow.send(bytes([byte]))
                    await anyio.sleep(0.05)
            dripped = time.monotonic() - began
    print(f"silent client closed after {waited:.2f}s, dripping one after {dripped:.2f}s")
    assert 0.4 < waited < 2.0
    assert dripped < 2.0


@contextmanager
def idle_sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def test_idle_connections_past_the_cap_neither_hold_descriptors_nor_lock_probes_out() -> None:
    limits = ListenerLimits(max_connections=8, priority_connections=4)
    async with listening(limits=limits) as port:
        baseline = len(os.listdir("/proc/self/fd"))
        with idle_sockets(port, 100) as idle:
            await anyio.sleep(1.0)  # long past the eviction grace: all were accepted
            held = server_side_fds(len(idle), baseline)
            latencies = []
            for _ in range(20):
                began = time.perf_counter()
                assert (await http_get(port, "/livez"))[0] == 200
                latencies.append(time.perf_counter() - began)
            # Not a probe path, nothing idle old enough to give way: /metrics waits its
            # turn or is turned away, but never makes the listener hold more.
            with suppress(OSError, anyio.EndOfStream, IndexError, ValueError):
                await http_get(port, "/metrics")
            after = server_side_fds(len(idle), baseline)
    print(
        f"server-side fds with 100 idle clients: {held} then {after}; "
        f"/livez max {max(latencies) * 1000:.1f} ms"
    )
    # The cap, the probes' lane and the connections waiting for a first byte, at most.
    assert held <= 8 + 4 + 8
    assert after <= 8 + 4 + 8
    assert max(latencies) < 0.5


async def test_an_error_in_the_accept_loop_is_logged_and_the_listener_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = listener._Listener._accept_batch
    failures = 0

    async def flaky(self: Any, *args: Any) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("boom")
        await real(self, *args)

    monkeypatch.setattr(listener._Listener, "_accept_batch", flaky)

    def broken() -> bytes:
        raise ValueError("a collector bug")

    async with listening(endpoints(broken)) as port:
        with anyio.fail_after(5):
            # The first connection's accept fails; it is accepted on the next turn.
            assert (await http_get(port, "/livez"))[0] == 200
        assert (await http_get(port, "/metrics"))[0] == 500
        assert (await http_get(port, "/livez"))[0] == 200
    assert failures == 1
    assert any("accepting connections failed" in r.getMessage() for r in caplog.records)


@contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """Every descriptor of this process in use (a low soft limit, filled), then freed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    filler = []
    try:
        with suppress(OSError):
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def router() -> Router:
    r = Router()

    @r.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "fine"

    return r


def http_settings(**overrides: Any) -> Any:
    return make_settings("tasks", http_port=0, http_host="127.0.0.1", **overrides)


async def test_accept_failing_with_emfile_does_not_stop_the_broker() -> None:
    async with TestBroker(router(), http_settings()) as tb:
        port = tb.broker.http_port
        assert port
        client = socket.socket()  # its descriptor taken before there are none left
        client.setblocking(False)
        with descriptors_exhausted():
            assert client.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
            await anyio.sleep(0.5)  # the broker's accept() fails with EMFILE meanwhile
        with anyio.fail_after(5):
            await anyio.wait_writable(client)
            client.send(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            await anyio.wait_readable(client)
            assert client.recv(100).startswith(b"HTTP/1.1 200")
        client.close()
        # And it still does its work.
        token = await tb.start_task({}, message_type="ok")
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == "fine"


# -- the event-loop lag window


def test_the_worst_lag_stays_for_the_window() -> None:
    lag = LoopLag(window_s=60, period_s=0.5)
    lag.sleeping(0.0)
    assert lag.worst(0.4) == 0.0
    assert lag.worst(10.5) == pytest.approx(10.0)  # overdue: seen before the timer fires
    assert lag.woke(30.5) == pytest.approx(30.0)
    for t in range(31, 90):  # on time from then on
        lag.sleeping(t)
        lag.woke(t + 0.5)
    assert lag.last_s == 0.0
    assert lag.worst(90.0) == pytest.approx(30.0)  # 59.5 s after the stall
    assert lag.worst(91.0) == 0.0  # out of the window


async def test_livez_reports_a_stall_for_the_whole_window(monkeypatch: pytest.MonkeyPatch) -> None:
    import broker.observability.health as health

    monkeypatch.setattr(health, "_MAX_LIVE_LAG_S", 0.5)
    async with TestBroker(router(), http_settings()) as tb:
        port = tb.broker.http_port
        assert port
        assert (await http_get(port, "/livez"))[0] == 200
        tb.broker.stats.loop_lag.window_s = 4.0  # the window, short for the test
        time.sleep(1.5)  # noqa: ASYNC251 - the stall under test: the loop is blocked
        seen = []
        began = time.monotonic()
        while time.monotonic() - began < 3.0:
            status, body = await http_get(port, "/livez")
            seen.append((round(time.monotonic() - began, 1), status))
            assert status == 503, (seen, body)
            await anyio.sleep(0.25)
        _, metrics = await http_get(port, "/metrics")
        assert value(samples(metrics), "broker_event_loop_lag_seconds") >= 1.0
        checks = orjson.loads((await http_get(port, "/livez"))[1])["checks"]
        assert "worst 1" in checks["event_loop"], checks
        with anyio.fail_after(5):
            while (await http_get(port, "/livez"))[0] != 200:
                await anyio.sleep(0.25)
    print("503 seen at", seen)
