"""Handlers for the fault-injection suite, loaded by ``broker run`` in a subprocess.

Each message type decides its outcome from the payload alone (never from timing, the
receive count aside), so the suite knows in advance what every workflow task must end
with, however often the broker is killed or a call fails.

Each run of a handler appends the task's ``n`` to the file ``FAULT_RUNS_FILE`` names
(when set): the suite counts handler runs per task from it.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from pydantic import BaseModel

from broker import Router, Task, TaskFailed

router = Router()

_RUNS_FILE = os.environ.get("FAULT_RUNS_FILE")


def _ran(task: Task[Any]) -> None:
    """One line per handler run; appends of a short line do not interleave."""
    if _RUNS_FILE:
        with open(_RUNS_FILE, "a", encoding="utf-8") as runs:
            runs.write(f"{task.payload['n']}\n")


class Order(BaseModel):
    n: int


@router.handler("echo")
async def echo(task: Task[Any]) -> dict[str, Any]:
    _ran(task)
    return {"n": task.payload["n"]}


@router.handler("reject")
async def reject(task: Task[Any]) -> None:
    _ran(task)
    raise TaskFailed("Order.Rejected", f"order {task.payload['n']} is out of stock")


@router.handler("flaky", max_attempts=10)
async def flaky(task: Task[Any]) -> dict[str, Any]:
    _ran(task)
    # Fails its first delivery only: retried with backoff, then succeeds.
    if task.receive_count == 1:
        raise ConnectionError("the partner API reset the connection")
    return {"n": task.payload["n"], "recovered": True}


@router.handler("slow", timeout_s=30)
async def slow(task: Task[Any]) -> dict[str, Any]:
    _ran(task)
    # Longer than half the queue's visibility timeout: the supervisor must extend it.
    await anyio.sleep(task.payload["sleep_s"])
    return {"n": task.payload["n"], "slow": True}


@router.handler("heartbeat", heartbeat_s=0.3)
async def heartbeat(task: Task[Any]) -> dict[str, Any]:
    _ran(task)
    await anyio.sleep(1.0)
    return {"n": task.payload["n"], "heartbeats": True}


@router.handler("exhaust", max_attempts=3)
async def exhaust(task: Task[Any]) -> None:
    _ran(task)
    raise RuntimeError(f"order {task.payload['n']} can never be processed")


@router.handler("typed")
async def typed(task: Task[Order]) -> dict[str, int]:
    return {"n": task.payload.n}
