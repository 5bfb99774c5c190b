"""A minimal approval handler for the decision-link tests (the shipped one is
handlers.approval): it makes the links and writes them, with the execution's ``case``,
to the file named by ``DECISION_TEST_LINKS``, one JSON object per line.  The test reads
them as the person's mailbox would.  Never the token: only the links, which seal it."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio

from broker import Deferred, Router, Task

router = Router()


@router.handler("approval-test", decisions=True)
async def approval(task: Task[dict[str, Any]]) -> Deferred:
    links = task.decision_links(
        subject=f"Case {task.payload.get('case')}",
        details=str(task.payload.get("details", "")),
        approve={"approved": True, "case": task.payload.get("case")},
        reject=("Approval.Rejected", "Rejected by the reviewer"),
        ttl_s=task.payload.get("ttl_s"),
    )
    line = json.dumps(
        {"case": task.payload.get("case"), "approve": links.approve_url, "reject": links.reject_url}
    )
    async with await anyio.open_file(os.environ["DECISION_TEST_LINKS"], "a") as out:
        await out.write(line + "\n")
    return Deferred("links written")
