"""The SQS behaviour the broker relies on, the same on every double.

Timings are short (visibility 1 s, waits of 1 s) so that each row costs about a second;
the assertions leave room for a loaded machine, not for a different behaviour.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import pytest

from broker.aws.errors import is_not_found

from .doubles import FIFO, Double, client_error_code, require

#: What the consumer asks for on every receive (broker/sqs/consumer.py).
RECEIVE_NAMES: Mapping[str, Any] = {
    "MessageAttributeNames": ["All"],
    "MessageSystemAttributeNames": ["ApproximateReceiveCount", "MessageGroupId"],
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def receive(
    double: Double, url: str, limit: int = 10, wait_s: int = 0, **params: Any
) -> list[Mapping[str, Any]]:
    response = await double.sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=limit, WaitTimeSeconds=wait_s, **params
    )
    return list(response.get("Messages", []))


async def receive_all(double: Double, url: str, **params: Any) -> list[Mapping[str, Any]]:
    return await receive(double, url, **RECEIVE_NAMES, **params)


async def send(double: Double, url: str, body: str, **params: Any) -> None:
    await double.sqs.send_message(QueueUrl=url, MessageBody=body, **params)


def receive_count(message: Mapping[str, Any]) -> int:
    return int(message["Attributes"]["ApproximateReceiveCount"])


async def depth(double: Double, url: str) -> tuple[int, int]:
    """(visible, in flight), as GetQueueAttributes reports them."""
    response = await double.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = response["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def entry_ids(entries: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str(entry["Id"]) for entry in entries}


# -- visibility and receive counts -----------------------------------------------------


async def test_a_received_message_stays_hidden_for_its_visibility_timeout(double: Double) -> None:
    # The queue's timeout (1 s) for one message, a receive's own (30 s) for the other.
    url = await double.create_queue(unique("vis"), visibility_timeout_s=1)
    await send(double, url, "short")
    [short] = await receive_all(double, url, limit=1)
    await send(double, url, "long")
    [long] = await receive_all(double, url, limit=1, VisibilityTimeout=30)
    assert (short["Body"], long["Body"]) == ("short", "long")
    assert receive_count(short) == 1
    assert await receive_all(double, url) == [], "both are in flight"

    # A poll that outlasts the 1 s: it wakes when the short one turns visible again
    # (LocalStack's timer lags by about half a second).
    [again] = await receive_all(double, url, wait_s=4)
    assert (again["MessageId"], again["Body"]) == (short["MessageId"], "short")
    assert receive_count(again) == 2
    assert again["ReceiptHandle"] != short["ReceiptHandle"], "a new handle per receive"


async def test_visibility_zero_hands_a_message_back_at_once(double: Double) -> None:
    url = await double.create_queue(unique("back"))
    await send(double, url, "m")
    [first] = await receive_all(double, url)
    await double.sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    [second] = await receive_all(double, url)
    assert second["MessageId"] == first["MessageId"]
    assert receive_count(second) == 2


async def test_changing_visibility_counts_from_the_call(double: Double) -> None:
    url = await double.create_queue(unique("extend"), visibility_timeout_s=1)
    await send(double, url, "m")
    [message] = await receive_all(double, url)
    await double.sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=30
    )
    await anyio.sleep(2)
    assert await receive_all(double, url) == [], "extended past the queue's 1 s"
    assert await depth(double, url) == (0, 1)


async def test_change_visibility_batch_answers_per_entry(double: Double) -> None:
    url = await double.create_queue(unique("cmvb"))
    await send(double, url, "m")
    [message] = await receive_all(double, url)
    response = await double.sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "good", "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "not-a-receipt-handle", "VisibilityTimeout": 0},
        ],
    )
    assert entry_ids(response["Successful"]) == {"good"}
    [failed] = response["Failed"]
    assert (failed["Id"], failed["Code"]) == ("bad", "ReceiptHandleIsInvalid")
    assert isinstance(failed["Message"], str)
    [back] = await receive_all(double, url)
    assert back["MessageId"] == message["MessageId"], "the good entry took effect"


async def test_a_bad_receipt_handle_is_refused(double: Double) -> None:
    url = await double.create_queue(unique("badhandle"))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the code is checked below
        await double.sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle="not-a-receipt-handle", VisibilityTimeout=0
        )
    assert client_error_code(caught.value) == "ReceiptHandleIsInvalid"


# -- deletes ----------------------------------------------------------------------------


async def test_delete_batch_answers_per_entry(double: Double) -> None:
    url = await double.create_queue(unique("dmb"))
    await send(double, url, "m")
    [message] = await receive_all(double, url)
    response = await double.sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "good", "ReceiptHandle": message["ReceiptHandle"]},
            {"Id": "bad", "ReceiptHandle": "not-a-receipt-handle"},
        ],
    )
    assert entry_ids(response["Successful"]) == {"good"}
    [failed] = response["Failed"]
    assert (failed["Id"], failed["Code"]) == ("bad", "ReceiptHandleIsInvalid")
    assert isinstance(failed["Message"], str)
    assert await depth(double, url) == (0, 0)


async def test_deleting_again_or_with_an_older_handle_succeeds(double: Double) -> None:
    # A redelivery can race a delete: the broker may hold an older handle, or delete twice
    # (an answer lost on the way back).  Neither is an entry failure.
    url = await double.create_queue(unique("stale"))
    await send(double, url, "m")
    [first] = await receive_all(double, url)
    await double.sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    [second] = await receive_all(double, url)
    stale = await double.sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": "stale", "ReceiptHandle": first["ReceiptHandle"]}]
    )
    assert (entry_ids(stale["Successful"]), stale.get("Failed", [])) == ({"stale"}, [])
    again = await double.sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": "again", "ReceiptHandle": second["ReceiptHandle"]}]
    )
    assert (entry_ids(again["Successful"]), again.get("Failed", [])) == ({"again"}, [])
    assert await depth(double, url) == (0, 0)


# -- what a receive and the queue report ----------------------------------------------


async def test_a_receive_returns_only_the_attributes_it_asked_for(double: Double) -> None:
    url = await double.create_queue(unique("attrs"))
    attribute = {"DataType": "String", "StringValue": "callback"}
    await send(double, url, "m", MessageAttributes={"type": attribute})
    [bare] = await receive(double, url)
    assert "Attributes" not in bare
    assert "MessageAttributes" not in bare
    await double.sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=bare["ReceiptHandle"], VisibilityTimeout=0
    )
    [full] = await receive_all(double, url)
    assert full["Attributes"]["ApproximateReceiveCount"] == "2"
    assert full["MessageAttributes"]["type"]["StringValue"] == "callback"
    assert full["MessageAttributes"]["type"]["DataType"] == "String"


async def test_every_attribute_type_and_a_non_ascii_body_arrive_whole(double: Double) -> None:
    # The lean receive checks MD5OfBody and MD5OfMessageAttributes and leaves out a
    # message that fails either: each double's checksums must agree with ours.
    url = await double.create_queue(unique("types"))
    attributes = {
        "type": {"DataType": "String", "StringValue": "callback · ü"},
        "count": {"DataType": "Number", "StringValue": "-12.5"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffbinary"},
        "tagged": {"DataType": "String.custom", "StringValue": "x"},
    }
    body = '{"TaskToken": "t", "input": "ünïcødé ✓ 🎉"}'
    await send(double, url, body, MessageAttributes=attributes)
    [message] = await receive_all(double, url)
    assert message["Body"] == body
    assert message["MessageAttributes"] == attributes


async def test_queue_attributes_count_visible_and_in_flight_apart(double: Double) -> None:
    url = await double.create_queue(unique("depth"), visibility_timeout_s=7)
    await send(double, url, "a")
    await send(double, url, "b")
    await receive_all(double, url, limit=1)
    assert await depth(double, url) == (1, 1)
    response = await double.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    attributes = response["Attributes"]
    assert attributes["VisibilityTimeout"] == "7"
    assert "FifoQueue" not in attributes, "a standard queue has no FifoQueue attribute"
    only = await double.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])
    assert only["Attributes"] == {"VisibilityTimeout": "7"}


async def test_an_unknown_queue_is_not_found(double: Double) -> None:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - classified below
        await double.sqs.get_queue_url(QueueName=unique("missing"))
    assert is_not_found(caught.value), client_error_code(caught.value)


# -- long polls -------------------------------------------------------------------------


async def test_a_long_poll_returns_as_soon_as_a_message_arrives(double: Double) -> None:
    url = await double.create_queue(unique("wake"))
    received: list[Mapping[str, Any]] = []

    async def poll() -> None:
        received.extend(await receive_all(double, url, wait_s=10))

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.sleep(0.3)
        await send(double, url, "late")
    took_s = time.perf_counter() - started
    assert [m["Body"] for m in received] == ["late"]
    assert took_s < 5, f"the poll waited {took_s:.1f} s after the message arrived"


async def test_a_long_poll_on_an_empty_queue_waits_then_returns_nothing(double: Double) -> None:
    url = await double.create_queue(unique("idle"))
    started = time.perf_counter()
    assert await receive_all(double, url, wait_s=1) == []
    took_s = time.perf_counter() - started
    assert 0.8 <= took_s < 5, f"an idle 1 s poll took {took_s:.2f} s"


# -- FIFO -------------------------------------------------------------------------------


async def test_fifo_holds_a_group_back_while_one_of_its_messages_is_in_flight(
    double: Double,
) -> None:
    require(double, FIFO)
    url = await double.create_queue(unique("order") + ".fifo", fifo=True)
    for n, group in enumerate(["A", "A", "B"]):
        await send(double, url, f"{group}{n}", MessageGroupId=group, MessageDeduplicationId=str(n))
    [a0] = await receive_all(double, url, limit=1)
    assert (a0["Body"], a0["Attributes"]["MessageGroupId"]) == ("A0", "A")
    assert [m["Body"] for m in await receive_all(double, url, limit=1)] == ["B2"]
    assert await receive_all(double, url) == [], "A1 waits while A0 is in flight"
    await double.sqs.delete_message_batch(
        QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": a0["ReceiptHandle"]}]
    )
    assert [m["Body"] for m in await receive_all(double, url)] == ["A1"]


async def test_fifo_refuses_a_message_without_a_group(double: Double) -> None:
    require(double, FIFO)
    url = await double.create_queue(unique("nogroup") + ".fifo", fifo=True)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the code is checked below
        await send(double, url, "m", MessageDeduplicationId="0")
    assert client_error_code(caught.value) == "MissingParameter"
