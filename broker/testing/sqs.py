"""An in-memory SQS with the calls the broker makes (``FakeSqs``)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from broker.sqs.message import MAX_MESSAGE_BYTES, message_size
from broker.testing._faults import Faults, client_error

__all__ = ["FakeSqs"]


@dataclass
class _Stored:
    message_id: str
    body: str
    attributes: dict[str, Any]
    group_id: str | None
    sent_at: float
    receive_count: int = 0
    visible_at: float = 0.0
    receipt_handle: str | None = None


@dataclass
class _Queue:
    name: str
    url: str
    visibility_timeout_s: int
    messages: dict[str, _Stored] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    #: Receipt handles no longer current (the message was received again, or deleted),
    #: by the message they named: SQS still accepts them (tests/contract).
    retired: dict[str, str] = field(default_factory=dict)
    #: The current receipt handles, by the message they name (thousands in flight).
    current: dict[str, str] = field(default_factory=dict)


class FakeSqs(Faults):
    """An in-memory SQS with the calls the broker makes."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        account: str = "000000000000",
        answer_latency_s: float = 0.0,
    ) -> None:
        super().__init__()
        #: How long a ReceiveMessage answer takes to reach the caller once its messages
        #: are in flight: a poll cancelled meanwhile hides them until their visibility
        #: lapses, as on AWS (the race the broker's drain must not lose).
        self.answer_latency_s = answer_latency_s
        self._base = f"https://sqs.{region}.amazonaws.com/{account}"
        self.queues: dict[str, _Queue] = {}
        self.receive_sizes: list[int] = []
        self.delete_batch_sizes: list[int] = []
        self._ids = itertools.count(1)

    # -- set-up helpers (synchronous, not part of the SQS API)
    def create_queue(self, name: str, *, visibility_timeout_s: int = 30, **attributes: str) -> str:
        """Create a queue; a name ending in ``.fifo`` makes a FIFO queue."""
        url = f"{self._base}/{name}"
        if name.endswith(".fifo"):
            attributes.setdefault("FifoQueue", "true")
        self.queues[url] = _Queue(name, url, visibility_timeout_s, attributes=dict(attributes))
        return url

    def url_of(self, name: str) -> str:
        return f"{self._base}/{name}"

    def put(
        self,
        queue: str,
        body: str | bytes,
        attributes: Mapping[str, str] | None = None,
        *,
        group_id: str | None = None,
    ) -> str:
        """Add a message directly (no latency, no faults); returns its id."""
        stored = self._queue(self._url(queue))
        message_id = f"m-{next(self._ids):06d}"
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        stored.messages[message_id] = _Stored(
            message_id,
            text,
            {k: {"DataType": "String", "StringValue": v} for k, v in (attributes or {}).items()},
            group_id,
            sent_at=anyio.current_time(),
        )
        return message_id

    def visible(self, queue: str) -> int:
        now = anyio.current_time()
        return sum(
            1 for m in self._queue(self._url(queue)).messages.values() if m.visible_at <= now
        )

    def due(self, queue: str, within_s: float) -> int:
        """Messages visible now or again within ``within_s`` (a retry waiting its backoff)."""
        by = anyio.current_time() + within_s
        return sum(1 for m in self._queue(self._url(queue)).messages.values() if m.visible_at <= by)

    def count(self, queue: str) -> int:
        """Messages in the queue, visible or in flight."""
        return len(self._queue(self._url(queue)).messages)

    def bodies(self, queue: str) -> list[str]:
        return [m.body for m in self._queue(self._url(queue)).messages.values()]

    def messages(self, queue: str) -> list[_Stored]:
        return list(self._queue(self._url(queue)).messages.values())

    # -- the SQS API
    async def get_queue_url(self, *, QueueName: str) -> dict[str, Any]:
        async with self._call("get_queue_url"):
            url = self.url_of(QueueName)
            self._queue(url)
            return {"QueueUrl": url}

    async def get_queue_attributes(
        self,
        *,
        QueueUrl: str,
        AttributeNames: Sequence[str] = (),
    ) -> dict[str, Any]:
        async with self._call("get_queue_attributes"):
            queue = self._queue(QueueUrl)
            now = anyio.current_time()
            visible = sum(1 for m in queue.messages.values() if m.visible_at <= now)
            every = {
                "VisibilityTimeout": str(queue.visibility_timeout_s),
                # As SQS counts them: visible, and in flight, apart.
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(len(queue.messages) - visible),
                "ApproximateNumberOfMessagesDelayed": "0",
                **queue.attributes,
            }
            if "All" in AttributeNames:
                return {"Attributes": every}
            return {"Attributes": {k: v for k, v in every.items() if k in AttributeNames}}

    async def send_message(
        self,
        *,
        QueueUrl: str,
        MessageBody: str,
        MessageAttributes: Mapping[str, Any] | None = None,
        MessageGroupId: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        async with self._call("send_message"):
            if len(MessageAttributes or {}) > 10:
                raise client_error("InvalidParameterValue", "too many message attributes")
            if message_size(MessageBody, MessageAttributes or {}) > MAX_MESSAGE_BYTES:
                raise client_error(
                    "InvalidParameterValue",
                    "One or more parameters are invalid. Reason: Message must be shorter "
                    f"than {MAX_MESSAGE_BYTES} bytes.",
                )
            queue = self._queue(QueueUrl)
            if queue.attributes.get("FifoQueue") == "true" and not MessageGroupId:
                raise client_error(
                    "MissingParameter",
                    "The request must contain the parameter MessageGroupId.",
                )
            message_id = f"m-{next(self._ids):06d}"
            queue.messages[message_id] = _Stored(
                message_id,
                MessageBody,
                dict(MessageAttributes or {}),
                MessageGroupId,
                sent_at=anyio.current_time(),
            )
            return {"MessageId": message_id}

    async def send_message_batch(
        self,
        *,
        QueueUrl: str,
        Entries: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        if not 1 <= len(Entries) <= 10:
            raise client_error("TooManyEntriesInBatchRequest", "1..10 entries")
        successful = []
        for entry in Entries:
            sent = await self.send_message(
                QueueUrl=QueueUrl,
                MessageBody=entry["MessageBody"],
                MessageAttributes=entry.get("MessageAttributes"),
                MessageGroupId=entry.get("MessageGroupId"),
            )
            successful.append({"Id": entry["Id"], "MessageId": sent["MessageId"]})
        return {"Successful": successful, "Failed": []}

    async def receive_message(
        self,
        *,
        QueueUrl: str,
        MaxNumberOfMessages: int = 1,
        WaitTimeSeconds: int = 0,
        VisibilityTimeout: int | None = None,
        MessageSystemAttributeNames: Sequence[str] = (),
        AttributeNames: Sequence[str] = (),
        MessageAttributeNames: Sequence[str] = (),
        **_: Any,
    ) -> dict[str, Any]:
        if not 1 <= MaxNumberOfMessages <= 10:
            raise client_error("InvalidParameterValue", "MaxNumberOfMessages must be 1..10")
        self.receive_sizes.append(MaxNumberOfMessages)
        async with self._call("receive_message"):
            queue = self._queue(QueueUrl)
            deadline = anyio.current_time() + WaitTimeSeconds
            while True:
                now = anyio.current_time()
                ready = self._deliverable(queue, now, MaxNumberOfMessages)
                if ready or now >= deadline:
                    break
                await anyio.sleep(min(0.005, deadline - now))
            out = []
            system_names = {*MessageSystemAttributeNames, *AttributeNames}
            for stored in ready[:MaxNumberOfMessages]:
                stored.receive_count += 1
                if stored.receipt_handle is not None:
                    queue.retired[stored.receipt_handle] = stored.message_id
                    queue.current.pop(stored.receipt_handle, None)
                stored.receipt_handle = uuid.uuid4().hex
                queue.current[stored.receipt_handle] = stored.message_id
                timeout_s = (
                    VisibilityTimeout
                    if VisibilityTimeout is not None
                    else queue.visibility_timeout_s
                )
                stored.visible_at = now + timeout_s
                raw: dict[str, Any] = {
                    "MessageId": stored.message_id,
                    "ReceiptHandle": stored.receipt_handle,
                    "Body": stored.body,
                }
                # As SQS: only the attributes the call asked for, and no key when none.
                system = _selected(_system_attributes(stored), system_names)
                if system:
                    raw["Attributes"] = system
                chosen = _selected(stored.attributes, MessageAttributeNames)
                if chosen:
                    raw["MessageAttributes"] = chosen
                out.append(raw)
            if out and self.answer_latency_s:
                await anyio.sleep(self.answer_latency_s)
            return {"Messages": out} if out else {}

    async def delete_message_batch(
        self,
        *,
        QueueUrl: str,
        Entries: Sequence[Mapping[str, str]],
    ) -> dict[str, Any]:
        async with self._call("delete_message_batch"):
            if not 1 <= len(Entries) <= 10:
                raise client_error("TooManyEntriesInBatchRequest", "1..10 entries")
            self.delete_batch_sizes.append(len(Entries))
            queue = self._queue(QueueUrl)
            successful, failed = [], []
            for entry in Entries:
                handle = entry["ReceiptHandle"]
                found = self._by_handle(queue, handle)
                if found is not None:
                    del queue.messages[found.message_id]
                    if found.receipt_handle is not None:
                        queue.retired[found.receipt_handle] = found.message_id
                        queue.current.pop(found.receipt_handle, None)
                    successful.append({"Id": entry["Id"]})
                elif handle in queue.retired:
                    # Deleting a deleted message succeeds, as on SQS.
                    successful.append({"Id": entry["Id"]})
                else:
                    failed.append(_invalid_handle_entry(entry["Id"]))
            return {"Successful": successful, "Failed": failed}

    async def change_message_visibility(
        self,
        *,
        QueueUrl: str,
        ReceiptHandle: str,
        VisibilityTimeout: int,
    ) -> dict[str, Any]:
        async with self._call("change_message_visibility"):
            found = self._by_handle(self._queue(QueueUrl), ReceiptHandle)
            if found is None:
                raise client_error("ReceiptHandleIsInvalid")
            found.visible_at = anyio.current_time() + VisibilityTimeout
            return {}

    async def change_message_visibility_batch(
        self,
        *,
        QueueUrl: str,
        Entries: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        async with self._call("change_message_visibility_batch"):
            if not 1 <= len(Entries) <= 10:
                raise client_error("TooManyEntriesInBatchRequest", "1..10 entries")
            queue = self._queue(QueueUrl)
            successful, failed = [], []
            for entry in Entries:
                found = self._by_handle(queue, entry["ReceiptHandle"])
                if found is None:
                    failed.append(_invalid_handle_entry(entry["Id"]))
                else:
                    found.visible_at = anyio.current_time() + int(entry["VisibilityTimeout"])
                    successful.append({"Id": entry["Id"]})
            return {"Successful": successful, "Failed": failed}

    def _url(self, queue: str) -> str:
        return queue if queue.startswith("https://") else self.url_of(queue)

    def _queue(self, url: str) -> _Queue:
        try:
            return self.queues[url]
        except KeyError:
            raise client_error(
                "AWS.SimpleQueueService.NonExistentQueue", "The specified queue does not exist."
            ) from None

    @staticmethod
    def _deliverable(queue: _Queue, now: float, limit: int) -> list[_Stored]:
        if queue.attributes.get("FifoQueue") != "true":
            # The first ``limit`` only: thousands may be in flight (tests at scale).
            ready = []
            for stored in queue.messages.values():
                if stored.visible_at <= now:
                    ready.append(stored)
                    if len(ready) == limit:
                        break
            return ready
        # FIFO: in send order, and nothing of a group while one of its messages is in flight.
        ready, blocked = [], set()
        for stored in queue.messages.values():
            if stored.group_id in blocked:
                continue
            if stored.visible_at > now:
                blocked.add(stored.group_id)
            else:
                ready.append(stored)
        return ready

    @staticmethod
    def _by_handle(queue: _Queue, handle: str) -> _Stored | None:
        """The message still in the queue that ``handle`` names, current or stale."""
        current = queue.messages.get(queue.current.get(handle, ""))
        if current is not None and current.receipt_handle == handle:
            return current
        # A handle from an earlier receive still acts on its message (SQS, moto, LocalStack).
        return queue.messages.get(queue.retired.get(handle, ""))


def _system_attributes(stored: _Stored) -> dict[str, str]:
    every = {"ApproximateReceiveCount": str(stored.receive_count)}
    if stored.group_id:
        every["MessageGroupId"] = stored.group_id
    return every


def _selected(available: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """What a receive asked for: ``All`` (or ``.*``), names, or ``prefix.*``."""
    wanted = list(names)
    if "All" in wanted or ".*" in wanted:
        return dict(available)
    chosen: dict[str, Any] = {}
    for name in wanted:
        if name.endswith(".*"):
            chosen.update({k: v for k, v in available.items() if k.startswith(name[:-1])})
        elif name in available:
            chosen[name] = available[name]
    return chosen


def _invalid_handle_entry(entry_id: str) -> dict[str, Any]:
    return {
        "Id": entry_id,
        "Code": "ReceiptHandleIsInvalid",
        "SenderFault": True,
        "Message": "The input receipt handle is invalid.",
    }
