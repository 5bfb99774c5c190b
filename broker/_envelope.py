"""Reading a message body: where the task token, the payload and the message type are.

The contract (design brief, "The message contract"): the body is a JSON object; the
token sits in a top-level field the state machine chose; the payload is ``input`` /
``Input`` / ``Payload`` or else the body without the token; the type comes from a
message attribute, else a body field (dotted path), else the queue's default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import orjson

__all__ = [
    "DEFAULT_PAYLOAD_FIELDS",
    "DEFAULT_TOKEN_FIELDS",
    "MAX_TOKEN_LENGTH",
    "Envelope",
    "EnvelopeSpec",
    "Poison",
    "PoisonReason",
    "lookup_path",
    "parse_envelope",
]

DEFAULT_TOKEN_FIELDS: Final = ("TaskToken", "taskToken", "MyTaskToken", "myTaskToken")
DEFAULT_PAYLOAD_FIELDS: Final = ("input", "Input", "Payload")
MAX_TOKEN_LENGTH: Final = 2048


class PoisonReason(StrEnum):
    """Why a message cannot be handed to any handler.  Sent as a DLQ attribute."""

    INVALID_JSON = "InvalidJson"
    NOT_AN_OBJECT = "NotAnObject"
    MISSING_TOKEN = "MissingToken"  # noqa: S105 - a reason, not a secret
    INVALID_TOKEN = "InvalidToken"  # noqa: S105 - a reason, not a secret


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
    body: str | bytes, attributes: Mapping[str, str], spec: EnvelopeSpec
) -> Envelope | Poison:
    """Parse one message.  Never raises: bad input is reported as ``Poison``."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
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


def _find_token(document: Mapping[str, Any], fields: Sequence[str]) -> tuple[str | None, Any]:
    for field in fields:
        if field in document:
            return field, document[field]
    return None, None


def _find_payload(
    document: Mapping[str, Any], token_field: str, payload_fields: Sequence[str]
) -> Any:
    for field in payload_fields:
        if field in document:
            return document[field]
    return {key: value for key, value in document.items() if key != token_field}


def _find_type(
    document: Mapping[str, Any], payload: Any, attributes: Mapping[str, str], spec: EnvelopeSpec
) -> str | None:
    if spec.type_attribute:
        value = attributes.get(spec.type_attribute)
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


def lookup_path(root: Any, dotted_path: str) -> Any:
    """The value at ``a.b.c`` in nested mappings, or None."""
    node = root
    for part in dotted_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
