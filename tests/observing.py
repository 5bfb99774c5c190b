"""Helpers for the tests that read what the broker exposes: HTTP endpoints, metrics, logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from prometheus_client.parser import text_string_to_metric_families

from broker.observability.logs import configure_logging

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET from the broker's HTTP server on loopback: status and body."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = b""
        try:
            while True:
                reply += await stream.receive()
        except anyio.EndOfStream:
            pass
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def samples(text: bytes) -> Samples:
    """Every sample of a Prometheus exposition, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@contextmanager
def json_logs(level: str) -> Iterator[io.StringIO]:
    """The broker's JSON log lines, written to a buffer; the root logger restored after."""
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging(level, "json", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
