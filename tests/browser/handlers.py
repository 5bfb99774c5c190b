"""The browser suite's approval-like plugin: it makes a task's decision links and hands
them to the test through a file (the SNS path is handlers.approval's and the demo's).

``BROWSER_TEST_LINKS`` names the directory; each task writes ``<id>.json`` there with
its two URLs and their expiry.  The URLs carry the token sealed, never in the clear.
"""

from __future__ import annotations

import json
import os
from typing import Final

import anyio
from pydantic import BaseModel

from broker import Deferred, Router, Task

LINKS_DIR: Final = "BROWSER_TEST_LINKS"

router = Router()


class Approval(BaseModel):
    id: str
    subject: str = ""
    details: str = ""


@router.handler("approval", decisions=True)
async def approval(task: Task[Approval]) -> Deferred:
    links = task.decision_links(
        subject=task.payload.subject,
        details=task.payload.details,
        approve={"approved": True},
        reject=("Approval.Rejected", "Rejected by the reviewer"),
    )
    written = {
        "approve_url": links.approve_url,
        "reject_url": links.reject_url,
        "expires_at": links.expires_at.isoformat(),
    }
    path = anyio.Path(os.environ[LINKS_DIR]) / f"{task.payload.id}.json"
    await path.with_suffix(".tmp").write_text(json.dumps(written))
    await path.with_suffix(".tmp").rename(path)  # the test never reads half a file
    return Deferred("sent to the browser suite")
