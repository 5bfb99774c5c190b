"""The drain on the embedded moto server: a long poll open at the stop loses nothing.

moto, like SQS, goes on waiting for messages for a ReceiveMessage whose caller has gone:
a message arriving then is taken by the dead call and stays hidden for its visibility
timeout.  While the drain lasts (a handler still runs), the broker leaves its poll open
instead and hands what it returns back.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio

from broker import BrokerSettings, QueueSettings, Router, Task
from broker.local.moto import EmbeddedAws
from tests.flows import running


async def test_a_message_arriving_during_the_drain_is_visible_again_at_once(
    aws: EmbeddedAws, aws_env: dict[str, str]
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(
        QueueName=f"drain-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "30"}
    )["QueueUrl"]
    settings = BrokerSettings(
        queues=(QueueSettings(name=url, wait_time_s=20, receivers=1),),
        entry_points=False,
        http_port=None,
        shutdown_grace_s=10,
    )
    router = Router()
    started: list[str] = []

    @router.handler("slow")
    async def slow(task: Task[Any]) -> None:
        started.append("slow")
        await anyio.sleep(3)  # the drain lasts this long

    @router.handler("late")
    async def late(task: Task[Any]) -> None:
        raise AssertionError("nothing may start during the drain")

    def send(message_type: str) -> None:
        sqs.send_message(
            QueueUrl=url,
            MessageBody='{"TaskToken": "t"}',
            MessageAttributes={"type": {"DataType": "String", "StringValue": message_type}},
        )

    began = 0.0
    async with running(settings, router) as broker:
        await anyio.to_thread.run_sync(send, "slow")
        with anyio.fail_after(10):
            while not (started and broker.consumers[0].receiving):
                await anyio.sleep(0.02)
        broker.request_stop()
        began = time.monotonic()
        await anyio.to_thread.run_sync(send, "late")
        with anyio.fail_after(2.5):  # handed back while the slow handler still runs
            while True:
                attributes = await anyio.to_thread.run_sync(
                    lambda: sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                    )["Attributes"]
                )
                if attributes["ApproximateNumberOfMessages"] == "1":
                    break
                await anyio.sleep(0.05)
    stopped_in_s = time.monotonic() - began
    assert stopped_in_s < 3 + 2  # the handler's 3 s, not the poll's 20 s
    received = sqs.receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], AttributeNames=["ApproximateReceiveCount"]
    )
    (message,) = received["Messages"]
    assert message["MessageAttributes"]["type"]["StringValue"] == "late"
    assert message["Attributes"]["ApproximateReceiveCount"] == "2"  # ours, then this one
