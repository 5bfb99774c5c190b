"""The loopback AWS stub, driven by real aioboto3 clients: SQS and Step Functions
semantics, the token registry, injected faults, the counters, and the broker end to end."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import aioboto3
import anyio
import pytest
from botocore.exceptions import ClientError
from botocore.retries.standard import ThrottledRetryableChecker

from awsstub import StubControl, StubProcess, StubServer
from broker import Broker, BrokerSettings, QueueSettings
from handlers.seeds import router as seed_router

from .conftest import AsyncControl, client_config


def code_of(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


async def make_queue(sqs: Any, name: str = "q", **attributes: str) -> str:
    response = await sqs.create_queue(QueueName=name, Attributes=attributes)
    return str(response["QueueUrl"])


async def receive(sqs: Any, url: str, limit: int = 10, wait_s: int = 0, **kw: Any) -> list[Any]:
    response = await sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=limit,
        WaitTimeSeconds=wait_s,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        MessageAttributeNames=["All"],
        **kw,
    )
    return list(response.get("Messages", []))


# -- SQS ----------------------------------------------------------------------------


async def test_send_receive_delete_with_attributes_and_md5(
    stub: StubServer, sqs: Any, control: AsyncControl
) -> None:
    url = await make_queue(sqs)
    assert url == f"{stub.endpoint_url}/000000000000/q"
    assert (await sqs.get_queue_url(QueueName="q"))["QueueUrl"] == url
    attributes = {"type": {"DataType": "String", "StringValue": "callback"}}
    sent = await sqs.send_message(
        QueueUrl=url, MessageBody='{"a": 1}', MessageAttributes=attributes
    )
    assert sent["MD5OfMessageBody"] == hashlib.md5(b'{"a": 1}').hexdigest()

    [message] = await receive(sqs, url)
    assert message["Body"] == '{"a": 1}'
    assert message["MD5OfBody"] == hashlib.md5(b'{"a": 1}').hexdigest()
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert int(message["Attributes"]["SentTimestamp"]) > 0
    assert message["MessageAttributes"] == attributes
    assert await receive(sqs, url) == [], "an in-flight message is not delivered again"

    await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    queue = (await control.stats())["queues"]["q"]
    assert queue == {
        "visible": 0,
        "in_flight": 0,
        "delayed": 0,
        "received": 1,
        "redelivered": 0,
        "deleted": 1,
        "sent": 1,
    }


async def test_unknown_queue_is_the_modeled_sqs_error(sqs: Any) -> None:
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        await sqs.get_queue_url(QueueName="nope")
    with pytest.raises(ClientError) as caught:
        await sqs.receive_message(QueueUrl="http://127.0.0.1:1/000000000000/nope")
    assert code_of(caught.value) == "AWS.SimpleQueueService.NonExistentQueue"


async def test_visibility_zero_redelivers_with_a_new_handle_and_a_higher_count(
    sqs: Any, control: AsyncControl
) -> None:
    url = await make_queue(sqs)
    await sqs.send_message(QueueUrl=url, MessageBody="m")
    [first] = await receive(sqs, url)
    await sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    [second] = await receive(sqs, url)
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    assert second["MessageId"] == first["MessageId"]

    # A stale handle still deletes the message, as in SQS.
    await sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    stats = (await control.stats())["queues"]["q"]
    assert (stats["received"], stats["redelivered"], stats["deleted"]) == (2, 1, 1)
    assert (stats["visible"], stats["in_flight"]) == (0, 0)
    with pytest.raises(ClientError) as caught:
        await sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=5
        )
    assert code_of(caught.value) == "AWS.SimpleQueueService.MessageNotInflight"


async def test_an_expired_visibility_timeout_redelivers(sqs: Any) -> None:
    url = await make_queue(sqs)
    await sqs.send_message(QueueUrl=url, MessageBody="m")
    assert len(await receive(sqs, url, VisibilityTimeout=1)) == 1
    assert await receive(sqs, url) == []
    # The long poll is woken by the visibility timer, well before its 10 s wait.
    [again] = await asyncio.wait_for(receive(sqs, url, wait_s=10), timeout=5)
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"


async def test_long_poll_wakes_as_soon_as_a_message_arrives(sqs: Any) -> None:
    url = await make_queue(sqs)
    poll = asyncio.ensure_future(receive(sqs, url, wait_s=20))
    await asyncio.sleep(0.2)
    assert not poll.done(), "an empty queue holds the long poll"
    await sqs.send_message(QueueUrl=url, MessageBody="late")
    messages = await asyncio.wait_for(poll, timeout=5)
    assert [m["Body"] for m in messages] == ["late"]


async def test_long_poll_on_an_empty_queue_returns_empty_after_the_wait(sqs: Any) -> None:
    url = await make_queue(sqs)
    assert await asyncio.wait_for(receive(sqs, url, wait_s=1), timeout=5) == []


async def test_batches_send_delay_receive_and_per_entry_delete_outcomes(
    sqs: Any, control: AsyncControl
) -> None:
    url = await make_queue(sqs)
    entries: list[dict[str, Any]] = [{"Id": str(i), "MessageBody": f"m{i}"} for i in range(9)]
    entries.append({"Id": "late", "MessageBody": "late", "DelaySeconds": 30})
    sent = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert len(sent["Successful"]) == 10
    assert not sent.get("Failed")

    messages = await receive(sqs, url, limit=10)
    assert sorted(m["Body"] for m in messages) == [f"m{i}" for i in range(9)]
    stats = (await control.stats())["queues"]["q"]
    assert (stats["in_flight"], stats["delayed"], stats["sent"]) == (9, 1, 10)

    deletes = [{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    deletes.append({"Id": "bad", "ReceiptHandle": "not-a-handle"})
    result = await sqs.delete_message_batch(QueueUrl=url, Entries=deletes)
    assert len(result["Successful"]) == 9
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in result["Failed"]] == [
        ("bad", "ReceiptHandleIsInvalid", True)
    ]
    assert (await control.stats())["queues"]["q"]["deleted"] == 9

    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest):
        await sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(11)]
        )


async def test_change_visibility_batch_and_purge(sqs: Any, control: AsyncControl) -> None:
    url = await make_queue(sqs)
    await sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(3)]
    )
    messages = await receive(sqs, url)
    result = await sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages)
        ],
    )
    assert len(result["Successful"]) == 3
    assert len(await receive(sqs, url)) == 3
    await sqs.purge_queue(QueueUrl=url)
    assert await receive(sqs, url) == []
    assert (await control.stats())["queues"]["q"]["in_flight"] == 0


async def test_queue_attributes_and_redrive_to_the_dead_letter_queue(
    sqs: Any, control: AsyncControl
) -> None:
    dlq = await make_queue(sqs, "dlq")
    dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})
    url = await make_queue(sqs, "src", VisibilityTimeout="7", RedrivePolicy=policy)
    await sqs.send_message(QueueUrl=url, MessageBody="poison")
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))[
        "Attributes"
    ]
    assert attributes["VisibilityTimeout"] == "7"
    assert attributes["RedrivePolicy"] == policy
    assert attributes["ApproximateNumberOfMessages"] == "1"
    assert "FifoQueue" not in attributes, "as SQS: named on FIFO queues only"

    [message] = await receive(sqs, url)
    await sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )
    assert await receive(sqs, url) == [], "past maxReceiveCount the message moves"
    [moved] = await control.queue_messages("dlq")
    assert moved["body"] == "poison"
    assert moved["visible"] is True


# -- Step Functions ----------------------------------------------------------------------


async def test_token_registry_success_duplicate_unknown_and_failure(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    await control.create_queue("q")
    assert await control.add_tasks("q", count=3, type="callback", input={"n": 1}) == 3
    url = (await sqs.get_queue_url(QueueName="q"))["QueueUrl"]
    bodies = [json.loads(m["Body"]) for m in await receive(sqs, url)]
    assert [(b["type"], b["input"]) for b in bodies] == [("callback", {"n": 1})] * 3
    first, second, third = (b["taskToken"] for b in bodies)

    assert await sfn.send_task_heartbeat(taskToken=first) is not None
    await sfn.send_task_success(taskToken=first, output='{"ok": true}')
    with pytest.raises(sfn.exceptions.TaskTimedOut):
        await sfn.send_task_success(taskToken=first, output="{}")
    with pytest.raises(sfn.exceptions.TaskTimedOut):
        await sfn.send_task_heartbeat(taskToken=first)
    with pytest.raises(sfn.exceptions.InvalidToken):
        await sfn.send_task_success(taskToken="never-minted", output="{}")
    await sfn.send_task_failure(taskToken=second, error="Broker.X", cause="because")
    with pytest.raises(sfn.exceptions.InvalidOutput):
        await sfn.send_task_success(taskToken=third, output="not json")
    with pytest.raises(sfn.exceptions.InvalidOutput):
        await sfn.send_task_success(taskToken=third, output=json.dumps("x" * 262_144))

    tasks = await control.tasks()
    assert tasks[first] == {
        "status": "succeeded",
        "output": '{"ok": true}',
        "error": None,
        "cause": None,
        "completions": 2,
        "heartbeats": 1,
    }
    assert (tasks[second]["status"], tasks[second]["error"]) == ("failed", "Broker.X")
    assert tasks[second]["cause"] == "because"
    assert tasks[third]["status"] == "open"
    stats = await control.stats()
    assert stats["tasks"] == {
        "total": 3,
        "open": 1,
        "succeeded": 1,
        "failed": 1,
        "duplicates": 1,
        "unknown_tokens": 1,
        "heartbeats": 1,
    }
    assert stats["latency_ms"]["count"] == 2
    assert 0 <= stats["latency_ms"]["p50"] <= stats["latency_ms"]["max"]
    assert stats["calls"]["SendTaskSuccess"] == 5


async def test_composed_messages_register_their_tokens(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    attributes = {"type": {"DataType": "String", "StringValue": "x"}}
    accepted = await control.add_messages(
        "q",
        [
            {"body": "not json at all", "attributes": attributes, "token": None},
            {"body": '{"MyTaskToken": "tok-1"}', "token": "tok-1"},
        ],
    )
    assert accepted == 2
    listed = await control.queue_messages("q")
    assert [(m["body"], m["attributes"], m["receive_count"]) for m in listed] == [
        ("not json at all", attributes, 0),
        ('{"MyTaskToken": "tok-1"}', {}, 0),
    ]
    await sfn.send_task_success(taskToken="tok-1", output="{}")
    assert (await control.stats())["tasks"]["succeeded"] == 1


async def test_arrival_rate_spreads_availability(sqs: Any, control: AsyncControl) -> None:
    await control.add_tasks("q", count=5, rate_per_s=5)
    queue = (await control.stats())["queues"]["q"]
    assert queue["visible"] + queue["delayed"] == 5
    assert queue["delayed"] >= 2, "at 5/s the last ones arrive over 0.8 s"
    url = (await sqs.get_queue_url(QueueName="q"))["QueueUrl"]
    got: list[Any] = []
    with anyio.fail_after(5):
        while len(got) < 5:
            got += await receive(sqs, url, wait_s=1)
    assert (await control.stats())["queues"]["q"]["delayed"] == 0


async def test_timed_arrivals_do_not_count_the_stubs_own_set_up_as_latency(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    # Minting 40,000 tokens blocks the stub's loop for most of a second: a schedule timed
    # from before that made its first messages look that late (the p99 of a bench run).
    # Checked against the client's own clock, not a fixed bound: the stub may not say a
    # task waited longer than the client has existed for it since ``add_tasks`` answered
    # (a busy machine slows both alike; the set-up counted as latency does not).
    await control.add_tasks("q", count=40_000, rate_per_s=1_000)
    added = time.perf_counter()
    url = (await sqs.get_queue_url(QueueName="q"))["QueueUrl"]
    with anyio.fail_after(10):
        got: list[Any] = []
        while not got:
            got = await receive(sqs, url, limit=1, wait_s=1)
    await sfn.send_task_success(taskToken=json.loads(got[0]["Body"])["taskToken"], output="{}")
    since_added_ms = (time.perf_counter() - added) * 1000
    latency = (await control.stats())["latency_ms"]
    assert latency["count"] == 1
    # 300 ms: the client's clock starts when it gets to run after the answer, which on a
    # busy machine is up to ~150 ms after the stub's schedule began (measured beside two
    # busy loops); the set-up counted as latency was 700-1,000 ms over.
    assert latency["max"] <= since_added_ms + 300, (latency, since_added_ms)


# -- faults ----------------------------------------------------------------------------


async def test_throttling_is_seen_by_botocore_as_throttling_and_retried(
    stub: StubServer, control: AsyncControl
) -> None:
    await control.create_queue("q")
    await control.add_tasks("q", count=1)
    await control.set_faults(throttle_rate=1.0, apis=["SendTaskSuccess", "ReceiveMessage"])
    session = aioboto3.Session(region_name="us-east-1")
    config = client_config(attempts=2)
    async with (
        session.client("stepfunctions", endpoint_url=stub.endpoint_url, config=config) as sfn,
        session.client("sqs", endpoint_url=stub.endpoint_url, config=config) as sqs,
    ):
        with pytest.raises(ClientError) as sfn_error:
            await sfn.send_task_success(taskToken="t", output="{}")
        with pytest.raises(ClientError) as sqs_error:
            await sqs.receive_message(QueueUrl=f"{stub.endpoint_url}/000000000000/q")
        # Heartbeats are not in `apis`: untouched.
        with pytest.raises(sfn.exceptions.InvalidToken):
            await sfn.send_task_heartbeat(taskToken="t")
    throttle_codes = ThrottledRetryableChecker._THROTTLED_ERROR_CODES  # type: ignore[attr-defined]
    for caught in (sfn_error.value, sqs_error.value):
        assert code_of(caught) in throttle_codes
        assert caught.response["ResponseMetadata"]["RetryAttempts"] == 1, "botocore retried"
    stats = await control.stats()
    assert stats["faults"]["throttle"] == {"SendTaskSuccess": 2, "ReceiveMessage": 2}
    assert stats["tasks"]["unknown_tokens"] == 1, "only the heartbeat reached the registry"


async def test_error_rate_answers_500_internal_failure(sfn: Any, control: AsyncControl) -> None:
    await control.set_faults(error_rate=1.0)
    with pytest.raises(ClientError) as caught:
        await sfn.send_task_success(taskToken="t", output="{}")
    assert code_of(caught.value) == "InternalFailure"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert (await control.stats())["faults"]["error"] == {"SendTaskSuccess": 1}


async def test_drops_before_lose_the_call_and_drops_after_keep_its_effect(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    await control.add_tasks("q", count=10)
    url = (await sqs.get_queue_url(QueueName="q"))["QueueUrl"]
    tokens = [json.loads(m["Body"])["taskToken"] for m in await receive(sqs, url)]
    await control.set_faults(drop_rate=1.0, apis=["SendTaskSuccess"], seed=4)
    for token in tokens:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any connection error
            await sfn.send_task_success(taskToken=token, output="{}")
        assert not isinstance(caught.value, ClientError), "no answer at all"
    stats = await control.stats()
    after = stats["faults"]["drop_after"].get("SendTaskSuccess", 0)
    before = stats["faults"]["drop_before"].get("SendTaskSuccess", 0)
    assert after + before == 10
    assert after > 0
    assert before > 0
    assert stats["tasks"]["succeeded"] == after, "a drop after the call keeps its effect"
    assert stats["tasks"]["open"] == before

    await control.set_faults()  # faults off: a retry of a dropped-after call is a duplicate
    tasks = await control.tasks()
    done = next(t for t in tokens if tasks[t]["status"] == "succeeded")
    with pytest.raises(sfn.exceptions.TaskTimedOut):
        await sfn.send_task_success(taskToken=done, output="{}")
    assert (await control.stats())["tasks"]["duplicates"] == 1


async def test_latency_parts_say_where_the_time_went(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    await control.add_tasks("q", count=1)
    url = (await sqs.get_queue_url(QueueName="q"))["QueueUrl"]
    await control.set_faults(latency_ms=150, apis=["SendTaskSuccess"])
    await asyncio.sleep(0.2)  # in the queue
    (message,) = await receive(sqs, url)
    await asyncio.sleep(0.1)  # with the consumer
    await sfn.send_task_success(taskToken=json.loads(message["Body"])["taskToken"], output="{}")
    parts = (await control.stats())["latency_parts_ms"]
    assert parts["count"] == 1
    queue_ms, consumer_ms, call_ms = (parts["all"][k] for k in ("queue", "consumer", "call"))
    assert 195 <= queue_ms < 400
    assert 95 <= consumer_ms < 300
    assert 145 <= call_ms < 350, "the injected latency is the call's own part"
    assert parts["slowest_1pct"] == parts["all"]
    lag = parts["stub_sleep_lag"]
    assert 0 <= lag["p50"] <= lag["max"] < 100
    await control.reset_stats()
    assert (await control.stats())["latency_parts_ms"] == {}


async def test_injected_latency_does_not_hold_up_other_calls(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    url = await make_queue(sqs)
    await control.set_faults(latency_ms=800, apis=["SendTaskSuccess"])
    slow = asyncio.ensure_future(sfn.send_task_success(taskToken="t", output="{}"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(sqs.send_message(QueueUrl=url, MessageBody="quick"), timeout=0.6)
    assert not slow.done(), "the delayed call is still sleeping"
    with pytest.raises(sfn.exceptions.InvalidToken):
        await slow


async def test_control_validation_and_reset(control: AsyncControl) -> None:
    with pytest.raises(RuntimeError, match="400"):
        await control.set_faults(throttle_rate=0.7, error_rate=0.7)
    with pytest.raises(RuntimeError, match="400"):
        await control.set_faults(nonsense=1)
    await control.add_tasks("q", count=2)
    await control.set_faults(latency_ms=5)
    await control.reset()
    stats = await control.stats()
    assert stats["queues"] == {}
    assert stats["tasks"]["total"] == 0
    assert stats["calls"] == {}
    assert (await control.wait_closed(timeout_s=1))["open"] == 0


async def test_reset_stats_keeps_queues_and_open_tokens(
    sqs: Any, sfn: Any, control: AsyncControl
) -> None:
    await control.add_tasks("q", count=2)
    url = (await sqs.get_queue_url(QueueName="q"))["QueueUrl"]
    first, second = (json.loads(m["Body"])["taskToken"] for m in await receive(sqs, url))
    await sfn.send_task_success(taskToken=first, output="{}")
    await control.reset_stats()
    stats = await control.stats()
    assert stats["calls"] == {}
    assert stats["latency_ms"]["count"] == 0
    assert (stats["tasks"]["total"], stats["tasks"]["open"], stats["tasks"]["succeeded"]) == (
        2,
        1,
        0,
    )
    assert (stats["queues"]["q"]["received"], stats["queues"]["q"]["in_flight"]) == (0, 2)
    await sfn.send_task_success(taskToken=second, output="{}")
    assert (await control.stats())["tasks"]["succeeded"] == 1


# -- as a process, and the broker end to end -------------------------------------------


def test_stub_process_serves_and_stops() -> None:
    with StubProcess() as stub:
        control = StubControl(stub.endpoint_url)
        assert control.create_queue("q").endswith("/000000000000/q")
        control.add_tasks("q", count=2)
        assert control.stats()["tasks"]["open"] == 2
        process = stub._process
    assert process is not None
    assert process.poll() is not None, "the stub process has exited"


async def test_broker_completes_stub_tasks_without_duplicates(
    stub: StubServer, control: AsyncControl
) -> None:
    await control.create_queue("tasks")
    await control.add_tasks("tasks", count=200, type="callback", input={"n": 1})
    settings = BrokerSettings(
        queues=(QueueSettings(name="tasks", wait_time_s=1),),
        entry_points=False,
        aws_region="us-east-1",
        aws_endpoint_url=stub.endpoint_url,
        delete_linger_s=0.01,
        http_port=None,
    )
    broker = Broker(settings, seed_router)
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: broker.run(task_status=task_status))
        try:
            closed = await control.wait_closed(timeout_s=60)
        finally:
            broker.request_stop()
    assert closed["open"] == 0
    stats = await control.stats()
    assert stats["tasks"]["succeeded"] == 200
    assert stats["tasks"]["duplicates"] == 0
    assert stats["tasks"]["unknown_tokens"] == 0
    assert stats["queues"]["tasks"]["deleted"] == 200
    assert stats["queues"]["tasks"]["redelivered"] == 0
    outputs = {t["output"] for t in (await control.tasks()).values()}
    assert outputs == {'{"body":"Return from callback"}'}
