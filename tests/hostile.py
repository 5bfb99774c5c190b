"""Hostile HTTP clients on loopback, for the tests of the broker's listeners.

Bounded in count and time.  The flood runs as its own process (``python -m
tests.hostile flood ...``) so that its CPU is not the broker's, and not the prober's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Probe:
    #: Seconds from connect() to the whole response; None when no answer came.
    latency_s: float | None
    status: int | None


def probe(port: int, path: str = "/livez", timeout_s: float = 3.0) -> Probe:
    """One GET as an orchestrator's probe does it: a fresh connection, a short timeout."""
    began = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError:
        return Probe(None, None)
    if not reply.startswith(b"HTTP/1."):
        return Probe(None, None)
    return Probe(time.perf_counter() - began, int(reply.split(b" ", 2)[1]))


def probe_for(port: int, seconds: float, interval_s: float = 0.05) -> list[Probe]:
    """Probe ``path`` again and again for ``seconds``."""
    probes = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probes.append(probe(port))
        time.sleep(interval_s)
    return probes


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that never send a byte, held until the block ends.

    Connects without waiting: a server that does not accept leaves them in its backlog
    (or the kernel drops the SYN and this side retries), as a real flood would.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            assert code in (0, errno.EINPROGRESS), errno.errorcode.get(code, code)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def start_flood(
    port: int, clients: int, seconds: float, path: str = "/metrics"
) -> subprocess.Popen[str]:
    """``clients`` concurrent loops of GET ``path`` for ``seconds``, in a process of their own.

    The process prints the number of answered requests when done.
    """
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.hostile",
            "flood",
            str(port),
            str(clients),
            str(seconds),
            path,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _flood(port: int, clients: int, seconds: float, path: str) -> int:
    answered = 0
    deadline = time.monotonic() + seconds
    request = f"GET {path} HTTP/1.1\r\nHost: flood\r\n\r\n".encode()

    async def client() -> None:
        nonlocal answered
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
                writer.write(request)
                reply = await asyncio.wait_for(reader.read(), 5)
                writer.close()
            except (OSError, TimeoutError):
                await asyncio.sleep(0.01)
                continue
            if reply.startswith(b"HTTP/1.1 200"):
                answered += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return answered


def start_slow_bodies(port: int, clients: int, seconds: float, path: str) -> subprocess.Popen[str]:
    """``clients`` connections held open for ``seconds``, each a POST head announcing
    4,000 bytes of body and sending 2; one closed by the server is opened again half a
    second later.

    The process prints the number of connections it opened when done.
    """
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.hostile",
            "slow",
            str(port),
            str(clients),
            str(seconds),
            path,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _slow_bodies(port: int, clients: int, seconds: float, path: str) -> int:
    opened = 0
    deadline = time.monotonic() + seconds
    head = (
        f"POST {path} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-www-form-urlencoded"
        "\r\nContent-Length: 4000\r\n\r\nab"
    ).encode()

    async def client() -> None:
        nonlocal opened
        while (left := deadline - time.monotonic()) > 0:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            opened += 1
            try:
                writer.write(head)
                # Never another byte: wait until the server gives up on us.
                await asyncio.wait_for(reader.read(), left)
            except (OSError, TimeoutError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(0.5)

    await asyncio.gather(*(client() for _ in range(clients)))
    return opened


if __name__ == "__main__":
    if sys.argv[1] == "flood":
        port, clients, seconds, path = sys.argv[2:6]
        print(asyncio.run(_flood(int(port), int(clients), float(seconds), path)))
    elif sys.argv[1] == "slow":
        port, clients, seconds, path = sys.argv[2:6]
        print(asyncio.run(_slow_bodies(int(port), int(clients), float(seconds), path)))
