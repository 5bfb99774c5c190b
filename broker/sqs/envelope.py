"""Reading a message body: where the task token, the payload and the message type are.

The contract (design brief, "The message contract"): the body is a JSON object; the
token sits in a top-level field the state machine chose; the payload is ``input`` /
``Input`` / ``Payload`` or else the body without the token; the type comes from a
``String`` message attribute, else a body field (dotted path), else the queue's default.

JSON is read with orjson, which refuses documents nested deeper than 1,024 levels and
reads integers beyond 64 bits as floats.  ``load_json`` reads such integers exactly (with
the standard library); for a document too deep for any parser, ``parse_envelope`` still
reads the token from the top level, so that the task can be failed at once rather than
left to its timeout.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

__all__ = [
    "DEFAULT_PAYLOAD_FIELDS",
    "DEFAULT_TOKEN_FIELDS",
    "MAX_JSON_DEPTH",
    "MAX_TOKEN_LENGTH",
    "Envelope",
    "EnvelopeSpec",
    "Poison",
    "PoisonReason",
    "is_too_deep",
    "load_json",
    "lookup_path",
    "parse_envelope",
]

DEFAULT_TOKEN_FIELDS: Final = ("TaskToken", "taskToken", "MyTaskToken", "myTaskToken")
DEFAULT_PAYLOAD_FIELDS: Final = ("input", "Input", "Payload")
MAX_TOKEN_LENGTH: Final = 2048
#: orjson's nesting limit: deeper documents are refused.
MAX_JSON_DEPTH: Final = 1024

# A run of digits that may be an integer orjson cannot hold exactly: it reads integers
# as i64 or u64 (up to 20 digits) and anything longer as a float.  Digits in strings or
# fractions match too; they only cost a second, exact parse.
_MAYBE_WIDE_INTEGER: Final = re.compile(r"\d{19,}")
_MAYBE_WIDE_INTEGER_BYTES: Final = re.compile(rb"\d{19,}")
_WIDEST_EXACT: Final = 2**63


class PoisonReason(StrEnum):
    """Why a message cannot be handed to any handler.  Sent as a DLQ attribute."""

    INVALID_JSON = "InvalidJson"
    NOT_AN_OBJECT = "NotAnObject"
    MISSING_TOKEN = "MissingToken"  # noqa: S105 - a reason, not a secret
    INVALID_TOKEN = "InvalidToken"  # noqa: S105 - a reason, not a secret
    #: Valid JSON maybe, but nested deeper than ``MAX_JSON_DEPTH``: with a token, the
    #: task is failed with ``Broker.InvalidInput``; without one, it is dead-lettered.
    TOO_DEEP = "TooDeep"


@dataclass(frozen=True, slots=True)
class EnvelopeSpec:
    """Where one queue's messages keep their parts."""

    token_fields: Sequence[str] = DEFAULT_TOKEN_FIELDS
    payload_fields: Sequence[str] = DEFAULT_PAYLOAD_FIELDS
    type_attribute: str | None = "type"
    type_field: str | None = "type"
    default_type: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed message: a token to complete, a payload, and (maybe) a type."""

    token: str
    payload: Any
    message_type: str | None
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Poison:
    """A message no handler can take.  ``token`` is set when one could be read."""

    reason: PoisonReason
    detail: str
    token: str | None = None


def parse_envelope(
    body: str | bytes, attributes: Mapping[str, Mapping[str, Any]], spec: EnvelopeSpec
) -> Envelope | Poison:
    """Parse one message.  Never raises: bad input is reported as ``Poison``.

    ``attributes``: the message attributes as SQS gives them (``DataType``,
    ``StringValue``, ...).
    """
    try:
        document = load_json(body)
    except orjson.JSONDecodeError as exc:
        if is_too_deep(exc):
            return _too_deep(body, spec)
        return Poison(PoisonReason.INVALID_JSON, f"body is not JSON: {exc}")
    if not isinstance(document, dict):
        return Poison(
            PoisonReason.NOT_AN_OBJECT, f"body is JSON {type(document).__name__}, not an object"
        )

    token_field, token = _find_token(document, spec.token_fields)
    if token_field is None:
        return Poison(
            PoisonReason.MISSING_TOKEN,
            f"no task token in any of the fields {', '.join(spec.token_fields)}",
        )
    if not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN_LENGTH:
        # An unusable token cannot be completed; never echo its value.
        return Poison(
            PoisonReason.INVALID_TOKEN,
            f"field {token_field!r} is not a string of 1..{MAX_TOKEN_LENGTH} characters",
        )

    payload = _find_payload(document, token_field, spec.payload_fields)
    message_type = _find_type(document, payload, attributes, spec)
    return Envelope(token=token, payload=payload, message_type=message_type, body=document)


def load_json(data: str | bytes) -> Any:
    """The JSON document in ``data``, integers of any size read exactly.

    ``orjson.JSONDecodeError`` if it is not JSON (``is_too_deep`` tells a document
    nested too deeply apart).
    """
    document = orjson.loads(data)
    wide = (
        _MAYBE_WIDE_INTEGER_BYTES.search(data)
        if isinstance(data, bytes)
        else _MAYBE_WIDE_INTEGER.search(data)
    )
    if wide is not None and _has_lossy_float(document):
        # The standard library reads integers exactly.  orjson has already checked the
        # rest (encoding, NaN, nesting), so this parse cannot fail on what it accepted.
        try:
            document = json.loads(data)
        except RecursionError as exc:  # deeper than Python's stack, not orjson's limit
            raise orjson.JSONDecodeError("depth limit exceeded", "", 0) from exc
    return document


def is_too_deep(exc: orjson.JSONDecodeError) -> bool:
    """True if orjson refused a document only for its nesting."""
    return "depth limit exceeded" in str(exc)


def _has_lossy_float(node: Any) -> bool:
    """True if the document holds a float that may stand for a wider integer."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            # orjson returns every integer in i64/u64 as an int: an integral float this
            # large came from a wider integer (or a float literal; re-reading is exact).
            if item.is_integer() and abs(item) >= _WIDEST_EXACT:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _too_deep(body: str | bytes, spec: EnvelopeSpec) -> Poison:
    detail = f"body is nested deeper than {MAX_JSON_DEPTH} levels; the broker reads it no further"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    fields = _top_level_strings(text, spec.token_fields)
    token = next(
        (
            fields[name]
            for name in spec.token_fields
            if 1 <= len(fields.get(name, "")) <= MAX_TOKEN_LENGTH
        ),
        None,
    )
    if token is not None:
        return Poison(PoisonReason.TOO_DEEP, detail, token=token)
    return Poison(PoisonReason.TOO_DEEP, detail)


#: Brackets and strings the deep-body scan steps over at most (about 30 ms).
_SCAN_BUDGET: Final = 100_000
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
_STRUCTURE: Final = re.compile(r'["\[\]{}]')
_SCALAR: Final = re.compile(r"[^,}\]\s]*")


def _top_level_strings(text: str, names: Sequence[str]) -> dict[str, str]:
    """The string values of ``names`` among an object's top-level fields.

    A scanner, not a parser: nested values are skipped by counting brackets (strings
    honoured), without recursion, so any depth is read.  Whatever it cannot follow ends
    the scan with what was found so far, and so does the ``_SCAN_BUDGET``-th bracket or
    string: the scan runs on the event loop, and 1 MiB of brackets would hold it for
    a third of a second.
    """
    found: dict[str, str] = {}
    budget = [_SCAN_BUDGET]
    wanted = set(names)
    pos = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("{", pos):
        return found
    pos += 1
    try:
        while True:
            pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            if not text.startswith('"', pos):
                return found
            key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
            pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            if not text.startswith(":", pos):
                return found
            pos = _WHITESPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
            if text.startswith('"', pos):
                value, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
                if key in wanted:
                    found.setdefault(key, value)
            elif text.startswith(("{", "["), pos):
                pos = _skip_nested(text, pos, budget)
            else:
                pos = _SCALAR.match(text, pos).end()  # type: ignore[union-attr]
            pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            if not text.startswith(",", pos):
                return found
            pos += 1
    except ValueError:  # a bad string escape, an unbalanced value
        return found


def _skip_nested(text: str, pos: int, budget: list[int]) -> int:
    """The position after the array or object that starts at ``pos``."""
    depth = 0
    while True:
        match = _STRUCTURE.search(text, pos)
        budget[0] -= 1
        if match is None or budget[0] < 0:
            raise ValueError("unbalanced, or past the scan's budget")
        char, pos = match.group(), match.end()
        if char == '"':
            _, pos = json.decoder.scanstring(text, pos)  # type: ignore[attr-defined]
        elif char in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos


def _find_token(document: Mapping[str, Any], fields: Sequence[str]) -> tuple[str | None, Any]:
    # A field holding null, a non-string or "" does not count as present: the next field
    # with a usable token wins ({"TaskToken": null, "taskToken": T} completes T).  Only
    # when none has one is the first field present reported (as an invalid token).
    present: tuple[str | None, Any] = (None, None)
    for field in fields:
        if field in document:
            value = document[field]
            if isinstance(value, str) and 1 <= len(value) <= MAX_TOKEN_LENGTH:
                return field, value
            if present[0] is None:
                present = (field, value)
    return present


def _find_payload(
    document: Mapping[str, Any], token_field: str, payload_fields: Sequence[str]
) -> Any:
    for field in payload_fields:
        if field in document:
            return document[field]
    return {key: value for key, value in document.items() if key != token_field}


def _find_type(
    document: Mapping[str, Any],
    payload: Any,
    attributes: Mapping[str, Mapping[str, Any]],
    spec: EnvelopeSpec,
) -> str | None:
    if spec.type_attribute:
        value = _string_attribute(attributes.get(spec.type_attribute))
        if value:
            return value
    if spec.type_field:
        # The path is tried on the body first, then on the payload, so that both
        # {"type": ..., "input": {...}} and {"input": {"type": ...}} route by "type".
        for root in (document, payload):
            found = lookup_path(root, spec.type_field)
            if isinstance(found, str) and found:
                return found
    return spec.default_type


def _string_attribute(attribute: Any) -> str | None:
    """The value of a ``String`` (or ``String.<label>``) message attribute, else None.

    A ``Number`` attribute also comes as a ``StringValue`` (``"42"``), but a type is a
    name: only text attributes name it, and anything else leaves the body to decide.
    """
    if not isinstance(attribute, Mapping):
        return None
    data_type = attribute.get("DataType")
    value = attribute.get("StringValue")
    if not isinstance(data_type, str) or not isinstance(value, str):
        return None
    return value if data_type == "String" or data_type.startswith("String.") else None


def lookup_path(root: Any, dotted_path: str) -> Any:
    """The value at ``a.b.c`` in nested mappings, or None."""
    node = root
    for part in dotted_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
