"""Handlers that make the broker use every AWS action it can (tests/deploy/test_iam_calls.py)."""

from __future__ import annotations

from typing import Any

import anyio

from broker import Router, Task

router = Router()


class Flaky(Exception):
    """A handler failure the broker retries."""


@router.handler("beat", heartbeat_s=0.1, timeout_s=30)
async def beat(task: Task[Any]) -> dict[str, bool]:
    # Long enough for a heartbeat: SendTaskHeartbeat (the token is closed: it ends here).
    await anyio.sleep(5)
    return {"beat": True}


@router.handler("flaky", max_attempts=2)
async def flaky(task: Task[Any]) -> None:
    # Retried once (the message's visibility is changed), then exhausted: SendTaskFailure
    # and a copy in the dead-letter queue.
    raise Flaky("always")


@router.handler("once", idempotent=True, timeout_s=30)
async def once(task: Task[Any]) -> dict[str, bool]:
    # Claimed and recorded in the idempotency table; a second copy reads the record.
    return {"once": True}


@router.handler("once_flaky", idempotent=True, timeout_s=30, max_attempts=2)
async def once_flaky(task: Task[Any]) -> None:
    # A failed attempt releases its claim (DeleteItem).
    raise Flaky("always")
