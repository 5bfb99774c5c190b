"""Hostile handlers for the process-level tests (``test_hostile_process``): one calls
``sys.exit()``, one raises ``KeyboardInterrupt``, one ignores its cancellation, one
blocks the event loop, one is well-behaved.  Each appends a line to the file named by
``HOSTILE_TEST_RUNS`` when it starts (one ``write`` per line)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from broker import Router, Task

router = Router()


def _started(kind: str) -> None:
    fd = os.open(os.environ["HOSTILE_TEST_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind}\n".encode())
    finally:
        os.close(fd)


@router.handler("exits")
async def exits(task: Task[Any]) -> None:
    _started("exits")
    sys.exit(3)  # as a library deep inside a handler might


@router.handler("interrupts")
async def interrupts(task: Task[Any]) -> None:
    _started("interrupts")
    raise KeyboardInterrupt


@router.handler("stubborn", timeout_s=600)
async def stubborn(task: Task[Any]) -> str:
    _started("stubborn")
    while True:
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            _started("stubborn cancelled")


@router.handler("blocks", timeout_s=600)
async def blocks(task: Task[Any]) -> str:
    _started("blocks")
    time.sleep(60)  # noqa: ASYNC251 - the hostile part: the event loop stops
    return "late"


@router.handler("ok")
async def ok(task: Task[Any]) -> str:
    _started("ok")
    return "fine"
