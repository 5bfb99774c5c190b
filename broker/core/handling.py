"""Running one handler, wherever its task came from (an SQS message or an activity).

The pieces both paths share, kept in one place so an SQS message and an activity task
get the same handler timeout, the same heartbeats and the same error names:

- ``run_handler``: the handler under its timeout, its result reduced to a value or one
  of the markers below (never raises, except cancellation);
- ``run_supervised``: ``run_handler`` with the route's heartbeats (and, for SQS, the
  visibility extension) alongside, cancelled when the workflow closes the task;
- ``send_heartbeats``: SendTaskHeartbeat every ``interval_s`` until the task closes;
- ``unexpected_failure``: the ``error``/``cause`` for a timeout or an exception;
- ``encode_output``: the handler's value as a Step Functions output, or why it cannot be;
- ``invalid_input_cause``: a payload's validation errors as the ``Broker.InvalidInput`` cause.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import anyio
import orjson
from pydantic import BaseModel, ValidationError

from broker.core.completer import MAX_CAUSE_CHARS, Completer, Confirmation
from broker.core.errors import ErrorName, TaskClosed, TaskFailed
from broker.core.router import Route
from broker.core.task import Task
from broker.observability.redact import token_ref

__all__ = [
    "MAX_OUTPUT_BYTES",
    "Failure",
    "TimedOut",
    "WorkflowGaveUp",
    "encode_output",
    "heartbeat_or_raise",
    "invalid_input_cause",
    "run_handler",
    "run_supervised",
    "send_heartbeats",
    "unexpected_failure",
]

log = logging.getLogger("broker.handling")

MAX_OUTPUT_BYTES: Final = 262_144


@dataclass(frozen=True, slots=True)
class Failure:
    """A decided failure: SendTaskFailure(error, cause), never retried."""

    error: str
    cause: str


class TimedOut:
    """Marker: the handler ran past its timeout and was cancelled."""


class WorkflowGaveUp:
    """Marker: a heartbeat was answered "task closed"; the handler was cancelled."""


def encode_output(value: Any) -> str | Failure:
    """Serialize a handler's return value as the task output, or say why it cannot be."""
    try:
        data = _dumps(value)
    except (TypeError, ValueError) as exc:
        return Failure(
            ErrorName.INVALID_OUTPUT,
            f"handler returned {type(value).__name__}, which is not JSON-serializable: {exc}",
        )
    if len(data) > MAX_OUTPUT_BYTES:
        return Failure(
            ErrorName.OUTPUT_TOO_LARGE,
            f"output is {len(data)} bytes; Step Functions accepts at most {MAX_OUTPUT_BYTES}",
        )
    return data.decode("utf-8")


def _dumps(value: Any) -> bytes:
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


async def run_handler(route: Route, task: Task[Any], default_timeout_s: float | None) -> Any:
    """The handler's return value, a ``Failure``, ``TimedOut``, ``WorkflowGaveUp`` or the
    exception it raised.  Cancellation from outside is re-raised, never turned into a result.
    """
    timeout_s = route.options.timeout_s or default_timeout_s
    with anyio.move_on_after(timeout_s) as scope:
        try:
            return await route.handler(task)
        except TaskFailed as exc:
            return Failure(exc.error, exc.cause)
        except TaskClosed:
            return WorkflowGaveUp()
        except Exception as exc:  # noqa: BLE001 - every handler error has an outcome
            return exc
    if scope.cancelled_caught:
        return TimedOut()
    raise AssertionError("unreachable: handler neither returned nor timed out")


async def run_supervised(
    completer: Completer,
    route: Route,
    task: Task[Any],
    default_timeout_s: float | None,
    *,
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Any:
    """``run_handler`` while heartbeats (if the route asks) and ``alongside`` run beside it.

    ``WorkflowGaveUp`` when a heartbeat found the task closed: the handler was cancelled.
    """
    gave_up = False
    result: Any = None
    async with anyio.create_task_group() as supervisor:

        def on_closed() -> None:
            # The workflow timed out or was stopped: the work is unwanted.
            nonlocal gave_up
            gave_up = True
            supervisor.cancel_scope.cancel()

        if alongside is not None:
            supervisor.start_soon(alongside)
        if route.options.heartbeat_s:
            supervisor.start_soon(
                send_heartbeats, completer, task.token, route.options.heartbeat_s, on_closed
            )
        result = await run_handler(route, task, default_timeout_s)
        supervisor.cancel_scope.cancel()
    return WorkflowGaveUp() if gave_up else result


async def send_heartbeats(
    completer: Completer, token: str, interval_s: float, on_closed: Callable[[], None]
) -> None:
    """SendTaskHeartbeat every ``interval_s``; call ``on_closed`` and return once the
    workflow closed the task (timed out, stopped): the work is unwanted from then on.
    """
    while True:
        await anyio.sleep(interval_s)
        confirmation = await completer.heartbeat(token)
        if confirmation is Confirmation.TASK_CLOSED:
            on_closed()
            return
        if confirmation is Confirmation.HEARTBEAT_REFUSED:
            log.warning(
                "heartbeats for %s stopped: Step Functions answered InvalidToken (the "
                "emulators do when the state sets no HeartbeatSeconds); the handler goes on",
                token_ref(token),
            )
            return


async def heartbeat_or_raise(completer: Completer, token: str) -> None:
    """``task.heartbeat()``: SendTaskHeartbeat; ``TaskClosed`` once the workflow gave up."""
    confirmation = await completer.heartbeat(token)
    if confirmation is Confirmation.TASK_CLOSED:
        raise TaskClosed(f"task {token_ref(token)} is closed; the workflow gave up")


def unexpected_failure(result: TimedOut | Exception) -> Failure:
    """The names a timeout or an undecided exception fails a task with (docs/errors.md)."""
    if isinstance(result, TimedOut):
        return Failure(ErrorName.HANDLER_TIMEOUT, "handler exceeded its timeout")
    return Failure(type(result).__name__, str(result) or repr(result))
