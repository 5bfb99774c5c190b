"""Input the JSON parser alone gets wrong, and the texts the broker sends on.

- JSON nested deeper than orjson's 1,024 levels, integers beyond 64 bits (both message
  and activity paths);
- the ``Broker.InvalidInput`` cause for a long error list, cut as a list;
- the token redaction applied to causes and dead-letter details.

The message rows of the same cases are in tests/unit/test_bad_input.py.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from broker import ActivitySettings, ErrorName, Outcome, Router, Task
from broker.core.completer import MAX_CAUSE_CHARS
from broker.core.payloads import encode_output, invalid_input_cause
from broker.core.verdict import Failed as Failure
from broker.observability.redact import redact, token_ref
from broker.sqs.envelope import is_too_deep, load_json
from broker.sqs.message import message_size, without_surrogates
from broker.testing import FakeSfn, TestBroker

from .conftest import make_settings

WIDE = 123456789012345678901234567890


def test_orjson_still_names_its_depth_limit_as_the_broker_expects() -> None:
    # is_too_deep reads orjson's message: a new orjson wording must fail here first.
    with pytest.raises(orjson.JSONDecodeError) as caught:
        orjson.loads("[" * 1025 + "]" * 1025)
    assert is_too_deep(caught.value)
    with pytest.raises(orjson.JSONDecodeError) as other:
        orjson.loads("{not json")
    assert not is_too_deep(other.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'{{"n": {WIDE}}}', {"n": WIDE}),
        (b'{"n": 18446744073709551616}', {"n": 2**64}),
        ('{"n": -9223372036854775809}', {"n": -(2**63) - 1}),
        ('{"n": 18446744073709551615, "m": -9223372036854775808}', {"n": 2**64 - 1, "m": -(2**63)}),
        ('{"s": "12345678901234567890123", "f": 1.5}', {"s": "12345678901234567890123", "f": 1.5}),
        ('{"f": 1e30}', {"f": 1e30}),
    ],
    ids=[
        "30 digits",
        "2**64 as bytes",
        "below i64",
        "the edges orjson holds",
        "digits in a string",
        "a float",
    ],
)
def test_load_json_reads_integers_of_any_size_exactly(text: str | bytes, expected: Any) -> None:
    document = load_json(text)
    assert document == expected
    assert [type(v) for v in document.values()] == [type(v) for v in expected.values()]


def test_load_json_refuses_what_orjson_refuses() -> None:
    for text in ("NaN", '{"n": Infinity}', '{"s": "\\ud800"}', "{"):
        with pytest.raises(orjson.JSONDecodeError):
            load_json(text)


def test_encode_output_writes_wide_integers_exactly_and_the_rest_as_orjson() -> None:
    class Model(BaseModel):
        n: int

    assert encode_output({"n": 2**70, "m": Model(n=2**65)}) == (
        f'{{"n":{2**70},"m":{{"n":{2**65}}}}}'
    )
    assert encode_output({"n": 1, "s": "é"}) == '{"n":1,"s":"é"}'
    refused = encode_output({"n": 2**70, "x": float("nan")})
    assert isinstance(refused, Failure)
    assert refused.error == ErrorName.INVALID_OUTPUT


def _validation_error(model: Any, value: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(model).validate_python(value)
    return caught.value


def test_a_short_error_list_is_pydantic_json_unchanged() -> None:
    exc = _validation_error(list[int], ["x"])
    assert invalid_input_cause(exc) == exc.json(include_url=False, include_input=False)


def test_a_long_error_list_is_cut_as_a_list_with_a_count() -> None:
    exc = _validation_error(list[int], ["x"] * 20_000)
    cause = invalid_input_cause(exc)
    assert len(cause) <= MAX_CAUSE_CHARS
    *kept, note = json.loads(cause)
    assert note == {
        "type": "broker.truncated",
        "loc": [],
        "msg": f"{20_000 - len(kept)} more error(s) of 20000 not shown (cause limit 32768)",
    }
    assert [error["loc"] for error in kept] == [[i] for i in range(len(kept))]


def test_one_huge_error_is_shortened_not_cut_mid_text() -> None:
    # A dict key from the input lands in ``loc``: 100 KB in one error.
    exc = _validation_error(dict[str, int], {"k" * 100_000: "x", "short": "y"})
    cause = invalid_input_cause(exc)
    assert len(cause) <= MAX_CAUSE_CHARS
    errors = json.loads(cause)
    assert [error["type"] for error in errors] == ["int_parsing", "int_parsing"]
    assert len(errors[0]["loc"][0]) < 300


def test_redact_finds_the_token_spelled_as_json_url_or_form() -> None:
    token = 'AAA+b/c=="d'
    ref = token_ref(token)
    for spelling in (token, json.dumps(token)[1:-1], quote(token, safe=""), quote_plus(token)):
        assert redact(f"x {spelling} y", token) == f"x {ref} y"
    assert redact("nothing here", token) == "nothing here"
    assert redact("no token known", None) == "no token known"


def test_message_size_and_copies_survive_a_lone_surrogate() -> None:
    assert message_size(
        "a\ud800", {"n\udc80": {"DataType": "String", "StringValue": "\ud800"}}
    ) == (1 + 3 + 4 + 6 + 3)
    assert without_surrogates("ok \ud800 \udfff") == "ok \ufffd \ufffd"
    assert without_surrogates("fine 😀") == "fine 😀"


# ---------------------------------------------------------------------- activities


class Orders(BaseModel):
    ids: list[int]


def _activity_router() -> tuple[Router, list[Any]]:
    router = Router()
    called: list[Any] = []

    @router.handler("echo")
    async def echo(task: Task[Any]) -> Any:
        called.append(task.payload)
        return task.payload

    @router.handler("orders")
    async def orders(task: Task[Orders]) -> int:
        called.append(task.payload)
        return len(task.payload.ids)

    return router, called


class RecordingSfn(FakeSfn):
    def __init__(self) -> None:
        super().__init__(activity_poll_s=0.05)
        self.raw_outputs: dict[str, str] = {}

    async def send_task_success(self, *, taskToken: str, output: str) -> dict[str, Any]:
        self.raw_outputs.setdefault(taskToken, output)
        return await super().send_task_success(taskToken=taskToken, output=output)

    def schedule_raw(self, activity: str, input_json: str) -> str:
        """An activity task whose input is this exact JSON text."""
        token = self.new_token()
        self.activities[self.add_activity(activity)].waiting.append((token, input_json))
        return token


@pytest.mark.parametrize(
    ("handler", "input_json", "error", "raw_output", "outcome"),
    [
        ("echo", f'{{"n": {WIDE}}}', None, f'{{"n":{WIDE}}}', Outcome.SUCCEEDED),
        ("echo", "[" * 2000 + "]" * 2000, ErrorName.INVALID_INPUT, None, Outcome.INVALID_INPUT),
        (
            "orders",
            orjson.dumps({"ids": ["x"] * 5000}).decode(),
            ErrorName.INVALID_INPUT,
            None,
            Outcome.INVALID_INPUT,
        ),
    ],
    ids=[
        "wide integer carried exactly",
        "nested deeper than 1,024 levels",
        "5,000 validation errors",
    ],
)
async def test_activity_inputs_the_parser_alone_gets_wrong(
    handler: str, input_json: str, error: str | None, raw_output: str | None, outcome: Outcome
) -> None:
    router, called = _activity_router()
    sfn = RecordingSfn()
    settings = make_settings(queues=(), activities=(ActivitySettings(name="act", handler=handler),))
    async with TestBroker(router, settings, sfn=sfn) as tb:
        token = sfn.schedule_raw("act", input_json)
        await tb.wait_idle()
        assert tb.broker.stats.total(outcome) == 1
    result = sfn.outcomes[token]
    assert result.error == error
    if raw_output is not None:
        assert sfn.raw_outputs[token] == raw_output
    if error is not None:
        assert called == [], "the handler never runs"
        assert result.cause is not None
        assert len(result.cause) <= MAX_CAUSE_CHARS
        if handler == "orders":
            assert json.loads(result.cause)[-1]["type"] == "broker.truncated"
        else:
            assert "nested deeper than 1024 levels" in result.cause


async def test_an_idempotent_handler_returning_nan_is_recorded_as_the_failure_it_became() -> None:
    # once.py records through encode_output: the record and the completion agree.
    runs = 0
    router = Router()

    @router.handler("measure", idempotent=True, timeout_s=5)
    async def measure(task: Task[Any]) -> dict[str, float]:
        nonlocal runs
        runs += 1
        return {"ratio": float("nan")}

    async with TestBroker(router, make_settings()) as tb:
        token = await tb.start_task({}, message_type="measure")
        await tb.wait_idle()
        tb.sqs.put("tasks", orjson.dumps({"TaskToken": token, "input": {}}), {"type": "measure"})
        await tb.wait_idle()
    assert runs == 1, "the copy replays the recorded failure"
    outcome = tb.sfn.outcomes[token]
    assert (outcome.status, outcome.error) == ("failure", ErrorName.INVALID_OUTPUT)
    assert "holding nan" in (outcome.cause or "")
