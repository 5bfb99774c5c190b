"""The seed documents' workers, as broker handlers.

- ``callback``: the SQS callback Lambda (seed 000) — returns ``{"body": "Return from callback"}``.
- ``purchase`` / ``refund``: the Choice-state transaction processors (seed 001).
- ``verify``: the activity worker's rule (seed 003) — succeed with ``{"result": input}``
  when ``input.in == "SUCCESS"``, else fail with ``NO_SUCCESS_INPUT``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from broker import Router, Task, TaskFailed

router = Router()


class Transaction(BaseModel):
    model_config = ConfigDict(extra="allow")

    TransactionType: str


class TransactionResult(BaseModel):
    TransactionType: str
    Timestamp: str
    Message: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@router.handler("callback")
async def callback(task: Task[Any]) -> dict[str, str]:
    return {"body": "Return from callback"}


@router.handler("purchase", "PURCHASE")
async def process_purchase(task: Task[Transaction]) -> TransactionResult:
    return TransactionResult(
        TransactionType=task.payload.TransactionType,
        Timestamp=_now(),
        Message="Hello from the broker inside the ProcessPurchase handler",
    )


@router.handler("refund", "REFUND")
async def process_refund(task: Task[Transaction]) -> TransactionResult:
    return TransactionResult(
        TransactionType=task.payload.TransactionType,
        Timestamp=_now(),
        Message="Hello from Refund Processor!",
    )


@router.handler("verify")
async def verify(task: Task[dict[str, Any]]) -> dict[str, Any]:
    if task.payload.get("in") == "SUCCESS":
        return {"result": task.payload}
    raise TaskFailed("NO_SUCCESS_INPUT", 'Input is not "SUCCESS"')
