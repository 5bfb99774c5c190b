"""The stub's state: SQS queues, the Step Functions token registry, faults and counters.

Everything here runs on the server's event loop and is plain synchronous code except the
long poll, so one AWS call costs a dict lookup or two.  Times are the loop's monotonic
clock (``loop.time()``); only the timestamps SQS reports are wall-clock milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import math
import random
import secrets
import statistics
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ._quota import Quotas

__all__ = ["Faults", "StubError", "StubState"]

ACCOUNT = "000000000000"
REGION = "us-east-1"
# Step Functions' limits (design.md, "The message contract").
MAX_OUTPUT_BYTES = 262_144
MAX_ERROR_CHARS = 256
MAX_CAUSE_CHARS = 32_768
MAX_TOKEN_CHARS = 2048
#: How far ahead a timed arrival schedule starts (see ``StubState.add_tasks``): queueing
#: one prepared message takes a few microseconds.
ARRIVAL_LEAD_S = 0.05
ARRIVAL_LEAD_PER_MESSAGE_S = 10e-6

# Message states; the first three index Queue.counts.
DELAYED, VISIBLE, IN_FLIGHT, DELETED = 0, 1, 2, 3

Params = dict[str, Any]
Result = dict[str, Any] | Awaitable[dict[str, Any]]


class StubError(Exception):
    """An AWS error answer: HTTP status, ``__type`` and, for SQS, the query-compatible code.

    SQS speaks JSON but keeps its old query error codes in ``x-amzn-query-error``;
    botocore and the JS SDK take the error code from that header when it is present.
    """

    def __init__(
        self, code: str, message: str, *, status: int = 400, query_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.query_code = query_code


def _sqs_error(shape: str, query_code: str, message: str) -> StubError:
    return StubError(shape, message, query_code=query_code)


def _no_queue() -> StubError:
    return _sqs_error(
        "QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        "The specified queue does not exist.",
    )


def _invalid_handle(handle: object) -> StubError:
    # The handle is never echoed: it is harmless here, but real ones are bearer-ish.
    return _sqs_error(
        "ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid", "The receipt handle is not valid."
    )


def throttling_error(service: str) -> StubError:
    """What AWS answers when it throttles, shaped so that SDKs classify it as throttling.

    Step Functions: ``ThrottlingException``.  SQS: the query code ``RequestThrottled``
    (what SQS really sends), which is in botocore's and the JS SDK's throttling lists;
    ``AWS.SimpleQueueService.RequestThrottled`` would not be, and botocore would then
    not retry it as a throttle.
    """
    if service == "sqs":
        return StubError("ThrottlingException", "Rate exceeded", query_code="RequestThrottled")
    return StubError("ThrottlingException", "Rate exceeded")


def internal_error(service: str) -> StubError:
    query = "InternalFailure" if service == "sqs" else None
    return StubError(
        "InternalFailure", "The request processing has failed.", status=500, query_code=query
    )


class Message:
    __slots__ = (
        "available_at",
        "body",
        "first_receive_ms",
        "gen",
        "id",
        "md5",
        "message_attributes",
        "receive_count",
        "sent_ms",
        "seq",
        "state",
        "token",
    )

    def __init__(
        self, seq: int, body: str, message_attributes: dict[str, Any] | None, available_at: float
    ) -> None:
        self.seq = seq
        self.id = str(uuid.UUID(int=seq, version=4))
        self.body = body
        # MD5OfBody is checked by the JS SDK on every receive: compute it once.
        self.md5 = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
        self.message_attributes = message_attributes or None
        self.sent_ms = int(time.time() * 1000)
        self.first_receive_ms: int | None = None
        self.receive_count = 0
        self.available_at = available_at
        #: The task token the message carries, when the stub minted it (latency parts).
        self.token: str | None = None
        self.state = DELETED  # set by Queue._move right after
        # Bumped on every state change: heap and ready-list entries of an older
        # generation are stale and skipped, which makes removal O(1).
        self.gen = 0


class Queue:
    """One standard queue: a ready deque, a timer heap (delays, visibility) and waiters."""

    def __init__(
        self,
        state: StubState,
        name: str,
        visibility_timeout_s: int,
        delay_s: int = 0,
        wait_s: int = 0,
        redrive_policy: str | None = None,
    ) -> None:
        self.state = state
        self.name = name
        self.visibility_timeout_s = visibility_timeout_s
        self.delay_s = delay_s
        self.wait_s = wait_s
        self.redrive_policy = redrive_policy
        self.messages: dict[int, Message] = {}
        self.ready: deque[tuple[int, Message]] = deque()
        self.timers: list[tuple[float, int, int, Message]] = []
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.counts = [0, 0, 0]
        self.received = 0
        self.redelivered = 0
        self.deleted = 0
        self.sent = 0
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def url(self) -> str:
        return f"{self.state.base_url}/{ACCOUNT}/{self.name}"

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self.name}"

    # -- state changes -------------------------------------------------------------

    def _move(self, msg: Message, new_state: int) -> None:
        if msg.state != DELETED:
            self.counts[msg.state] -= 1
        msg.state = new_state
        msg.gen += 1
        if new_state != DELETED:
            self.counts[new_state] += 1

    def make_visible(self, msg: Message) -> None:
        self._move(msg, VISIBLE)
        self.ready.append((msg.gen, msg))
        # One waiter per message: a woken poll that finds nothing waits again.
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def schedule(self, msg: Message, at: float, new_state: int) -> None:
        self._move(msg, new_state)
        heapq.heappush(self.timers, (at, next(self.state.tiebreak), msg.gen, msg))
        if at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.state.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.promote(self.state.loop.time())
        if self.timers and not self.closed:
            self._arm(self.timers[0][0])

    def promote(self, now: float) -> None:
        """Make every message whose delay or visibility timeout ran out visible."""
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, gen, msg = heapq.heappop(timers)
            if msg.gen == gen:
                self.make_visible(msg)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    # -- operations ----------------------------------------------------------------

    def add(
        self,
        body: str,
        message_attributes: dict[str, Any] | None = None,
        delay_s: float = 0.0,
        token: str | None = None,
    ) -> Message:
        msg = self.prepare(body, message_attributes, token)
        self.enqueue(msg, delay_s)
        return msg

    def prepare(
        self, body: str, message_attributes: dict[str, Any] | None, token: str | None
    ) -> Message:
        """A message not yet in the queue (the costly part of ``add``: ids and MD5)."""
        msg = Message(self.state.new_seq(), body, message_attributes, 0.0)
        msg.token = token
        return msg

    def enqueue(self, msg: Message, delay_s: float) -> None:
        """Put a prepared message in the queue, visible after ``delay_s``."""
        available_at = self.state.loop.time() + delay_s
        msg.available_at = available_at
        self.messages[msg.seq] = msg
        self.sent += 1
        if msg.token is not None:
            self.state.tokens.open(msg.token, available_at)
        if delay_s > 0:
            self.schedule(msg, available_at, DELAYED)
        else:
            self.make_visible(msg)

    def take(self, limit: int, visibility_s: int, now: float) -> list[Message]:
        self.promote(now)
        taken: list[Message] = []
        ready = self.ready
        max_receives, dead_letter = self.state.redrive_target(self)
        while ready and len(taken) < limit:
            gen, msg = ready.popleft()
            if msg.gen != gen:
                continue
            if dead_letter is not None and msg.receive_count >= max_receives:
                # SQS moves the message instead of delivering it a maxReceiveCount+1th time.
                self.remove(msg)
                dead_letter.add(msg.body, msg.message_attributes)
                continue
            msg.receive_count += 1
            self.received += 1
            if msg.receive_count > 1:
                self.redelivered += 1
            if msg.first_receive_ms is None:
                msg.first_receive_ms = int(time.time() * 1000)
                if msg.token is not None:
                    self.state.tokens.taken(msg.token, now)
            self.schedule(msg, now + visibility_s, IN_FLIGHT)
            taken.append(msg)
        return taken

    def remove(self, msg: Message) -> None:
        self._move(msg, DELETED)
        del self.messages[msg.seq]

    def find(self, handle: Any) -> Message | None:
        """The message a receipt handle names; ``None`` if it was deleted already."""
        seq, count = _parse_handle(handle)
        msg = self.messages.get(seq)
        if msg is not None and count > msg.receive_count:
            raise _invalid_handle(handle)
        if msg is None and seq > self.state.last_seq:
            raise _invalid_handle(handle)
        return msg

    def delete(self, handle: Any) -> None:
        # A stale handle (the message was received again since) still deletes, like SQS;
        # deleting a deleted message is a success too.
        msg = self.find(handle)
        if msg is not None:
            self.remove(msg)
            self.deleted += 1

    def change_visibility(self, handle: Any, timeout_s: Any) -> None:
        if not isinstance(timeout_s, int) or not 0 <= timeout_s <= 43_200:
            raise StubError("InvalidParameterValue", "VisibilityTimeout must be 0..43200")
        msg = self.find(handle)
        if msg is None or msg.state != IN_FLIGHT:
            raise _sqs_error(
                "MessageNotInflight",
                "AWS.SimpleQueueService.MessageNotInflight",
                "The message referred to isn't in flight.",
            )
        if timeout_s == 0:
            self.make_visible(msg)
        else:
            self.schedule(msg, self.state.loop.time() + timeout_s, IN_FLIGHT)

    def purge(self) -> None:
        for msg in list(self.messages.values()):
            self.remove(msg)
        self.ready.clear()
        self.timers.clear()

    def stats(self) -> dict[str, int]:
        self.promote(self.state.loop.time())
        return {
            "visible": self.counts[VISIBLE],
            "in_flight": self.counts[IN_FLIGHT],
            "delayed": self.counts[DELAYED],
            "received": self.received,
            "redelivered": self.redelivered,
            "deleted": self.deleted,
            "sent": self.sent,
        }


def _parse_handle(handle: Any) -> tuple[int, int]:
    if isinstance(handle, str):
        seq, _, count = handle.partition(".")
        if seq.isdigit() and count.isdigit():
            return int(seq), int(count)
    raise _invalid_handle(handle)


def handle_of(msg: Message) -> str:
    # A new handle per receive, as in SQS; it names the message and the receive.
    return f"{msg.seq}.{msg.receive_count}"


class TaskRecord:
    __slots__ = (
        "available_at",
        "cause",
        "completions",
        "error",
        "heartbeats",
        "output",
        "status",
        "taken_at",
    )

    def __init__(self, available_at: float | None) -> None:
        self.status = "open"
        self.output: str | None = None
        self.error: str | None = None
        self.cause: str | None = None
        self.completions = 0
        self.heartbeats = 0
        self.available_at = available_at
        #: When a ReceiveMessage first took the message that carries the token.
        self.taken_at: float | None = None


class Tokens:
    """The Step Functions side: which task tokens are open, and what closed them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.records: dict[str, TaskRecord] = {}
        self.open_count = 0
        self.succeeded = 0
        self.failed = 0
        self.duplicates = 0
        self.unknown = 0
        self.heartbeats = 0
        self.latencies_ms: list[float] = []
        #: Per closed token, the parts of its latency (ms): in the queue until a receive
        #: took it, from there until its completion call reached the stub (the response's
        #: way back, the consumer, the request's way here), and that call's own time.
        self.parts_ms: list[tuple[float, float, float]] = []
        #: When the request being handled now reached the stub (set by the server).
        self.request_at: float | None = None
        #: How late the stub's injected-latency sleeps woke up (ms): its own loop's lag.
        self.sleep_lag_ms: list[float] = []
        self._sorted: list[float] = []
        self.idle = asyncio.Event()
        self.idle.set()

    def reset_counts(self) -> None:
        self.succeeded = self.failed = self.duplicates = self.unknown = self.heartbeats = 0
        self.latencies_ms = []
        self.parts_ms = []
        self.sleep_lag_ms = []
        self._sorted = []

    def taken(self, token: str, now: float) -> None:
        record = self.records.get(token)
        if record is not None and record.taken_at is None:
            record.taken_at = now

    def open(self, token: str, available_at: float | None) -> None:
        if token in self.records:
            return
        self.records[token] = TaskRecord(available_at)
        self.open_count += 1
        self.idle.clear()

    def _get(self, params: Params) -> TaskRecord:
        token = params.get("taskToken")
        if not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN_CHARS:
            raise StubError("ValidationException", "taskToken must be 1..2048 characters")
        record = self.records.get(token)
        if record is None:
            self.unknown += 1
            raise StubError("InvalidToken", "Invalid token")
        return record

    def _close(self, record: TaskRecord, status: str) -> None:
        record.completions += 1
        if record.status != "open":
            self.duplicates += 1
            raise StubError("TaskTimedOut", "Task Timed Out")
        record.status = status
        self.open_count -= 1
        if status == "succeeded":
            self.succeeded += 1
        else:
            self.failed += 1
        if record.available_at is not None:
            now = self.loop.time()
            self.latencies_ms.append((now - record.available_at) * 1000)
            asked_at, taken_at = self.request_at, record.taken_at
            if asked_at is not None and taken_at is not None:
                self.parts_ms.append(
                    (
                        (taken_at - record.available_at) * 1000,
                        (asked_at - taken_at) * 1000,
                        (now - asked_at) * 1000,
                    )
                )
        if self.open_count == 0:
            self.idle.set()

    def success(self, params: Params) -> dict[str, Any]:
        record = self._get(params)
        output = params.get("output")
        if not isinstance(output, str):
            raise StubError("ValidationException", "output is required")
        if len(output.encode()) > MAX_OUTPUT_BYTES:
            raise StubError("InvalidOutput", "Output exceeds the maximum size of 262144 bytes")
        try:
            orjson.loads(output)
        except orjson.JSONDecodeError:
            raise StubError("InvalidOutput", "Output is not valid JSON") from None
        self._close(record, "succeeded")
        record.output = output
        return {}

    def failure(self, params: Params) -> dict[str, Any]:
        record = self._get(params)
        error, cause = params.get("error"), params.get("cause")
        if isinstance(error, str) and len(error) > MAX_ERROR_CHARS:
            raise StubError("ValidationException", "error exceeds 256 characters")
        if isinstance(cause, str) and len(cause) > MAX_CAUSE_CHARS:
            raise StubError("ValidationException", "cause exceeds 32768 characters")
        self._close(record, "failed")
        record.error, record.cause = error, cause
        return {}

    def heartbeat(self, params: Params) -> dict[str, Any]:
        record = self._get(params)
        if record.status != "open":
            raise StubError("TaskTimedOut", "Task Timed Out")
        record.heartbeats += 1
        self.heartbeats += 1
        return {}

    def latency(self) -> dict[str, float | int]:
        values = self.latencies_ms
        if len(self._sorted) != len(values):
            self._sorted = sorted(values)
        ordered = self._sorted
        if not ordered:
            return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
        return {
            "count": len(ordered),
            "p50": _rank(ordered, 0.50),
            "p90": _rank(ordered, 0.90),
            "p99": _rank(ordered, 0.99),
            "max": round(ordered[-1], 3),
        }

    def latency_parts(self) -> dict[str, Any]:
        """Where the latency went: each part's median over every closed token and over
        the slowest 1 %, and how late the stub's own injected-latency sleeps woke."""
        parts = self.parts_ms
        if not parts:
            return {}
        names = ("queue", "consumer", "call")
        slowest = sorted(parts, key=sum)[-max(1, len(parts) // 100) :]

        def medians(rows: list[tuple[float, float, float]]) -> dict[str, float]:
            return {
                name: round(statistics.median(row[i] for row in rows), 3)
                for i, name in enumerate(names)
            }

        lags = sorted(self.sleep_lag_ms) or [0.0]
        return {
            "count": len(parts),
            "all": medians(parts),
            "slowest_1pct": medians(slowest),
            "stub_sleep_lag": {
                "p50": _rank(lags, 0.5),
                "p99": _rank(lags, 0.99),
                "max": round(lags[-1], 3),
            },
        }

    def stats(self) -> dict[str, int]:
        return {
            "total": len(self.records),
            "open": self.open_count,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "duplicates": self.duplicates,
            "unknown_tokens": self.unknown,
            "heartbeats": self.heartbeats,
        }

    def dump(self) -> dict[str, dict[str, Any]]:
        return {
            token: {
                "status": r.status,
                "output": r.output,
                "error": r.error,
                "cause": r.cause,
                "completions": r.completions,
                "heartbeats": r.heartbeats,
            }
            for token, r in self.records.items()
        }


FAULT_KINDS = ("throttle", "error", "drop_before", "drop_after")


@dataclass(frozen=True, slots=True)
class Faults:
    """Injected faults; the default is none at all."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    apis: frozenset[str] | None = None
    seed: int | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Faults:
        unknown = set(body) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        apis = body.get("apis")
        faults = cls(
            latency_ms=float(body.get("latency_ms") or 0),
            jitter_ms=float(body.get("jitter_ms") or 0),
            throttle_rate=float(body.get("throttle_rate") or 0),
            error_rate=float(body.get("error_rate") or 0),
            drop_rate=float(body.get("drop_rate") or 0),
            apis=None if apis is None else frozenset(apis),
            seed=body.get("seed"),
        )
        rates = (faults.throttle_rate, faults.error_rate, faults.drop_rate)
        if min(rates) < 0 or sum(rates) > 1 or faults.latency_ms < 0 or faults.jitter_ms < 0:
            raise ValueError("rates must be >= 0 and sum to at most 1; latencies >= 0")
        return faults

    @property
    def active(self) -> bool:
        return bool(
            self.latency_ms or self.jitter_ms or self.throttle_rate or self.error_rate
        ) or bool(self.drop_rate)

    def applies(self, op: str) -> bool:
        return self.apis is None or op in self.apis


class StubState:
    """All the stub's state; ``reset()`` empties it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, base_url: str = "") -> None:
        self.loop = loop
        self.base_url = base_url
        self.tiebreak = itertools.count()
        self.last_seq = 0
        self.queues: dict[str, Queue] = {}
        self.tokens = Tokens(loop)
        self.faults = Faults()
        self.rng = random.Random()
        self.calls: dict[str, int] = {}
        self.fault_counts: dict[str, dict[str, int]] = {kind: {} for kind in FAULT_KINDS}
        self.quotas = Quotas()

    def reset(self) -> None:
        for queue in self.queues.values():
            queue.close()
        idle = self.tokens.idle
        self.__init__(self.loop, self.base_url)  # type: ignore[misc]
        idle.set()  # wake anyone waiting on the old registry

    def reset_stats(self) -> None:
        """Zero the counters and latencies; queues, messages and open tokens stay."""
        self.calls = {}
        self.fault_counts = {kind: {} for kind in FAULT_KINDS}
        self.tokens.reset_counts()
        self.quotas.reset_counts()
        for queue in self.queues.values():
            queue.received = queue.redelivered = queue.deleted = queue.sent = 0

    def new_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    # -- queues --------------------------------------------------------------------

    def create_queue(
        self, name: str, visibility_timeout_s: int = 30, attributes: dict[str, str] | None = None
    ) -> Queue:
        queue = self.queues.get(name)
        if queue is not None:
            return queue
        attributes = attributes or {}
        queue = Queue(
            self,
            name,
            int(attributes.get("VisibilityTimeout", visibility_timeout_s)),
            delay_s=int(attributes.get("DelaySeconds", 0)),
            wait_s=int(attributes.get("ReceiveMessageWaitTimeSeconds", 0)),
            redrive_policy=attributes.get("RedrivePolicy"),
        )
        self.queues[name] = queue
        return queue

    def queue_by_url(self, url: Any) -> Queue:
        if not isinstance(url, str):
            raise StubError("MissingParameter", "QueueUrl is required")
        queue = self.queues.get(url.rstrip("/").rsplit("/", 1)[-1])
        if queue is None:
            raise _no_queue()
        return queue

    def redrive_target(self, queue: Queue) -> tuple[int, Queue | None]:
        if not queue.redrive_policy:
            return 0, None
        try:
            policy = orjson.loads(queue.redrive_policy)
            arn, limit = policy["deadLetterTargetArn"], int(policy["maxReceiveCount"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return 0, None
        return limit, self.queues.get(str(arn).rsplit(":", 1)[-1])

    def add_tasks(
        self,
        queue: Queue,
        count: int,
        message_type: str,
        task_input: Any,
        rate_per_s: float | None,
        token_chars: int = 256,
    ) -> int:
        prepared = []
        for _ in range(count):
            token = _mint_token(token_chars)
            body = orjson.dumps({"taskToken": token, "type": message_type, "input": task_input})
            prepared.append(queue.prepare(body.decode(), None, token))
        if not rate_per_s:
            for msg in prepared:
                queue.enqueue(msg, 0.0)
            return count
        # Minting thousands of tokens blocks this loop for a tenth of a second or more;
        # arrivals timed from before that would count the stub's own work as latency.
        # So the schedule starts on the next turn of the loop (a fresh clock), a little
        # ahead, so that queueing the messages is done before the first one is due.
        self.loop.call_soon(self._schedule_arrivals, queue, prepared, rate_per_s)
        return count

    def _schedule_arrivals(self, queue: Queue, prepared: list[Message], rate_per_s: float) -> None:
        lead_s = ARRIVAL_LEAD_S + ARRIVAL_LEAD_PER_MESSAGE_S * len(prepared)
        for i, msg in enumerate(prepared):
            queue.enqueue(msg, lead_s + i / rate_per_s)

    # -- operation counting and faults ----------------------------------------------

    def count_call(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def within_quota(self, op: str) -> bool:
        """False when ``op``'s Step Functions bucket is empty (``Quotas``; call when active)."""
        visible = sum(queue.counts[VISIBLE] for queue in self.queues.values())
        return self.quotas.admit(op, self.loop.time(), visible)

    def draw_fault(self, op: str) -> str | None:
        faults = self.faults
        roll = self.rng.random()
        kind: str | None = None
        if roll < faults.throttle_rate:
            kind = "throttle"
        elif roll < faults.throttle_rate + faults.error_rate:
            kind = "error"
        elif roll < faults.throttle_rate + faults.error_rate + faults.drop_rate:
            kind = "drop_before" if self.rng.random() < 0.5 else "drop_after"
        if kind is not None:
            per_op = self.fault_counts[kind]
            per_op[op] = per_op.get(op, 0) + 1
        return kind

    def delay_s(self) -> float:
        faults = self.faults
        jitter = self.rng.uniform(0, faults.jitter_ms) if faults.jitter_ms else 0.0
        return (faults.latency_ms + jitter) / 1000

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "faults": {kind: dict(ops) for kind, ops in self.fault_counts.items()},
            "tasks": self.tokens.stats(),
            "queues": {name: queue.stats() for name, queue in self.queues.items()},
            "latency_ms": self.tokens.latency(),
            "latency_parts_ms": self.tokens.latency_parts(),
            "quotas": self.quotas.stats(),
        }


def _rank(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of a sorted, non-empty list (nearest rank), rounded to 1 µs."""
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


def _mint_token(chars: int) -> str:
    # Real tokens are long opaque base64 strings; the length matters for client cost.
    return "AQB" + secrets.token_urlsafe(chars)[: max(1, chars - 3)]


def select_attributes(names: Iterable[str], available: dict[str, Any]) -> dict[str, Any]:
    """The message attributes a receive asked for (``All``, ``.*``, ``prefix.*``, names)."""
    wanted = list(names)
    if not wanted:
        return {}
    if "All" in wanted or ".*" in wanted:
        return available
    chosen: dict[str, Any] = {}
    for name in wanted:
        if name.endswith(".*"):
            prefix = name[:-1]
            chosen.update({k: v for k, v in available.items() if k.startswith(prefix)})
        elif name in available:
            chosen[name] = available[name]
    return chosen


Handler = Callable[[Params], Result]
