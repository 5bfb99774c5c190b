"""An ``idempotent=True`` handler whose side effect the test can count across processes:
each run appends a ``start`` line when it begins and an ``effect`` line (the side
effect) just before it returns, to the file named by ``IDEM_TEST_EFFECTS`` (``O_APPEND``:
one ``write`` per line, so lines of two processes never interleave).  A line holds the
token's hash (never the token), the execution's case and the process id.

``slow-charge`` ignores its timeout's cancellation and runs ``IDEM_TEST_RUN_S`` seconds,
past its claim's lease; ``IDEM_TEST_LEASE_MARGIN_S`` shortens the lease's 30 s margin so
that such a run takes seconds, not a minute.  ``declined`` fails ``NonRetryable``."""

from __future__ import annotations

import hashlib
import os
import random
import time
from typing import Any

import anyio

from broker import NonRetryable, Router, Task
from broker.core import once

if "IDEM_TEST_LEASE_MARGIN_S" in os.environ:
    setattr(once, "LEASE_MARGIN_S", float(os.environ["IDEM_TEST_LEASE_MARGIN_S"]))  # noqa: B010

router = Router()


def _append(kind: str, task: Task[dict[str, Any]]) -> None:
    key = hashlib.sha256(task.token.encode()).hexdigest()
    line = f"{kind} {key} {task.payload.get('case')} {os.getpid()}\n".encode()
    fd = os.open(os.environ["IDEM_TEST_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@router.handler("charge", idempotent=True, timeout_s=10)
async def charge(task: Task[dict[str, Any]]) -> dict[str, Any]:
    _append("start", task)
    # Long enough that copies on two replicas overlap.
    await anyio.sleep(random.uniform(0.05, 0.3))
    _append("effect", task)
    return {"charged": task.payload.get("case")}


@router.handler(
    "slow-charge", idempotent=True, timeout_s=float(os.environ.get("IDEM_TEST_TIMEOUT_S", "1"))
)
async def slow_charge(task: Task[dict[str, Any]]) -> dict[str, Any]:
    _append("start", task)
    await sleep_deaf(float(os.environ.get("IDEM_TEST_RUN_S", "8")))
    _append("effect", task)
    return {"charged": task.payload.get("case")}


class CardDeclined(NonRetryable, Exception):
    """A failure a retry cannot mend."""


@router.handler("declined", idempotent=True, timeout_s=10)
async def declined(task: Task[dict[str, Any]]) -> None:
    _append("start", task)
    raise CardDeclined("insufficient funds")


async def sleep_deaf(seconds: float) -> None:
    """Sleep ``seconds`` whatever cancels it: a handler that swallows ``CancelledError``
    (the broker cancels a run once at its timeout, then abandons it)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            await anyio.sleep(left)
        except anyio.get_cancelled_exc_class():
            pass  # deaf to its timeout, on purpose
