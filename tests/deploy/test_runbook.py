"""What docs/operations.md's dead-letter runbook says about a redrive, shown on the fakes."""

from __future__ import annotations

import re
from typing import Any

from broker import Outcome, QueueSettings, Router, Task
from broker.sqs.redrive import redrive
from broker.testing import FakeSqs, TestBroker
from tests.deploy.test_deploy import OPERATIONS
from tests.unit.conftest import make_settings


class Downstream(Exception):
    """The handler's downstream failing: its attempts run out."""


async def test_a_redriven_exhausted_message_runs_its_handler_again_then_is_task_closed() -> None:
    runs = 0
    router = Router()

    @router.handler("charge", max_attempts=1)
    async def charge(task: Task[Any]) -> None:
        nonlocal runs
        runs += 1  # the side effect: a charge, an e-mail, a write
        raise Downstream("payment provider down")

    sqs = FakeSqs()
    sqs.create_queue("orders")
    sqs.create_queue("orders-dlq")
    queue = QueueSettings(name="orders", wait_time_s=1, dead_letter_queue="orders-dlq")
    async with TestBroker(router, make_settings(queue), sqs=sqs) as tb:
        token = await tb.start_task({}, message_type="charge")
        await tb.wait_idle()
        assert tb.broker.stats.total(Outcome.EXHAUSTED) == 1
        assert tb.sfn.outcomes[token].error == "Downstream"
        assert (runs, sqs.count("orders-dlq")) == (1, 1)

        # Redriven later, or to another replica: this process's memory of settled
        # tasks (sqs.memory) would delete the copy as a duplicate without a run.
        tb.broker.consumers[0]._processor.memory.clear()
        report = await redrive(sqs, "orders-dlq", sources=["orders"])
        assert report.total_moved == 1
        await tb.wait_idle()
    # The handler ran again, side effect and all, before Step Functions said "closed".
    assert runs == 2
    assert tb.broker.stats.total(Outcome.TASK_CLOSED) == 1
    assert sqs.count("orders") == 0


def test_the_runbook_says_a_redrive_runs_the_handler_again() -> None:
    text = re.sub(r"\s+", " ", OPERATIONS.read_text())
    section = text[text.index("**3. Send them back**") : text.index("**4. Check**")]
    assert "Re-driving is safe for the workflows" in section
    assert "runs its handler once more" in section
    assert 'before Step Functions answers "task closed"' in section
