"""What a handler receives: one workflow task, with its payload and where it came from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from broker.observability.redact import token_ref

__all__ = ["Task"]

PayloadT = TypeVar("PayloadT")


async def _no_heartbeat() -> None:
    return None


@dataclass(eq=False, slots=True)
class Task(Generic[PayloadT]):
    """One unit of work for a handler.

    Annotate the handler's parameter as ``Task[Model]`` (a pydantic model, a
    dataclass, a ``TypedDict``, any type pydantic can validate) and the broker
    validates the payload before the handler runs; a payload that does not fit fails
    the workflow task with ``Broker.InvalidInput``.  A bare ``Task`` passes the
    payload through as parsed JSON.
    """

    payload: PayloadT
    message_type: str
    #: The Step Functions task token.  A credential: never log it; use ``token_ref``.
    token: str = field(repr=False)
    #: Name of the queue (or activity) the task came from.
    source: str
    message_id: str
    #: How many times the message has been received, this time included.
    receive_count: int = 1
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: The whole message body as parsed JSON, token included.
    body: Mapping[str, Any] = field(default_factory=dict, repr=False)
    _send_heartbeat: Callable[[], Awaitable[None]] = field(default=_no_heartbeat, repr=False)

    @property
    def token_ref(self) -> str:
        """A short hash of the token, safe to log."""
        return token_ref(self.token)

    async def heartbeat(self) -> None:
        """Tell Step Functions the task is still being worked on (SendTaskHeartbeat).

        Raises ``broker.TaskClosed`` when the workflow has closed the task (timed out,
        stopped): stop working and let it propagate.
        """
        await self._send_heartbeat()
