"""One request on a decision link, answered: the endpoint's logic without HTTP.

The endpoint (``decisions.endpoint``) and ``TestBroker.decide`` both call
``Decisions.answer``::

    request                         Step Functions            answer
    a blob no configured key opens  -                         403 refused
    GET / HEAD, link valid          -                         200 the page (nothing decided)
    any method, link expired        -                         410 expired
    POST approve                    SendTaskSuccess(output +  200 approved
                                    decided_at)
    POST reject                     SendTaskFailure(error,    200 rejected
                                    cause)
    ... the task already closed     (answered TaskTimedOut)   409 already decided
    ... not confirmed after retries -                         503 not recorded, try again
    ... refused by ``admit``        -                         403 cross-site, 408, 413
    ... known closed (``memory``)   -                         409 already decided
    another method                  -                         405

A POST is checked by the caller's ``admit`` (the endpoint: the request's origin and its
body) only once its link opened and is still valid, and decided through ``Flights``: one
call per token at a time, and none for a link this replica knows decided (``Settled``).

Each answer is counted (``broker_decisions_total{action,status}``) and logged once on
``broker.decision`` with the token's ``token_ref``: never the token, never the link.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

import anyio
import orjson

from broker.core.completer import Completer, Confirmation
from broker.decisions.links import DecisionLink, LinkCodec, LinkRefused
from broker.decisions.memory import Flights, Settled
from broker.decisions.pages import confirm_page, message_page
from broker.observability.redact import token_ref
from broker.observability.stats import Stats

__all__ = ["Admit", "Answer", "DecisionStatus", "Decisions"]

log = logging.getLogger("broker.decision")

#: How long a POST may wait for Step Functions (the Completer's retries included)
#: before the person is told "not recorded, try again".
DECIDE_DEADLINE_S: Final = 20.0


class DecisionStatus(StrEnum):
    """The ``status`` label of ``broker_decisions_total`` and of the log event."""

    VIEWED = "viewed"
    APPROVED = "approved"
    REJECTED = "rejected"
    ALREADY_DECIDED = "already_decided"
    EXPIRED = "expired"
    REFUSED = "refused"
    UNCONFIRMED = "unconfirmed"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    FAILED = "failed"
    CROSS_SITE = "cross_site"
    INCOMPLETE = "incomplete"


_HTTP: Final = {
    DecisionStatus.VIEWED: 200,
    DecisionStatus.APPROVED: 200,
    DecisionStatus.REJECTED: 200,
    DecisionStatus.ALREADY_DECIDED: 409,
    DecisionStatus.EXPIRED: 410,
    DecisionStatus.REFUSED: 403,
    DecisionStatus.UNCONFIRMED: 503,
    DecisionStatus.METHOD_NOT_ALLOWED: 405,
    DecisionStatus.TOO_LARGE: 413,
    DecisionStatus.NOT_FOUND: 404,
    DecisionStatus.FAILED: 500,
    DecisionStatus.CROSS_SITE: 403,
    DecisionStatus.INCOMPLETE: 408,
}

_TEXTS: Final = {
    DecisionStatus.APPROVED: ("Approved", "Your approval is recorded. You can close this page."),
    DecisionStatus.REJECTED: ("Rejected", "Your rejection is recorded. You can close this page."),
    DecisionStatus.ALREADY_DECIDED: (
        "Already decided",
        "This task was decided already (or its workflow stopped waiting); nothing changed.",
    ),
    DecisionStatus.EXPIRED: ("Link expired", "This link has expired; nothing was decided."),
    DecisionStatus.REFUSED: ("Invalid link", "This link is not valid; nothing was decided."),
    DecisionStatus.UNCONFIRMED: (
        "Not recorded",
        "Your decision could not be recorded just now. Please try again in a minute.",
    ),
    DecisionStatus.METHOD_NOT_ALLOWED: ("Not allowed", "Open the link in a browser."),
    DecisionStatus.TOO_LARGE: ("Request too large", "Nothing was decided."),
    DecisionStatus.NOT_FOUND: ("Not found", "There is nothing here."),
    DecisionStatus.FAILED: (
        "Not recorded",
        "Step Functions refused this decision; it cannot be recorded.",
    ),
    DecisionStatus.CROSS_SITE: (
        "Not decided: the request came from another site",
        "Decisions are made only with the button on the link's own page. Open the link "
        "from your mail and press the button there.",
    ),
    DecisionStatus.INCOMPLETE: (
        "Request incomplete",
        "The request did not arrive whole in time; nothing was decided. Please try again.",
    ),
}

#: Called for a POST once its link opened and is valid: a refusal, or None to decide.
Admit = Callable[[], Awaitable[DecisionStatus | None]]


#: Requests that opened no link (forged, garbage, other methods) are logged at most this
#: many times per window; the rest are counted, and the next line logged says how many.
UNOPENED_LOG_BURST: Final = 20
UNOPENED_LOG_WINDOW_S: Final = 60.0


@dataclass(slots=True)
class LogBudget:
    """``burst`` log lines per ``window_s``; what is over is counted, not logged."""

    burst: int
    window_s: float
    _window_start: float = float("-inf")
    _used: int = 0
    _dropped: int = 0

    def allow(self, now: float) -> bool:
        if now - self._window_start >= self.window_s:
            self._window_start, self._used = now, 0
        if self._used < self.burst:
            self._used += 1
            return True
        self._dropped += 1
        return False

    def take_dropped(self) -> int:
        dropped, self._dropped = self._dropped, 0
        return dropped


@dataclass(frozen=True, slots=True)
class Answer:
    status: DecisionStatus
    page: str
    #: "approve", "reject", or "none" when the link did not open.
    action: str = "none"
    #: Why, for the log: a refusal's reason, the confirmation.
    reason: str = ""
    #: Decided without a call of its own (the replica's memory, or a concurrent call).
    known: bool = False

    @property
    def http_status(self) -> int:
        return _HTTP[self.status]


def answer_page(status: DecisionStatus) -> str:
    title, text = _TEXTS[status]
    return message_page(title, text)


class Decisions:
    """Opens links and decides them through the broker's ``Completer``."""

    def __init__(
        self,
        codec: LinkCodec,
        completer: Completer,
        stats: Stats,
        *,
        clock: Callable[[], float] = time.time,
        deadline_s: float = DECIDE_DEADLINE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.codec = codec
        self._completer = completer
        self._stats = stats
        self._clock = clock
        self._deadline_s = deadline_s
        self._monotonic = monotonic
        self._unopened = LogBudget(UNOPENED_LOG_BURST, UNOPENED_LOG_WINDOW_S)
        #: Replays answered from memory are as cheap to send in a loop: the same budget.
        self._known = LogBudget(UNOPENED_LOG_BURST, UNOPENED_LOG_WINDOW_S)
        self.settled = Settled(clock=clock)
        self.flights = Flights()

    async def answer(self, method: str, blob: str, *, admit: Admit | None = None) -> Answer:
        """The answer to ``method`` on the link ``blob``, counted and logged.

        ``admit`` runs for a POST whose link opened and is valid, before it decides:
        nothing of the request beyond its line is looked at for a link that does not."""
        link: DecisionLink | None = None
        if method not in ("GET", "HEAD", "POST"):
            answer = Answer(
                DecisionStatus.METHOD_NOT_ALLOWED, answer_page(DecisionStatus.METHOD_NOT_ALLOWED)
            )
        else:
            try:
                link = self.codec.open(blob)
            except LinkRefused as refused:
                refusal = DecisionStatus.REFUSED
                answer = Answer(refusal, answer_page(refusal), reason=refused.reason)
            else:
                answer = await self._answer_link(method, link, admit)
        self.record(answer, link)
        return answer

    async def _answer_link(self, method: str, link: DecisionLink, admit: Admit | None) -> Answer:
        if self.codec.expired(link):
            return self._plain(DecisionStatus.EXPIRED, link)
        if method != "POST":
            return Answer(DecisionStatus.VIEWED, confirm_page(link), link.action)
        if admit is not None and (refusal := await admit()) is not None:
            return self._plain(refusal, link)
        confirmation, known = Confirmation.UNCONFIRMED, False
        with anyio.move_on_after(self._deadline_s):
            confirmation, known = await self.flights.once(
                link, self.settled, lambda: self._decide(link)
            )
        reason = confirmation.value + (", known" if known else "")
        if confirmation is Confirmation.CONFIRMED:
            done = DecisionStatus.APPROVED if link.action == "approve" else DecisionStatus.REJECTED
        elif confirmation is Confirmation.TASK_CLOSED:
            done = DecisionStatus.ALREADY_DECIDED
        elif confirmation is Confirmation.INVALID_OUTPUT:
            done = DecisionStatus.FAILED
        else:
            done = DecisionStatus.UNCONFIRMED
        return Answer(done, answer_page(done), link.action, reason, known)

    async def _decide(self, link: DecisionLink) -> Confirmation:
        if link.action == "approve":
            decided_at = datetime.fromtimestamp(self._clock(), UTC)
            output = {**(link.output or {}), "decided_at": decided_at.isoformat(timespec="seconds")}
            return await self._completer.succeed(link.token, orjson.dumps(output).decode())
        return await self._completer.fail(link.token, link.error or "", link.cause or "")

    def _plain(self, status: DecisionStatus, link: DecisionLink, reason: str = "") -> Answer:
        return Answer(status, answer_page(status), link.action, reason)

    def record(self, answer: Answer, link: DecisionLink | None = None) -> None:
        """The answer's one count and, for a link, its one log event."""
        self._stats.decisions[(answer.action, answer.status.value)] += 1
        if answer.status is DecisionStatus.NOT_FOUND:
            return  # not a link: counted only, so that scans cannot flood the log
        budget = self._unopened if link is None else self._known if answer.known else None
        if budget is not None and not budget.allow(self._monotonic()):
            return  # garbage or replays sent in a loop: counted, and summed up later
        ref = token_ref(link.token) if link is not None else None
        more = budget.take_dropped() if budget is not None else 0
        unlogged = "unopened" if link is None else "answered from memory"
        log.log(
            logging.WARNING if answer.status is DecisionStatus.UNCONFIRMED else logging.INFO,
            "decision link %s: %s%s (%s)",
            answer.action,
            answer.status.value,
            f" ({answer.reason})" if answer.reason else "",
            (ref or "no token") + (f"; {more} more {unlogged} since" if more else ""),
            extra={
                "event": "decision",
                "action": answer.action,
                "token_ref": ref,
                "status": answer.status.value,
                "http_status": answer.http_status,
                "reason": answer.reason or None,
                "unlogged_before": more or None,
            },
        )
