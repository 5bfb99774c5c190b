"""The HTTP side: a hand-rolled HTTP/1.1 keep-alive server speaking AWS's JSON protocol.

Requests are parsed in ``data_received`` and answered synchronously whenever the call
needs no waiting (no injected latency, no empty long poll), which keeps one call at a
few tens of microseconds.  Calls that wait run as a task; the connection reads the next
request only after answering, as HTTP/1.1 clients never pipeline these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson

from ._quota import Quotas
from ._state import (
    MAX_TOKEN_CHARS,
    Faults,
    Message,
    Params,
    Queue,
    StubError,
    StubState,
    handle_of,
    internal_error,
    select_attributes,
    throttling_error,
)

__all__ = ["StubServer"]

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}
_JSON_TYPE = b"application/x-amz-json-1.0"
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


class _Drop(Exception):
    """Close the connection without answering (an injected drop)."""


Response = tuple[int, bytes, bytes | None]  # status, JSON body, x-amzn-query-error


def _ok(result: dict[str, Any] | list[Any]) -> Response:
    return 200, orjson.dumps(result), None


def _error(exc: StubError) -> Response:
    body = orjson.dumps({"__type": exc.code, "message": exc.message})
    header = None
    if exc.query_code is not None:
        fault = "Receiver" if exc.status >= 500 else "Sender"
        header = f"{exc.query_code};{fault}".encode()
    return exc.status, body, header


class _Aws:
    """The AWS operations, by ``X-Amz-Target``; each returns a dict or an awaitable."""

    def __init__(self, state: StubState) -> None:
        self.state = state
        self.ops: dict[str, tuple[str, Callable[[Params], Any]]] = {
            "AmazonSQS.CreateQueue": ("sqs", self.create_queue),
            "AmazonSQS.GetQueueUrl": ("sqs", self.get_queue_url),
            "AmazonSQS.GetQueueAttributes": ("sqs", self.get_queue_attributes),
            "AmazonSQS.ReceiveMessage": ("sqs", self.receive_message),
            "AmazonSQS.DeleteMessage": ("sqs", self.delete_message),
            "AmazonSQS.DeleteMessageBatch": ("sqs", self.delete_message_batch),
            "AmazonSQS.ChangeMessageVisibility": ("sqs", self.change_message_visibility),
            "AmazonSQS.ChangeMessageVisibilityBatch": (
                "sqs",
                self.change_message_visibility_batch,
            ),
            "AmazonSQS.SendMessage": ("sqs", self.send_message),
            "AmazonSQS.SendMessageBatch": ("sqs", self.send_message_batch),
            "AmazonSQS.PurgeQueue": ("sqs", self.purge_queue),
            "AWSStepFunctions.SendTaskSuccess": ("sfn", self.send_task_success),
            "AWSStepFunctions.SendTaskFailure": ("sfn", self.send_task_failure),
            "AWSStepFunctions.SendTaskHeartbeat": ("sfn", self.send_task_heartbeat),
        }

    # -- SQS -----------------------------------------------------------------------

    def create_queue(self, params: Params) -> dict[str, Any]:
        name = params.get("QueueName")
        if not isinstance(name, str) or not name:
            raise StubError("MissingParameter", "QueueName is required")
        queue = self.state.create_queue(name, attributes=params.get("Attributes"))
        return {"QueueUrl": queue.url}

    def get_queue_url(self, params: Params) -> dict[str, Any]:
        return {"QueueUrl": self.state.queue_by_url(params.get("QueueName")).url}

    def get_queue_attributes(self, params: Params) -> dict[str, Any]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        counts = queue.stats()
        every = {
            "QueueArn": queue.arn,
            "VisibilityTimeout": str(queue.visibility_timeout_s),
            "DelaySeconds": str(queue.delay_s),
            "ReceiveMessageWaitTimeSeconds": str(queue.wait_s),
            "ApproximateNumberOfMessages": str(counts["visible"]),
            "ApproximateNumberOfMessagesNotVisible": str(counts["in_flight"]),
            "ApproximateNumberOfMessagesDelayed": str(counts["delayed"]),
            # No FifoQueue: SQS (and moto, LocalStack) name it on FIFO queues only.
        }
        if queue.redrive_policy:
            every["RedrivePolicy"] = queue.redrive_policy
        names = params.get("AttributeNames") or []
        if "All" in names:
            return {"Attributes": every}
        return {"Attributes": {k: v for k, v in every.items() if k in names}}

    def receive_message(self, params: Params) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        limit = params.get("MaxNumberOfMessages", 1)
        if not isinstance(limit, int) or not 1 <= limit <= 10:
            raise StubError("InvalidParameterValue", "MaxNumberOfMessages must be 1..10")
        wait_s = params.get("WaitTimeSeconds", queue.wait_s)
        if not isinstance(wait_s, int) or not 0 <= wait_s <= 20:
            raise StubError("InvalidParameterValue", "WaitTimeSeconds must be 0..20")
        visibility_s = params.get("VisibilityTimeout", queue.visibility_timeout_s)
        taken = queue.take(limit, visibility_s, self.state.loop.time())
        if taken or wait_s == 0:
            return self._received(taken, params)
        return self._long_poll(queue, limit, visibility_s, wait_s, params)

    async def _long_poll(
        self, queue: Queue, limit: int, visibility_s: int, wait_s: int, params: Params
    ) -> dict[str, Any]:
        loop = self.state.loop
        deadline = loop.time() + wait_s
        while not queue.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            waiter = loop.create_future()
            queue.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                break
            finally:
                if not waiter.done():
                    waiter.cancel()
            taken = queue.take(limit, visibility_s, loop.time())
            if taken:
                return self._received(taken, params)
        # A message may have turned visible by timer in the same instant.
        return self._received(queue.take(limit, visibility_s, loop.time()), params)

    def _received(self, taken: list[Message], params: Params) -> dict[str, Any]:
        system_names = set(params.get("AttributeNames") or ()) | set(
            params.get("MessageSystemAttributeNames") or ()
        )
        attribute_names = params.get("MessageAttributeNames") or ()
        messages = []
        for msg in taken:
            entry: dict[str, Any] = {
                "MessageId": msg.id,
                "ReceiptHandle": handle_of(msg),
                "MD5OfBody": msg.md5,
                "Body": msg.body,
            }
            if system_names:
                entry["Attributes"] = _system_attributes(msg, system_names)
            if attribute_names and msg.message_attributes:
                chosen = select_attributes(attribute_names, msg.message_attributes)
                if chosen:
                    entry["MessageAttributes"] = chosen
            messages.append(entry)
        return {"Messages": messages} if messages else {}

    def delete_message(self, params: Params) -> dict[str, Any]:
        self.state.queue_by_url(params.get("QueueUrl")).delete(params.get("ReceiptHandle"))
        return {}

    def delete_message_batch(self, params: Params) -> dict[str, Any]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        return _batch(params, lambda entry: queue.delete(entry.get("ReceiptHandle")))

    def change_message_visibility(self, params: Params) -> dict[str, Any]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        queue.change_visibility(params.get("ReceiptHandle"), params.get("VisibilityTimeout"))
        return {}

    def change_message_visibility_batch(self, params: Params) -> dict[str, Any]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        return _batch(
            params,
            lambda e: queue.change_visibility(e.get("ReceiptHandle"), e.get("VisibilityTimeout")),
        )

    def send_message(self, params: Params) -> dict[str, Any]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        return _send(queue, params)

    def send_message_batch(self, params: Params) -> dict[str, Any]:
        queue = self.state.queue_by_url(params.get("QueueUrl"))
        return _batch(params, lambda entry: _send(queue, entry))

    def purge_queue(self, params: Params) -> dict[str, Any]:
        self.state.queue_by_url(params.get("QueueUrl")).purge()
        return {}

    # -- Step Functions --------------------------------------------------------------

    def send_task_success(self, params: Params) -> dict[str, Any]:
        return self.state.tokens.success(params)

    def send_task_failure(self, params: Params) -> dict[str, Any]:
        return self.state.tokens.failure(params)

    def send_task_heartbeat(self, params: Params) -> dict[str, Any]:
        return self.state.tokens.heartbeat(params)


def _system_attributes(msg: Message, names: set[str]) -> dict[str, str]:
    every = {
        "ApproximateReceiveCount": str(msg.receive_count),
        "SentTimestamp": str(msg.sent_ms),
        "ApproximateFirstReceiveTimestamp": str(msg.first_receive_ms or msg.sent_ms),
        "SenderId": "AIDASTUBSTUBSTUBSTUB",
    }
    if "All" in names:
        return every
    return {k: v for k, v in every.items() if k in names}


def _send(queue: Queue, params: Params) -> dict[str, Any]:
    body = params.get("MessageBody")
    if not isinstance(body, str) or not body:
        raise StubError("MissingParameter", "MessageBody is required")
    delay = params.get("DelaySeconds")
    delay_s = queue.delay_s if delay is None else delay
    if not isinstance(delay_s, int) or not 0 <= delay_s <= 900:
        raise StubError("InvalidParameterValue", "DelaySeconds must be 0..900")
    msg = queue.add(body, params.get("MessageAttributes"), float(delay_s))
    return {"MessageId": msg.id, "MD5OfMessageBody": msg.md5}


def _batch(params: Params, apply: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Per-entry outcomes, as SQS batches answer them (the call itself succeeds)."""
    entries = params.get("Entries")
    if not isinstance(entries, list) or not entries:
        raise StubError(
            "EmptyBatchRequest",
            "There should be at least one entry in the request.",
            query_code="AWS.SimpleQueueService.EmptyBatchRequest",
        )
    if len(entries) > 10:
        raise StubError(
            "TooManyEntriesInBatchRequest",
            "Maximum number of entries per request are 10.",
            query_code="AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        )
    ids = [entry.get("Id") for entry in entries]
    if len(set(ids)) != len(ids):
        raise StubError(
            "BatchEntryIdsNotDistinct",
            "Two or more batch entries in the request have the same Id.",
            query_code="AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        )
    successful, failed = [], []
    for entry in entries:
        try:
            result = apply(entry) or {}
        except StubError as exc:
            failed.append(
                {
                    "Id": entry.get("Id"),
                    "SenderFault": exc.status < 500,
                    "Code": exc.query_code or exc.code,
                    "Message": exc.message,
                }
            )
        else:
            successful.append({"Id": entry.get("Id"), **result})
    return {"Successful": successful, "Failed": failed}


class _Control:
    """``/_stub/…``: set up and inspect the stub (plain JSON, never fault-injected)."""

    def __init__(self, state: StubState) -> None:
        self.state = state

    def handle(self, method: str, path: str, body: bytes) -> Response | Awaitable[Response]:
        state = self.state
        try:
            data = orjson.loads(body) if body else {}
            parts = path.split("?", 1)[0].strip("/").split("/")[1:]  # after "_stub"
            route = (method, *parts)
            if route == ("POST", "reset"):
                state.reset()
                return _ok({})
            if route == ("POST", "reset_stats"):
                state.reset_stats()
                return _ok({})
            if route == ("POST", "queues"):
                queue = state.create_queue(data["name"], int(data.get("visibility_timeout_s", 30)))
                return _ok({"url": queue.url})
            if route == ("POST", "tasks"):
                return _ok({"accepted": self._add(data)})
            if route == ("POST", "faults"):
                state.set_faults(Faults.from_json(data))
                return _ok({})
            if route == ("POST", "quotas"):
                state.quotas = Quotas.from_json(data)
                return _ok({})
            if route == ("GET", "stats"):
                return _ok(state.stats())
            if route == ("GET", "tasks"):
                return _ok(state.tokens.dump())
            if method == "GET" and len(parts) == 3 and parts[0::2] == ["queues", "messages"]:
                return _ok(self._messages(parts[1]))
            if route == ("POST", "wait"):
                return self._wait(float(data.get("timeout_s", 60)))
        except StubError as exc:
            return _error(exc)
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            return 400, orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}), None
        return 404, orjson.dumps({"error": f"no control endpoint {method} {path}"}), None

    def _add(self, data: dict[str, Any]) -> int:
        queue = self.state.queues.get(data["queue"]) or self.state.create_queue(data["queue"])
        if "messages" in data:
            for message in data["messages"]:
                token = message.get("token")
                if token is not None and not 1 <= len(token) <= MAX_TOKEN_CHARS:
                    raise ValueError("token must be 1..2048 characters")
                queue.add(message["body"], message.get("attributes"), 0.0, token)
            return len(data["messages"])
        rate = data.get("rate_per_s")
        return self.state.add_tasks(
            queue,
            int(data["count"]),
            str(data.get("type", "callback")),
            data.get("input", {}),
            float(rate) if rate else None,
            int(data.get("token_chars", 256)),
        )

    def _messages(self, name: str) -> list[dict[str, Any]]:
        queue = self.state.queues.get(name)
        if queue is None:
            raise StubError("QueueDoesNotExist", f"no queue {name}")
        queue.promote(self.state.loop.time())
        return [
            {
                "body": msg.body,
                "attributes": msg.message_attributes or {},
                "receive_count": msg.receive_count,
                "visible": msg.state == 1,
            }
            for msg in queue.messages.values()
        ]

    async def _wait(self, timeout_s: float) -> Response:
        # Lets a harness wait for "every task closed" without polling the stub's CPU.
        idle = self.state.tokens.idle
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(idle.wait(), timeout_s)
        return _ok(self.state.tokens.stats())


class _Connection(asyncio.Protocol):
    def __init__(self, server: StubServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.Task[None] | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        if self.pending is not None:
            # The client gave up (its read timed out, or it was cancelled): a long poll
            # that has not taken messages yet takes none.
            self.pending.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.pending is None:
            self._process()

    def _process(self) -> None:
        buffer = self.buffer
        while not self.closing:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._abort()
                return
            head = buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            request_line = lines[0].split(" ")
            if len(request_line) != 3:
                self._abort()
                return
            method, path, version = request_line
            length = 0
            target = ""
            keep_alive = version == "HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.lower()
                if name == "content-length":
                    length = int(value)
                elif name == "x-amz-target":
                    target = value.strip()
                elif name == "connection":
                    keep_alive = value.strip().lower() != "close"
                elif name == "transfer-encoding":
                    # Neither botocore nor the JS SDK streams these small JSON bodies.
                    self._abort()
                    return
            start = end + 4
            if length > _MAX_BODY:
                self._abort()
                return
            if len(buffer) < start + length:
                return
            body = bytes(buffer[start : start + length])
            del buffer[: start + length]
            result = self.server.dispatch(method, path, target, body)
            if isinstance(result, tuple):
                self._write(result, keep_alive)
            else:
                self.pending = asyncio.ensure_future(self._finish(result, keep_alive))
                return

    async def _finish(self, result: Awaitable[Response], keep_alive: bool) -> None:
        try:
            response = await result
        except _Drop:
            self._abort()
            return
        except asyncio.CancelledError:
            return
        self.pending = None
        self._write(response, keep_alive)
        if self.buffer:
            self._process()

    def _write(self, response: Response, keep_alive: bool) -> None:
        status, body, query_error = response
        transport = self.transport
        if transport is None or self.closing:
            return
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nx-amzn-RequestId: 0\r\n" % (
            status,
            _REASONS.get(status, b"Error"),
            _JSON_TYPE,
        )
        if query_error is not None:
            head += b"x-amzn-query-error: " + query_error + b"\r\n"
        if not keep_alive:
            head += b"Connection: close\r\n"
        transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        if not keep_alive:
            self.closing = True
            transport.close()

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            # A reset, not a graceful close: the client sees the connection die.
            self.transport.abort()


class StubServer:
    """The stub, in this process: ``async with StubServer() as stub: stub.endpoint_url``."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, quotas: Quotas | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._quotas = quotas
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._state: StubState | None = None
        self._aws: _Aws | None = None
        self._control: _Control | None = None

    @property
    def state(self) -> StubState:
        if self._state is None:
            raise RuntimeError("the stub is not started")
        return self._state

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=512
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._state = StubState(loop, self.endpoint_url)
        if self._quotas is not None:
            self._state.quotas = self._quotas
        self._aws = _Aws(self._state)
        self._control = _Control(self._state)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection._abort()
        if self._state is not None:
            self._state.reset()
        await self._server.wait_closed()
        self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> StubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- dispatch ------------------------------------------------------------------

    def dispatch(
        self, method: str, path: str, target: str, body: bytes
    ) -> Response | Awaitable[Response]:
        assert self._aws is not None
        assert self._control is not None
        if path.startswith("/_stub/"):
            return self._control.handle(method, path, body)
        entry = self._aws.ops.get(target)
        if entry is None:
            return _error(StubError("UnknownOperationException", f"unknown operation {target}"))
        service, operation = entry
        op = target.partition(".")[2]
        state = self.state
        state.count_call(op)
        if state.quotas.active and not state.within_quota(op):
            return _error(throttling_error(service))
        try:
            params = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return _error(StubError("SerializationException", "body is not JSON"))
        if state.faults.active and state.faults.applies(op):
            return self._faulty(service, op, operation, params)
        state.tokens.request_at = state.loop.time()
        try:
            result = operation(params)
        except StubError as exc:
            return _error(exc)
        if isinstance(result, dict):
            return _ok(result)
        return _settle(result)

    async def _faulty(
        self, service: str, op: str, operation: Callable[[Params], Any], params: Params
    ) -> Response:
        state = self.state
        delay = state.delay_s()
        asked_at = state.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            state.tokens.sleep_lag_ms.append((state.loop.time() - asked_at - delay) * 1000)
        kind = state.draw_fault(op)
        if kind == "throttle":
            return _error(throttling_error(service))
        if kind == "error":
            return _error(internal_error(service))
        if kind == "drop_before":
            raise _Drop
        state.tokens.request_at = asked_at
        try:
            result = operation(params)
            if not isinstance(result, dict):
                result = await result
        except StubError as exc:
            response = _error(exc)
        else:
            response = _ok(result)
        if kind == "drop_after":
            # The effect stands, the answer is lost: the client will try again.
            raise _Drop
        return response


async def _settle(result: Awaitable[dict[str, Any]]) -> Response:
    try:
        return _ok(await result)
    except StubError as exc:
        return _error(exc)
