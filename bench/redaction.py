"""CPU cost of the log redaction per line: the outcome line every task writes, and others.

    .venv/bin/python bench/redaction.py [--held N] [--released N] [--lines N]

Formats the broker's one log record per task (the outcome event, JSON, with a UUID
message id) and a few other lines with the ``broker run`` formatter, with nothing held
and in the steady state of a busy broker (``--released`` tokens released, ``--held``
held: the default concurrency, 128; the task's own token current), and prints the
process CPU time per line (the best of 5 runs, so other load on the machine counts as
little as it can).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Callable

from broker.observability.events import message_record, note_token

try:
    from broker.observability import held
except ImportError:  # the code before the held tokens: the same lines, nothing held
    held = None  # type: ignore[assignment]
from broker.observability.logs import JsonFormatter


def _token(seed: int) -> str:
    raw = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(16))
    return base64.b64encode(raw[:482]).decode()


def _outcome() -> logging.LogRecord:
    message_id = str(uuid.uuid4())
    extra = {
        "event": "outcome",
        "queue": "orders",
        "type": "purchase",
        "message_id": message_id,
        "receive_count": 1,
        "duration_ms": 1.234,
        "outcome": "succeeded",
        "error": None,
    }
    record = logging.LogRecord(
        "broker.outcome", logging.INFO, __file__, 1, "%s %s on %s: %s%s%s",
        ("purchase", message_id, "orders", "succeeded", "", ""), None,
    )  # fmt: skip
    record.__dict__.update(extra)
    return record


def _plain(message: str) -> logging.LogRecord:
    return logging.LogRecord("handler", logging.INFO, __file__, 1, message, None, None)


def _cpu_us(call: Callable[[], object], lines: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(lines):
            call()
        best = min(best, time.process_time() - start)
    return best / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=128)
    parser.add_argument("--released", type=int, default=1024)
    parser.add_argument("--lines", type=int, default=20_000)
    args = parser.parse_args()
    formatter = JsonFormatter()
    records = {
        "outcome line": _outcome(),
        "handler line": _plain("order 42 shipped to Berlin in 3 parcels, 100% done"),
        "line with a path": _plain("see /srv/app/handlers/orders/purchase.py line 12"),
        "line with a URL": _plain("GET https://api.example.com/v1/Orders?id=A1b2C3d4E5f6G7h8"),
    }
    idle = {
        label: _cpu_us(lambda r=record: formatter.format(r), args.lines)  # type: ignore[misc]
        for label, record in records.items()
    }
    if held is not None:  # the steady state: the last released, the ones in hand
        for seed in range(args.held, args.held + args.released):
            held.hold(_token(seed))
            held.release(_token(seed))
        for seed in range(args.held):
            held.hold(_token(seed))
    with message_record("orders", "m-1", 1):
        note_token(_token(-1))
        busy = {
            label: _cpu_us(lambda r=record: formatter.format(r), args.lines)  # type: ignore[misc]
            for label, record in records.items()
        }
    for label in records:
        print(
            f"{label:18} nothing held: {idle[label]:6.2f} µs   "
            f"{args.held} held, {args.released} released, its own: {busy[label]:6.2f} µs"
        )


if __name__ == "__main__":
    main()
