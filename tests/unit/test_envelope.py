from __future__ import annotations

from typing import Any

import orjson
import pytest

from broker import Router, Task
from broker.sqs.envelope import Envelope, EnvelopeSpec, Poison, PoisonReason, parse_envelope
from broker.testing import TestBroker

from .conftest import make_settings

SPEC = EnvelopeSpec()


def parse(
    body: object, attributes: dict[str, str] | None = None, spec: EnvelopeSpec = SPEC
) -> Envelope | Poison:
    """``attributes``: String attributes by name (as a producer usually sends them)."""
    raw = body if isinstance(body, str | bytes) else orjson.dumps(body)
    typed = {
        name: {"DataType": "String", "StringValue": value}
        for name, value in (attributes or {}).items()
    }
    return parse_envelope(raw, typed, spec)


def test_seed_000_shape_input_and_my_task_token() -> None:
    parsed = parse({"input": {"TransactionType": "PURCHASE"}, "MyTaskToken": "tok-1"})
    assert isinstance(parsed, Envelope)
    assert parsed.token == "tok-1"
    assert parsed.payload == {"TransactionType": "PURCHASE"}
    assert parsed.message_type is None


def test_seed_004_shape_payload_and_task_token() -> None:
    parsed = parse({"Payload": {"id": 7}, "TaskToken": "tok-2"})
    assert isinstance(parsed, Envelope)
    assert (parsed.token, parsed.payload) == ("tok-2", {"id": 7})


def test_payload_defaults_to_body_without_token() -> None:
    parsed = parse({"taskToken": "t", "a": 1, "type": "x"})
    assert isinstance(parsed, Envelope)
    assert parsed.payload == {"a": 1, "type": "x"}
    assert parsed.message_type == "x"


def test_attribute_beats_body_field_beats_default() -> None:
    spec = EnvelopeSpec(default_type="fallback")
    body = {"TaskToken": "t", "type": "from-body"}
    assert parse(body, {"type": "from-attr"}, spec).message_type == "from-attr"  # type: ignore[union-attr]
    assert parse(body, {}, spec).message_type == "from-body"  # type: ignore[union-attr]
    assert parse({"TaskToken": "t"}, {}, spec).message_type == "fallback"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ({"DataType": "Number", "StringValue": "42"}, "from-body"),
        ({"DataType": "Number.int", "StringValue": "42"}, "from-body"),
        ({"DataType": "Binary", "BinaryValue": b"x"}, "from-body"),
        ({"DataType": "String.label", "StringValue": "from-attr"}, "from-attr"),
        ({"DataType": "String", "StringValue": "from-attr"}, "from-attr"),
    ],
    ids=["Number", "Number with a label", "Binary", "String with a label", "String"],
)
def test_only_a_string_attribute_names_the_type(attribute: dict[str, Any], expected: str) -> None:
    body = orjson.dumps({"TaskToken": "t", "type": "from-body"})
    parsed = parse_envelope(body, {"type": attribute}, SPEC)
    assert isinstance(parsed, Envelope)
    assert parsed.message_type == expected


def test_a_number_attribute_falls_back_to_the_default_without_a_body_type() -> None:
    spec = EnvelopeSpec(default_type="fallback")
    number = {"type": {"DataType": "Number", "StringValue": "42"}}
    parsed = parse_envelope(orjson.dumps({"TaskToken": "t"}), number, spec)
    assert isinstance(parsed, Envelope)
    assert parsed.message_type == "fallback"


def test_dotted_type_path_found_in_body_or_payload() -> None:
    spec = EnvelopeSpec(type_field="order.kind")
    in_body = parse({"TaskToken": "t", "order": {"kind": "a"}}, spec=spec)
    in_payload = parse({"TaskToken": "t", "input": {"order": {"kind": "b"}}}, spec=spec)
    assert in_body.message_type == "a"  # type: ignore[union-attr]
    assert in_payload.message_type == "b"  # type: ignore[union-attr]


def test_seed_001_transaction_type_as_type_field() -> None:
    spec = EnvelopeSpec(type_field="TransactionType")
    parsed = parse({"input": {"TransactionType": "REFUND"}, "MyTaskToken": "t"}, spec=spec)
    assert parsed.message_type == "REFUND"  # type: ignore[union-attr]


def test_custom_token_field() -> None:
    spec = EnvelopeSpec(token_fields=("callback.token",))
    assert isinstance(parse({"callback.token": "t"}, spec=spec), Envelope)
    assert isinstance(parse({"TaskToken": "t"}, spec=spec), Poison)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", PoisonReason.INVALID_JSON),
        (b"\xff\xfe\x00garbage", PoisonReason.INVALID_JSON),
        ("", PoisonReason.INVALID_JSON),
        ("[1, 2]", PoisonReason.NOT_AN_OBJECT),
        ('"a string"', PoisonReason.NOT_AN_OBJECT),
        ("null", PoisonReason.NOT_AN_OBJECT),
        ({"input": {}}, PoisonReason.MISSING_TOKEN),
        ({"TaskToken": ""}, PoisonReason.INVALID_TOKEN),
        ({"TaskToken": 12}, PoisonReason.INVALID_TOKEN),
        ({"TaskToken": "x" * 2049}, PoisonReason.INVALID_TOKEN),
    ],
)
def test_bad_bodies_are_poison_with_reason(body: object, reason: PoisonReason) -> None:
    parsed = parse(body)
    assert isinstance(parsed, Poison)
    assert parsed.reason is reason
    assert parsed.detail


def test_poison_detail_never_echoes_the_token() -> None:
    secret = "s" * 3000
    parsed = parse({"TaskToken": secret})
    assert isinstance(parsed, Poison)
    assert secret[:50] not in parsed.detail


DEEP = "[" * 2000 + "]" * 2000


@pytest.mark.parametrize(
    ("body", "token"),
    [
        (f'{{"TaskToken": "t-1", "input": {DEEP}}}', "t-1"),
        (f'{{"input": {DEEP}, "TaskToken": "t-2"}}', "t-2"),
        # Brackets and quotes inside strings do not throw the scan off.
        (f'{{"a": "]]}}\\"[", "input": {{"x": {DEEP}, "y": "}}"}}, "MyTaskToken": "t-3"}}', "t-3"),
        (f'{{"n": -1.5e3, "b": true, "z": null, "input": {DEEP}, "taskToken": "t\\u00e9"}}', "té"),
        (f'{{"input": {DEEP}}}', None),
        (f'{{"TaskToken": 7, "input": {DEEP}}}', None),
        (f'{{"TaskToken": "", "input": {DEEP}}}', None),
        (f'{{"TaskToken": "{"x" * 2049}", "input": {DEEP}}}', None),
        (f"{DEEP}", None),
        # Not JSON beyond the deep part: the token before it is still read.
        (f'{{"TaskToken": "t-4", "input": {DEEP}, oops', "t-4"),
        (f'{{"input": {DEEP[:-1]}', None),
    ],
    ids=[
        "token first",
        "token after the deep part",
        "brackets in strings",
        "scalars and an escape",
        "no token",
        "token not a string",
        "empty token",
        "over-long token",
        "a deep array",
        "broken after the token",
        "unbalanced",
    ],
)
def test_a_body_too_deep_to_parse_still_gives_its_token(body: str, token: str | None) -> None:
    parsed = parse(body)
    assert isinstance(parsed, Poison)
    assert parsed.reason is PoisonReason.TOO_DEEP
    assert parsed.token == token
    assert "1024 levels" in parsed.detail


def test_a_wide_integer_is_read_exactly() -> None:
    parsed = parse('{"TaskToken": "t", "input": {"n": 123456789012345678901234567890}}')
    assert isinstance(parsed, Envelope)
    assert parsed.payload == {"n": 123456789012345678901234567890}


def test_a_lone_surrogate_is_invalid_json() -> None:
    for body in ('{"TaskToken": "t", "input": "\ud800"}', '{"TaskToken": "t", "input": "\\ud800"}'):
        parsed = parse(body)
        assert isinstance(parsed, Poison)
        assert parsed.reason is PoisonReason.INVALID_JSON


def test_the_deep_scan_stops_at_its_budget() -> None:
    # 150,000 nested brackets before the token: past the scan's budget, so no token
    # (the message is dead-lettered as TooDeep), and the scan ends quickly.
    far = '{"input": ' + "[" * 150_000 + "]" * 150_000 + ', "TaskToken": "t"}'
    parsed = parse(far)
    assert isinstance(parsed, Poison)
    assert (parsed.reason, parsed.token) == (PoisonReason.TOO_DEEP, None)


async def test_a_number_type_attribute_leaves_the_routing_to_the_body() -> None:
    router = Router()

    @router.handler("refund")
    async def refund(task: Task[Any]) -> str:
        return "refunded"

    async with TestBroker(router, make_settings()) as tb:
        token = tb.sfn.new_token()
        await tb.sqs.send_message(
            QueueUrl=tb.sqs.url_of("tasks"),
            MessageBody=orjson.dumps({"TaskToken": token, "type": "refund"}).decode(),
            MessageAttributes={"type": {"DataType": "Number", "StringValue": "42"}},
        )
        await tb.wait_idle()
    assert tb.sfn.outcomes[token].output == "refunded"
