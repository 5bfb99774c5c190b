"""What a handler receives: one workflow task, with its payload and where it came from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from broker.core.errors import DecisionsNotConfigured
from broker.observability.redact import token_ref

if TYPE_CHECKING:
    from broker.decisions.links import DecisionLinks

__all__ = ["Task"]

#: What a reject link fails the task with unless the handler says otherwise.
DEFAULT_REJECT: Final = ("Approval.Rejected", "Rejected by the reviewer")

PayloadT = TypeVar("PayloadT")


async def _no_heartbeat() -> None:
    return None


def _no_decisions(**_: Any) -> DecisionLinks:
    raise DecisionsNotConfigured(
        "task.decision_links() needs decisions=True on the handler's route: "
        "@router.handler(..., decisions=True)"
    )


async def _no_notify(message: Mapping[str, str], subject: str | None) -> str:
    raise DecisionsNotConfigured(
        "task.notify() needs notify=True on the handler's route: @router.handler(..., notify=True)"
    )


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
    #: Set by the broker on a ``decisions=True`` route: ``LinkMaker.links`` for this token.
    _decision_links: Callable[..., DecisionLinks] = field(default=_no_decisions, repr=False)
    #: Set by the broker on a ``notify=True`` route: publishes (message, subject), returns
    #: the MessageId.
    _notify: Callable[[Mapping[str, str], str | None], Awaitable[str]] = field(
        default=_no_notify, repr=False
    )

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

    def decision_links(
        self,
        *,
        subject: str = "",
        details: str = "",
        approve: Mapping[str, Any] | None = None,
        reject: tuple[str, str] = DEFAULT_REJECT,
        ttl_s: float | None = None,
    ) -> DecisionLinks:
        """An approve and a reject link for this task (docs/decisions.md).

        Opening a link shows a page (``subject``, ``details``); only its button decides:
        approve sends ``approve`` (a JSON object, default ``{"approved": true}``) plus
        ``decided_at`` with SendTaskSuccess, reject sends ``reject`` (error, cause) with
        SendTaskFailure.  The links expire after ``ttl_s`` (None:
        ``BROKER_DECISION_TTL_S``).  Send them to the person, then return
        ``Deferred()``.  ``ValueError`` if the texts are too long for a link;
        ``DecisionsNotConfigured`` unless the route has ``decisions=True``.
        """
        return self._decision_links(
            token=self.token,
            subject=subject,
            details=details,
            approve=approve,
            reject=reject,
            ttl_s=ttl_s,
        )

    async def notify(self, message: Mapping[str, str], *, subject: str | None = None) -> str:
        """Publish one message to ``BROKER_DECISION_TOPIC`` (SNS, ``MessageStructure=json``:
        ``message`` holds one text per protocol, ``default`` required); the MessageId.
        ``DecisionsNotConfigured`` unless the route has ``notify=True``."""
        return await self._notify(message, subject)
