"""The bad-input table: every kind of bad message or bad handler result, its documented
outcome (docs/errors.md), and a broker that keeps serving afterwards.

Each row runs on its own broker; after the bad message is settled, a good task must
still complete on the same broker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import orjson
import pytest
from pydantic import BaseModel

from broker import NonRetryable, Outcome, QueueSettings, Router, Task
from broker.sqs.message import MAX_MESSAGE_BYTES
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings


class Order(BaseModel):
    id: int


class HugeError(ValueError):
    pass


class HugeNonRetryable(NonRetryable, ValueError):
    pass


class LeakyError(NonRetryable, RuntimeError):
    pass


class Orders(BaseModel):
    ids: list[int]


class Measure(BaseModel):
    value: float


#: Like the emulators' tokens: a UUID, too short for any "looks like a token" pattern.
SHORT_TOKEN = "7f1c9e2a-4b3d-4c5e-9f60-718293a4b5c6"
WIDE = 123456789012345678901234567890
#: Valid JSON, nested deeper than orjson's 1,024 levels.
DEEP = "[" * 3000 + "]" * 3000


class RecordingSfn(FakeSfn):
    """The fake, keeping each success's output text as sent (the fake parses it with
    orjson, which would turn a wide integer into a float)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw_outputs: dict[str, str] = {}

    async def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        self.raw_outputs.setdefault(taskToken, output)
        return await super().send_task_success(taskToken=taskToken, output=output)


def bad_input_router() -> Router:
    router = Router()

    @router.handler("ok")
    async def ok(task: Task[Any]) -> str:
        return "fine"

    @router.handler("typed")
    async def typed(task: Task[Order]) -> dict[str, int]:
        return {"id": task.payload.id}

    @router.handler("big_output")
    async def big_output(task: Task[Any]) -> str:
        return "x" * 300_000

    @router.handler("not_jsonable")
    async def not_jsonable(task: Task[Any]) -> object:
        return object()

    @router.handler("huge_exception", max_attempts=2)
    async def huge_exception(task: Task[Any]) -> None:
        raise HugeError("e" * 100_000)

    @router.handler("huge_non_retryable")
    async def huge_non_retryable(task: Task[Any]) -> None:
        raise HugeNonRetryable("n" * 100_000)

    @router.handler("never_returns", timeout_s=0.2, max_attempts=2)
    async def never_returns(task: Task[Any]) -> None:
        await anyio.sleep_forever()

    @router.handler("echo")
    async def echo(task: Task[Any]) -> Any:
        return task.payload

    @router.handler("wide_output")
    async def wide_output(task: Task[Any]) -> dict[str, int]:
        return {"n": 2**70}

    @router.handler("nan_output")
    async def nan_output(task: Task[Any]) -> dict[str, float]:
        return {"x": float("nan")}

    @router.handler("infinity_beside_wide_output")
    async def infinity_beside_wide_output(task: Task[Any]) -> dict[str, Any]:
        return {"n": 2**70, "x": [float("-inf")]}

    @router.handler("model_infinity_output")
    async def model_infinity_output(task: Task[Any]) -> Measure:
        return Measure(value=float("inf"))

    @router.handler("orders")
    async def orders(task: Task[Orders]) -> int:
        return len(task.payload.ids)

    @router.handler("leaky")
    async def leaky(task: Task[Any]) -> None:
        token = task.token
        raise LeakyError(
            f"refused {token}; as JSON {json.dumps({'t': token})}; in a URL ?t={quote(token)}"
        )

    return router


def task_body(token: str, message_type: str | None, payload: Any) -> str:
    body: dict[str, Any] = {"TaskToken": token, "input": payload}
    if message_type is not None:
        body["type"] = message_type
    return orjson.dumps(body).decode()


@dataclass(frozen=True)
class Row:
    """One bad input and what must come of it."""

    name: str
    #: The message body, given the task token the fake Step Functions minted.
    body: Callable[[str], str | bytes]
    outcomes: dict[Outcome, int]
    #: SendTaskFailure's error, or None when no completion may be sent at all.
    error: str | None = None
    output: Any = None
    dead_letter_reason: str | None = None
    #: Checks on the failure's cause, for the rows where its size matters.
    max_cause: int | None = None
    #: The message stays in the source queue, hidden, for the queue's redrive policy.
    kept: bool = False
    #: The task's token, when the row needs one of its own shape (else the fake mints one).
    token: str | None = None
    #: Message attributes of the bad message.
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: The output exactly as sent to SendTaskSuccess.
    raw_output: str | None = None
    #: The dead-letter copy's body, when it is not the original's.
    copy_body: str | None = None
    #: Checks on the failure's cause.
    cause_check: Callable[[str], None] | None = None
    #: The token must appear in no cause and no attribute the broker wrote.
    token_free: bool = False


def truncated_error_list(cause: str) -> None:
    """The cause is still the error list as JSON, cut as a list, with a note at the end."""
    errors = json.loads(cause)
    assert isinstance(errors, list)
    assert len(cause) <= 32_768
    *kept, note = errors
    assert len(kept) > 100
    assert all(error["type"] == "int_parsing" for error in kept)
    assert note["type"] == "broker.truncated"
    assert note["msg"].startswith(f"{5_000 - len(kept)} more error(s) of 5000 not shown")


def _names(cause: str, value: str) -> None:
    assert f"holding {value}," in cause
    assert "no NaN or Infinity" in cause


ROWS = [
    Row(
        "invalid JSON", lambda _: "{not json", {Outcome.POISON: 1}, dead_letter_reason="InvalidJson"
    ),
    Row(
        "non-UTF-8 bytes",
        lambda _: b"\xff\xfe\x00{",
        {Outcome.POISON: 1},
        dead_letter_reason="InvalidJson",
    ),
    Row("empty body", lambda _: "", {Outcome.POISON: 1}, dead_letter_reason="InvalidJson"),
    Row("JSON array", lambda _: "[1, 2, 3]", {Outcome.POISON: 1}, dead_letter_reason="NotAnObject"),
    Row(
        "JSON string",
        lambda _: '"just a string"',
        {Outcome.POISON: 1},
        dead_letter_reason="NotAnObject",
    ),
    Row(
        "missing token",
        lambda _: '{"input": {"n": 1}, "type": "ok"}',
        {Outcome.POISON: 1},
        dead_letter_reason="MissingToken",
    ),
    Row(
        "empty token",
        lambda _: '{"TaskToken": "", "type": "ok"}',
        {Outcome.POISON: 1},
        dead_letter_reason="InvalidToken",
    ),
    Row(
        "over-long token",
        lambda _: task_body("t" * 2049, "ok", {}),
        {Outcome.POISON: 1},
        dead_letter_reason="InvalidToken",
    ),
    Row(
        "unknown type",
        lambda token: task_body(token, "mystery", {}),
        {Outcome.UNKNOWN_TYPE: 1},
        error="Broker.UnknownMessageType",
        dead_letter_reason="UnknownMessageType",
    ),
    Row(
        "payload failing the model",
        lambda token: task_body(token, "typed", {"id": "not a number"}),
        {Outcome.INVALID_INPUT: 1},
        error="Broker.InvalidInput",
    ),
    Row(
        "1 MiB body that is not JSON (too large to copy with a reason)",
        lambda _: "x" * MAX_MESSAGE_BYTES,
        {Outcome.POISON: 1},
        kept=True,
    ),
    Row(
        "1 MiB body of a valid task",
        lambda token: task_body(token, "ok", {"blob": "b" * (MAX_MESSAGE_BYTES - 200)}),
        {Outcome.SUCCEEDED: 1},
        output="fine",
    ),
    Row(
        "output of 300 KB",
        lambda token: task_body(token, "big_output", {}),
        {Outcome.INVALID_OUTPUT: 1},
        error="Broker.OutputTooLarge",
    ),
    Row(
        "output that is not JSON-able",
        lambda token: task_body(token, "not_jsonable", {}),
        {Outcome.INVALID_OUTPUT: 1},
        error="Broker.InvalidOutput",
    ),
    Row(
        "exception message of 100 KB, retried then exhausted",
        lambda token: task_body(token, "huge_exception", {}),
        {Outcome.RETRY: 1, Outcome.EXHAUSTED: 1},
        error="HugeError",
        dead_letter_reason="AttemptsExhausted",
        max_cause=32_768,
    ),
    Row(
        "exception message of 100 KB, non-retryable",
        lambda token: task_body(token, "huge_non_retryable", {}),
        {Outcome.EXHAUSTED: 1},
        error="HugeNonRetryable",
        dead_letter_reason="AttemptsExhausted",
        max_cause=32_768,
    ),
    Row(
        "handler that never returns",
        lambda token: task_body(token, "never_returns", {}),
        {Outcome.RETRY: 1, Outcome.EXHAUSTED: 1},
        error="Broker.HandlerTimeout",
        dead_letter_reason="AttemptsExhausted",
    ),
    Row(
        "exception quoting its short token (JSON, URL) in the DLQ detail and the cause",
        lambda token: task_body(token, "leaky", {}),
        {Outcome.EXHAUSTED: 1},
        error="LeakyError",
        dead_letter_reason="AttemptsExhausted",
        token=SHORT_TOKEN,
        token_free=True,
    ),
    Row(
        "exception quoting its long token in the DLQ detail and the cause",
        lambda token: task_body(token, "leaky", {}),
        {Outcome.EXHAUSTED: 1},
        error="LeakyError",
        dead_letter_reason="AttemptsExhausted",
        token_free=True,
    ),
    Row(
        "JSON nested deeper than 1,024 levels, with a token: failed at once, no handler",
        lambda token: f'{{"TaskToken": "{token}", "type": "ok", "input": {DEEP}}}',
        {Outcome.INVALID_INPUT: 1},
        error="Broker.InvalidInput",
    ),
    Row(
        "JSON nested deeper than 1,024 levels, token after the deep part",
        lambda token: (
            f'{{"input": {{"a": {DEEP}, "s": "]}}"}}, "type": "ok", "TaskToken": "{token}"}}'
        ),
        {Outcome.INVALID_INPUT: 1},
        error="Broker.InvalidInput",
    ),
    Row(
        "JSON nested deeper than 1,024 levels, no token",
        lambda _: f'{{"input": {DEEP}}}',
        {Outcome.POISON: 1},
        dead_letter_reason="TooDeep",
    ),
    Row(
        "integer beyond 64 bits in the payload, carried exactly",
        lambda token: json.dumps(
            {"TaskToken": token, "type": "echo", "input": {"n": WIDE, "m": -(2**63) - 1}}
        ),
        {Outcome.SUCCEEDED: 1},
        output={"n": float(WIDE), "m": float(-(2**63) - 1)},  # as the fake reads it back
        raw_output=f'{{"n":{WIDE},"m":{-(2**63) - 1}}}',
    ),
    Row(
        "handler output with a 70-bit integer",
        lambda token: task_body(token, "wide_output", {}),
        {Outcome.SUCCEEDED: 1},
        output={"n": float(2**70)},
        raw_output=f'{{"n":{2**70}}}',
    ),
    Row(
        "handler output holding NaN (orjson alone would write null)",
        lambda token: task_body(token, "nan_output", {}),
        {Outcome.INVALID_OUTPUT: 1},
        error="Broker.InvalidOutput",
        cause_check=lambda cause: _names(cause, "nan"),
    ),
    Row(
        "handler output holding -Infinity beside a 70-bit integer",
        lambda token: task_body(token, "infinity_beside_wide_output", {}),
        {Outcome.INVALID_OUTPUT: 1},
        error="Broker.InvalidOutput",
        cause_check=lambda cause: _names(cause, "-inf"),
    ),
    Row(
        "handler output of a model holding Infinity",
        lambda token: task_body(token, "model_infinity_output", {}),
        {Outcome.INVALID_OUTPUT: 1},
        error="Broker.InvalidOutput",
        cause_check=lambda cause: _names(cause, "inf"),
    ),
    Row(
        "payload failing the model with 5,000 errors: the cause is cut as a list",
        lambda token: task_body(token, "orders", {"ids": ["x"] * 5_000}),
        {Outcome.INVALID_INPUT: 1},
        error="Broker.InvalidInput",
        cause_check=truncated_error_list,
    ),
    Row(
        "lone surrogate in the body",
        lambda token: f'{{"TaskToken": "{token}", "type": "ok", "input": "\ud800"}}',
        {Outcome.POISON: 1},
        dead_letter_reason="InvalidJson",
        copy_body='{"TaskToken": "TOKEN", "type": "ok", "input": "\ufffd"}',
    ),
    Row(
        "lone surrogate in a message attribute of an unknown type",
        lambda token: task_body(token, "mystery", {}),
        {Outcome.UNKNOWN_TYPE: 1},
        error="Broker.UnknownMessageType",
        dead_letter_reason="UnknownMessageType",
        attributes={"note": "half a pair: \udc80"},
    ),
]


def settled_outcomes(tb: TestBroker) -> dict[Outcome, int]:
    return {o: tb.broker.stats.total(o) for o in Outcome if tb.broker.stats.total(o)}


def test_every_row_has_an_id_of_its_own() -> None:
    # pytest would number duplicates ("name0", "name1"): a row must read as what it tests.
    names = [row.name for row in ROWS]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_bad_input_gets_its_documented_outcome_and_the_broker_keeps_running(
    row: Row,
) -> None:
    # Retries at once, but poison without a usable copy stays hidden for 300 s.
    settings = make_settings(
        QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"),
        retry_base_delay_s=0,
        retry_max_delay_s=300,
    )
    sfn = RecordingSfn()
    async with TestBroker(bad_input_router(), settings, sfn=sfn) as tb:
        token = tb.sfn.new_token(row.token)
        body = row.body(token)
        tb.sqs.put("tasks", body, row.attributes)
        await tb.wait_idle(timeout_s=15)

        assert settled_outcomes(tb) == row.outcomes
        if row.error is None and row.output is None:
            assert tb.sfn.calls.total() == 0, "nothing can be completed for this input"
        else:
            outcome = tb.sfn.outcomes[token]
            assert (outcome.error, outcome.output) == (row.error, row.output)
            if row.max_cause is not None:
                assert outcome.cause is not None
                assert 0 < len(outcome.cause) <= row.max_cause
            if row.cause_check is not None:
                assert outcome.cause is not None
                row.cause_check(outcome.cause)
            if row.token_free:
                assert outcome.cause is not None
                assert token not in outcome.cause
                assert "tok:" in outcome.cause
            if row.raw_output is not None:
                assert sfn.raw_outputs[token] == row.raw_output

        copies = tb.sqs.messages("dlq")
        if row.dead_letter_reason is None:
            assert copies == []
        else:
            [copy] = copies
            assert copy.attributes["broker.reason"]["StringValue"] == row.dead_letter_reason
            assert copy.attributes["broker.source_queue"]["StringValue"] == "tasks"
            original = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            if row.copy_body is not None:
                original = row.copy_body.replace("TOKEN", token)
            assert copy.body == (original or "(empty body)")
            for name, value in copy.attributes.items():
                value.get("StringValue", "").encode("utf-8")  # SQS could carry it
                if row.token_free and name.startswith("broker."):
                    assert token not in value["StringValue"], name
            if row.token_free:
                assert "tok:" in copy.attributes["broker.detail"]["StringValue"]

        if row.kept:
            [stored] = tb.sqs.messages("tasks")
            assert stored.visible_at - anyio.current_time() > 250, "hidden for the redrive"
        else:
            assert tb.sqs.count("tasks") == 0

        # The same broker still serves a good task.
        good = await tb.start_task({"n": 1}, message_type="ok")
        await tb.wait_idle(timeout_s=10)
        assert tb.sfn.outcomes[good].output == "fine"


async def test_a_too_large_copy_drops_the_original_attributes_but_keeps_the_reason() -> None:
    settings = make_settings(QueueSettings(name="tasks", wait_time_s=1, dead_letter_queue="dlq"))
    body = "y" * (MAX_MESSAGE_BYTES - 2_000)
    async with TestBroker(Router(), settings) as tb:
        # The original fits SQS's limit by 10 bytes; a copy with the reason cannot.
        tb.sqs.put("tasks", body, {"note": "z" * (2_000 - 10 - len("note") - len("String"))})
        await tb.wait_idle()
    [copy] = tb.sqs.messages("dlq")
    assert copy.body == body
    assert copy.attributes["broker.reason"]["StringValue"] == "InvalidJson"
    assert "note" not in copy.attributes
    assert tb.sqs.count("tasks") == 0
