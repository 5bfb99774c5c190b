"""The drain on the embedded moto server: a long poll open at the stop loses nothing.

moto, like SQS, goes on waiting for messages for a ReceiveMessage whose caller has gone:
a message arriving then is taken by the dead call and stays hidden for its visibility
timeout.  The broker leaves the poll open instead and hands what it returns back.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio

from broker import BrokerSettings, QueueSettings, Router, Task
from broker._emulator import EmbeddedAws
from tests.flows import running


async def test_a_message_arriving_during_the_drain_is_visible_again_at_once(
    aws: EmbeddedAws, aws_env: dict[str, str]
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(
        QueueName=f"drain-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "30"}
    )["QueueUrl"]
    settings = BrokerSettings(
        queues=(QueueSettings(name=url, wait_time_s=3, receivers=1, default_handler="x"),),
        entry_points=False,
        http_port=None,
        shutdown_grace_s=10,
    )
    router = Router()

    @router.handler("x")
    async def never_called(task: Task[Any]) -> None:
        raise AssertionError("nothing may start during the drain")

    began = 0.0
    async with running(settings, router) as broker:
        with anyio.fail_after(10):
            while not broker.consumers[0].receiving:
                await anyio.sleep(0.02)
        broker.request_stop()
        began = time.monotonic()
        await anyio.to_thread.run_sync(
            lambda: sqs.send_message(QueueUrl=url, MessageBody='{"TaskToken": "t"}')
        )
    stopped_in_s = time.monotonic() - began
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert (
        attributes["ApproximateNumberOfMessages"],
        attributes["ApproximateNumberOfMessagesNotVisible"],
    ) == ("1", "0")
    assert stopped_in_s < 3 + 2  # the long poll's wait at most, not the grace
    received = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"])
    assert received["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
