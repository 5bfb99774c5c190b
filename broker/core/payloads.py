"""The JSON that goes into and out of a handler, as Step Functions takes it.

- ``encode_output``: the handler's value as a task output (at most 262,144 bytes), or the
  ``Failed`` verdict saying why it cannot be one;
- ``invalid_input_cause``: a payload's validation errors as the ``Broker.InvalidInput``
  cause, valid JSON within the cause limit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from enum import Enum
from typing import Any, Final

import orjson
from pydantic import BaseModel, ValidationError

from broker.core.completer import MAX_CAUSE_CHARS
from broker.core.errors import ErrorName
from broker.core.verdict import Failed
from broker.observability.stats import Outcome

__all__ = ["MAX_OUTPUT_BYTES", "encode_output", "invalid_input_cause"]

MAX_OUTPUT_BYTES: Final = 262_144


def encode_output(value: object) -> str | Failed:
    """Serialize a handler's return value as the task output, or say why it cannot be."""
    try:
        data = _dumps(value)
    except (TypeError, ValueError) as exc:
        # The standard library's fallback (wide integers) refuses NaN with a ValueError.
        where = _non_finite(value) if isinstance(exc, ValueError) else None
        return Failed(
            ErrorName.INVALID_OUTPUT,
            _non_finite_cause(value, where)
            if where
            else f"handler returned {type(value).__name__}, which is not JSON-serializable: {exc}",
            Outcome.INVALID_OUTPUT,
        )
    if b"null" in data and (where := _non_finite(value)) is not None:
        # orjson writes NaN and +-Infinity as null: a value changed without a word.  JSON
        # has no such numbers and Step Functions would refuse them: one rule, refused.
        return Failed(
            ErrorName.INVALID_OUTPUT, _non_finite_cause(value, where), Outcome.INVALID_OUTPUT
        )
    if len(data) > MAX_OUTPUT_BYTES:
        return Failed(
            ErrorName.OUTPUT_TOO_LARGE,
            f"output is {len(data)} bytes; Step Functions accepts at most {MAX_OUTPUT_BYTES}",
            Outcome.INVALID_OUTPUT,
        )
    return data.decode("utf-8")


def _dumps(value: object) -> bytes:
    try:
        return orjson.dumps(value, default=_to_jsonable)
    except TypeError as exc:
        if "Integer exceeds 64-bit range" not in str(exc):
            raise
    # orjson holds integers up to 64 bits; the standard library writes any integer
    # exactly (what orjson alone can write, such as datetimes, goes through orjson).
    text = json.dumps(
        value,
        default=_to_jsonable_wide,
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    )
    return text.encode("utf-8")


def _non_finite_cause(value: object, where: str) -> str:
    return (
        f"handler returned {type(value).__name__} holding {where}, which JSON cannot "
        "represent (it has no NaN or Infinity)"
    )


def _non_finite(value: object) -> str | None:
    """The first NaN or infinite float in ``value`` (as orjson walks it), else None.

    Looked for only when the output holds a ``null``: that is what orjson made of them.
    Iterative, so a deep value costs no recursion.
    """
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return repr(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, BaseModel):
            stack.append(item.model_dump(mode="python"))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif isinstance(item, Enum):
            stack.append(item.value)
    return None


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _to_jsonable_wide(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return orjson.loads(orjson.dumps(value, default=_to_jsonable))


#: Room left in the cause for what the completer may add (a token_ref for a short token).
_CAUSE_MARGIN: Final = 1_024
#: One error's JSON longer than this is shortened (its context dropped, strings cut).
_MAX_ERROR_CHARS: Final = 2_048
_MAX_TEXT_CHARS: Final = 256


def invalid_input_cause(exc: ValidationError, limit: int = MAX_CAUSE_CHARS) -> str:
    """pydantic's error list as JSON (without the input values), within ``limit``.

    A long list is cut as a list, never as text, so the cause stays valid JSON: the
    errors that fit (one error over 2,048 characters loses its ``ctx`` and has its
    texts cut to 256), then one entry of type ``broker.truncated`` saying how many
    were left out.
    """
    whole = exc.json(include_url=False, include_input=False)
    if len(whole) <= limit:
        return whole
    errors = exc.errors(include_url=False, include_input=False)
    budget = limit - _CAUSE_MARGIN
    kept: list[str] = []
    used = 2  # the brackets
    for error in errors:
        text = _json_text(error)
        if len(text) > _MAX_ERROR_CHARS:
            text = _json_text(_shortened(error))
        if used + len(text) + 1 > budget:
            break
        kept.append(text)
        used += len(text) + 1
    left_out = len(errors) - len(kept)
    if left_out:
        note = {
            "type": "broker.truncated",
            "loc": [],
            "msg": f"{left_out} more error(s) of {len(errors)} not shown (cause limit {limit})",
        }
        kept.append(_json_text(note))
    return "[" + ",".join(kept) + "]"


def _shortened(error: Any) -> dict[str, Any]:
    def cut(value: Any) -> Any:
        text = value if isinstance(value, str) else str(value)
        return text if len(text) <= _MAX_TEXT_CHARS else text[:_MAX_TEXT_CHARS] + "…"

    return {
        "type": cut(error.get("type", "")),
        "loc": [part if isinstance(part, int) else cut(part) for part in error.get("loc", ())],
        "msg": cut(error.get("msg", "")),
    }


def _json_text(value: Any) -> str:
    # default=str: pydantic's ``ctx`` may hold objects (an exception, a pattern).
    try:
        return orjson.dumps(value, default=str).decode("utf-8")
    except TypeError:  # a lone surrogate in a field name: escaped by the stdlib
        return json.dumps(value, default=str, separators=(",", ":"))
