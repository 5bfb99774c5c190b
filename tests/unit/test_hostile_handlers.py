"""The hostile-handler table (issue 21, invariants 1-3): one row per behaviour a handler
(or a handler's model) can show the broker, on an SQS queue and on an activity.

Each row runs on its own ``TestBroker`` beside a well-behaved slow handler, and asserts:

- the broker keeps running and the other handlers complete (invariant 1): a good task
  started with the hostile one, and one started after it settled, both succeed;
- the hostile task reaches exactly one outcome within ``max_attempts`` (invariant 2): one
  completion call for its token, with the expected error name, after exactly
  ``max_attempts`` runs on a queue (one on an activity), and one dead-letter copy with
  the expected reason on a queue;
- the timeout holds (invariant 3): the task is settled within its attempts' timeouts plus
  the abandon margin, and a handler that ignores its cancellation neither has its late
  result sent nor spins on the cancellation.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import pytest
from pydantic import BaseModel, field_validator

from broker import ActivitySettings, QueueSettings, Router, Task
from broker.core.runs import ABANDON_MARGIN_S
from broker.sqs.envelope import Envelope, EnvelopeSpec, Poison, PoisonReason, parse_envelope
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings

MAX_ATTEMPTS = 2
TIMEOUT_S = 0.3
#: A 3,000-deep list beside a wide integer: orjson refuses the integer, the standard
#: library's encoder then recurses past Python's limit.
DEEP_LIST: Any = []
for _ in range(3000):
    DEEP_LIST = [DEEP_LIST]


class Custom(BaseException):
    """A handler's own BaseException subclass."""


class Picky(BaseModel):
    n: int

    @field_validator("n")
    @classmethod
    def lookup(cls, value: int) -> int:
        # pydantic turns ValueError into a ValidationError; a KeyError goes through.
        raise KeyError(f"no such n: {value}")


class CountingSfn(FakeSfn):
    """The fake, counting every completion call per token (the first one wins)."""

    def __init__(self) -> None:
        super().__init__(activity_poll_s=0.1)
        self.completions: Counter[str] = Counter()

    async def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        self.completions[taskToken] += 1
        return await super().send_task_success(taskToken=taskToken, output=output)

    async def send_task_failure(
        self, *, taskToken: str, error: str = "", cause: str = ""
    ) -> dict[str, Any]:
        self.completions[taskToken] += 1
        return await super().send_task_failure(taskToken=taskToken, error=error, cause=cause)


@dataclass
class Hostility:
    """What the hostile handler saw: its runs, and how often a cancellation reached it."""

    runs: int = 0
    cancellations: int = 0
    late_results: int = 0
    #: Set by the test at its end: a handler ignoring cancellation stops then.
    release: anyio.Event | None = None


async def ignore_cancellation(seen: Hostility) -> str:
    """Sleep until released, swallowing every cancellation, then return a late result."""
    assert seen.release is not None
    while not seen.release.is_set():
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            seen.cancellations += 1
    seen.late_results += 1
    return "late result"


Behaviour = Callable[[Hostility], Awaitable[Any]]


def _raise(exc: BaseException) -> Behaviour:
    async def behave(seen: Hostility) -> Any:
        raise exc

    return behave


async def _sys_exit(seen: Hostility) -> Any:
    sys.exit(3)


async def _unencodable(seen: Hostility) -> Any:
    return {"n": 2**70, "deep": DEEP_LIST}


async def _block_loop(seen: Hostility) -> Any:
    time.sleep(0.2)  # noqa: ASYNC251 - the hostile part: the event loop stops for 0.2 s
    return "blocked, then fine"


async def _unreachable(seen: Hostility) -> Any:
    raise AssertionError("the model's validator raises before the handler runs")


@dataclass(frozen=True)
class Row:
    name: str
    behave: Behaviour
    #: SendTaskFailure's error; None: the task succeeds with ``output``.
    error: str | None
    output: Any = None
    #: The dead-letter copy's reason on a queue (None: no copy).
    reason: str | None = "AttemptsExhausted"
    #: How many times the handler runs on a queue (an activity runs it once).
    queue_runs: int = MAX_ATTEMPTS
    typed: bool = False
    #: The message body's token fields: None puts the token in ``TaskToken``.
    token_fields: tuple[str, ...] | None = None
    sources: tuple[str, ...] = ("sqs", "activity")


ROWS = [
    Row("sys.exit() in the handler", _sys_exit, "SystemExit"),
    Row("raises KeyboardInterrupt", _raise(KeyboardInterrupt()), "KeyboardInterrupt"),
    Row("raises GeneratorExit", _raise(GeneratorExit()), "GeneratorExit"),
    Row("raises its own BaseException", _raise(Custom("mine")), "Custom"),
    Row("raises CancelledError itself", _raise(asyncio.CancelledError()), "CancelledError"),
    Row(
        "model validator raises KeyError (broker-internal error)",
        _unreachable,
        "Broker.InternalError",
        reason="InternalError",
        queue_runs=0,
        typed=True,
    ),
    Row(
        "output whose encoding raises RecursionError (broker-internal error)",
        _unencodable,
        "Broker.InternalError",
        reason="InternalError",
    ),
    Row(
        "ignores its cancellation past its timeout",
        ignore_cancellation,
        "Broker.HandlerTimeout",
    ),
    Row(
        "blocks the event loop briefly",
        _block_loop,
        None,
        output="blocked, then fine",
        reason=None,
        queue_runs=1,
    ),
    Row(
        "null TaskToken beside a usable taskToken",
        _raise(Custom("never raised: the row is about the body")),
        None,
        output="not hostile",
        reason=None,
        queue_runs=1,
        token_fields=("TaskToken", "taskToken"),
        sources=("sqs",),
    ),
]

CASES = [
    pytest.param(row, source, id=f"{row.name} [{source}]") for row in ROWS for source in row.sources
]


def hostile_router(row: Row, seen: Hostility) -> Router:
    router = Router()

    if row.typed:

        @router.handler("hostile", timeout_s=TIMEOUT_S, max_attempts=MAX_ATTEMPTS)
        async def typed(task: Task[Picky]) -> Any:
            seen.runs += 1
            return await row.behave(seen)

    elif row.token_fields is not None:

        @router.handler("hostile", timeout_s=TIMEOUT_S, max_attempts=MAX_ATTEMPTS)
        async def plain(task: Task[Any]) -> Any:
            seen.runs += 1
            return "not hostile"

    else:

        @router.handler("hostile", timeout_s=TIMEOUT_S, max_attempts=MAX_ATTEMPTS)
        async def hostile(task: Task[Any]) -> Any:
            seen.runs += 1
            return await row.behave(seen)

    @router.handler("good")
    async def good(task: Task[Any]) -> str:
        await anyio.sleep(0.3)  # still running while the hostile one misbehaves
        return f"good {task.payload['n']}"

    return router


def settings_for(source: str) -> Any:
    if source == "sqs":
        return make_settings(
            QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"),
            max_attempts=MAX_ATTEMPTS,
        )
    return make_settings(
        queues=(),
        activities=(ActivitySettings(name="work", type_field="type"),),
    )


async def start(tb: TestBroker, source: str, message_type: str, payload: Any) -> str:
    if source == "activity":
        return tb.start_activity_task({"type": message_type, **payload})
    return await tb.start_task(payload, message_type=message_type)


async def start_hostile(tb: TestBroker, row: Row, source: str) -> str:
    if row.token_fields is None:
        return await start(tb, source, "hostile", {"n": 1})
    token = tb.sfn.new_token()
    body = {"TaskToken": None, "taskToken": token, "type": "hostile", "input": {"n": 1}}
    tb.sqs.put("tasks", orjson.dumps(body), {})
    return token


async def settled(sfn: CountingSfn, token: str, within_s: float) -> float:
    """Seconds until ``token`` was completed; fails past ``within_s``."""
    began = time.perf_counter()
    with anyio.fail_after(within_s):
        while token not in sfn.outcomes:
            await anyio.sleep(0.02)
    return time.perf_counter() - began


def test_every_case_has_an_id_of_its_own() -> None:
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("row", "source"), CASES)
async def test_a_hostile_handler_keeps_the_brokers_promises(row: Row, source: str) -> None:
    release = anyio.Event()
    seen = Hostility(release=release)
    sfn = CountingSfn()
    try:
        async with TestBroker(hostile_router(row, seen), settings_for(source), sfn=sfn) as tb:
            beside = await start(tb, source, "good", {"n": 1})
            hostile = await start_hostile(tb, row, source)
            # Each attempt ends within its timeout plus the abandon margin; a generous
            # allowance for a loaded machine on top.
            bound_s = MAX_ATTEMPTS * (TIMEOUT_S + ABANDON_MARGIN_S) + 10
            await settled(sfn, hostile, bound_s)
            after = await start(tb, source, "good", {"n": 2})
            await settled(sfn, after, 10)
            await settled(sfn, beside, 10)
            await tb.wait_idle(timeout_s=15)
            # Invariant 1: the broker kept running, the other handlers completed.
            assert sfn.outcomes[beside].output == "good 1"
            assert sfn.outcomes[after].output == "good 2"
            # Invariant 2: one outcome, within the attempts.
            outcome = sfn.outcomes[hostile]
            if row.error is None:
                assert (outcome.status, outcome.output) == ("success", row.output)
            else:
                assert (outcome.status, outcome.error) == ("failure", row.error)
                assert outcome.cause
            assert sfn.completions[hostile] == 1
            assert sfn.duplicates == 0
            assert seen.runs == (row.queue_runs if source == "sqs" else min(row.queue_runs, 1))
            if source == "sqs":
                copies = tb.sqs.messages("dlq")
                reasons = [c.attributes["broker.reason"]["StringValue"] for c in copies]
                assert reasons == ([row.reason] if row.reason else [])
                assert tb.sqs.messages("tasks") == []
            # Invariant 3: the timeout held; a late result was never sent.
            if row.behave is ignore_cancellation:
                assert outcome.status == "failure"
                # One cancellation per run (edge-triggered), not one per loop turn.
                assert seen.cancellations <= seen.runs * 3, seen.cancellations
                assert tb.broker.runs.abandoned == seen.runs
                # Each abandoned run keeps a slot until it returns.
                capacity = tb.broker.runs.capacity
                assert capacity is not None
                assert capacity.total_tokens == tb.settings.concurrency - seen.runs
    finally:
        release.set()  # the abandoned runs end (and give their slots back)
    if row.behave is ignore_cancellation:
        with anyio.fail_after(5):
            while tb.broker.runs.abandoned:
                await anyio.sleep(0.02)
        assert seen.late_results == seen.runs
        assert sfn.completions[hostile] == 1  # the late results were dropped
        capacity = tb.broker.runs.capacity
        assert capacity is not None
        assert capacity.total_tokens == tb.settings.concurrency  # the slots came back


@pytest.mark.parametrize("unusable", [None, "", 42, ["t"], {"t": 1}, "x" * 2049])
def test_a_token_field_without_a_usable_value_does_not_count_as_present(unusable: Any) -> None:
    spec = EnvelopeSpec()
    body = {"TaskToken": unusable, "taskToken": "T-1", "type": "ok"}
    parsed = parse_envelope(orjson.dumps(body), {}, spec)
    assert isinstance(parsed, Envelope)
    assert parsed.token == "T-1"
    assert "taskToken" not in parsed.payload  # the field used is the one left out
    # With no usable token anywhere, it is still an invalid token, never echoed.
    alone = parse_envelope(orjson.dumps({"TaskToken": unusable}), {}, spec)
    assert isinstance(alone, Poison)
    assert alone.reason is PoisonReason.INVALID_TOKEN
