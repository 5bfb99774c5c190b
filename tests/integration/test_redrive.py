"""``broker redrive`` against moto while a real broker consumes the destination queue.

The broker dead-letters poison and unknown-type messages; the redrive moves them back
while that broker runs.  It must finish with its counts (it used to pass the messages
back and forth with the broker for ever), the DLQ must not grow, and a missing
destination must be found out before any DLQ message is received (and so hidden).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from broker import BrokerSettings, Outcome, QueueNotFound, QueueSettings, Router
from broker.aws.clients import open_clients
from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from broker.sqs.redrive import redrive
from tests.flows import queue_depth, run_executions, running

pytestmark = pytest.mark.usefixtures("aws_env")

_POISON = 6
_UNKNOWN = 3


def _settings(aws: EmbeddedAws, *queues: QueueSettings) -> BrokerSettings:
    return BrokerSettings(
        queues=queues,
        entry_points=False,
        aws_region=aws.region,
        aws_endpoint_url=aws.endpoint_url,
        delete_linger_s=0.02,
        http_port=0,
        retry_max_delay_s=1,
    )


def _counts(aws: EmbeddedAws, url: str) -> tuple[int, int]:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def _settle(aws: EmbeddedAws, url: str, want: int, timeout_s: float = 20) -> None:
    with anyio.fail_after(timeout_s):
        while await queue_depth(aws, url) != want:
            await anyio.sleep(0.1)


def _bodies(aws: EmbeddedAws, url: str) -> list[tuple[str, dict[str, Any]]]:
    sqs = aws.client("sqs")
    out: list[tuple[str, dict[str, Any]]] = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=30
    ).get("Messages"):
        out.extend((m["Body"], m.get("MessageAttributes", {})) for m in batch)
    return out


async def test_redrive_finishes_while_a_broker_consumes_the_queue(
    aws: EmbeddedAws, seed_flows: SeedFlows
) -> None:
    source = seed_flows.queues["callback"]
    sqs = aws.client("sqs")
    dlq = sqs.create_queue(QueueName=source.rsplit("/", 1)[-1] + "-dlq")["QueueUrl"]
    settings = _settings(
        aws, QueueSettings(name=source, type_field="input.kind", dead_letter_queue=dlq)
    )
    # A broker with no handlers: every task is an unknown type.
    async with running(settings, Router()) as broker:
        for n in range(_POISON):
            sqs.send_message(QueueUrl=source, MessageBody=f"poison {n}")
        results = await run_executions(
            aws, seed_flows.state_machines["callback"], [{"kind": "nobody"}] * _UNKNOWN
        )
        assert [r.error for r in results] == ["Broker.UnknownMessageType"] * _UNKNOWN
        await _settle(aws, dlq, _POISON + _UNKNOWN)
        await _settle(aws, source, 0)

        def dropped() -> int:
            return broker.stats.total(Outcome.TASK_CLOSED) + broker.stats.total(Outcome.DUPLICATE)

        # Counted from here: a copy received again as its first delivery was deleted is a
        # duplicate too, and is not the redrive's doing.
        dropped_before = dropped()
        async with open_clients(settings) as clients:
            with anyio.fail_after(30):
                report = await redrive(clients.sqs, dlq, sources=[source])

        # The broker dead-letters the poison again, once (the run leaves its own copies
        # alone).  An unknown-type copy is dropped: here as a duplicate, since this
        # process settled its task moments ago (sqs.memory); on another replica when
        # Step Functions answers "task closed" (AWS, the fakes; moto accepts a second
        # SendTaskFailure for a failed execution, so there it would come back to the DLQ
        # once).
        def settled_count() -> int:
            return dropped() - dropped_before

        with anyio.fail_after(20):
            while (
                await queue_depth(aws, source)
                or await queue_depth(aws, dlq) + settled_count() != _POISON + _UNKNOWN
            ):
                await anyio.sleep(0.1)
        await anyio.sleep(2)  # a little longer: nothing more may arrive
        depth = await queue_depth(aws, dlq)
        assert depth + settled_count() == _POISON + _UNKNOWN, "the DLQ grew"
        assert await queue_depth(aws, source) == 0

    assert report.at_start == _POISON + _UNKNOWN
    assert report.total_moved == _POISON + _UNKNOWN, report.lines()
    assert report.failed == 0
    copies = await anyio.to_thread.run_sync(lambda: _bodies(aws, dlq))
    bodies = sorted(body for body, _ in copies)
    assert len(bodies) == depth
    assert [b for b in bodies if b.startswith("poison")] == sorted(
        f"poison {n}" for n in range(_POISON)
    )
    assert all("broker.redriven" in attributes for _, attributes in copies)


async def test_a_missing_destination_leaves_the_dlq_untouched(aws: EmbeddedAws) -> None:
    sqs = aws.client("sqs")
    dlq = sqs.create_queue(QueueName="redrive-missing-dlq")["QueueUrl"]
    for n in range(4):
        sqs.send_message(QueueUrl=dlq, MessageBody=f"copy {n}")
    settings = _settings(aws, QueueSettings(name=dlq))
    async with open_clients(settings) as clients:
        with pytest.raises(QueueNotFound, match="missing-queue"):
            await redrive(clients.sqs, dlq, sources=[], to="missing-queue")
        missing_url = dlq.rsplit("/", 1)[0] + "/missing-queue"
        with pytest.raises(QueueNotFound, match="missing-queue"):
            await redrive(clients.sqs, dlq, sources=[], to=missing_url)
        with pytest.raises(QueueNotFound, match="missing-dlq"):
            await redrive(clients.sqs, "missing-dlq", sources=[dlq])
    # Nothing was received, so nothing is hidden for the 60 s hold.
    assert _counts(aws, dlq) == (4, 0)
