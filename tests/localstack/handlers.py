"""Handlers for the LocalStack suite: the seed handlers plus slow ones for heartbeats and drain.

A ``broker run`` subprocess loads it with
``BROKER_HANDLERS='["tests.localstack.handlers:router"]'``.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel

from broker import Router, Task
from handlers.seeds import router as seed_router

router = Router()
router.include(seed_router)


class Sleep(BaseModel):
    sleep_s: float


@router.handler("slow-heartbeat", heartbeat_s=0.5)
async def slow_with_heartbeats(task: Task[Sleep]) -> dict[str, Any]:
    await anyio.sleep(task.payload.sleep_s)
    return {"slept": task.payload.sleep_s}


@router.handler("slow-silent")
async def slow_without_heartbeats(task: Task[Sleep]) -> dict[str, Any]:
    await anyio.sleep(task.payload.sleep_s)
    return {"slept": task.payload.sleep_s}
