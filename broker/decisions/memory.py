"""What this replica knows about links it decided: answered from memory, not from AWS.

A decided link POSTed again would cost a SendTask* call each time, and those calls
share the account's quota (and the broker's rate limit) with every SQS task: a loop of
clients replaying one link must not slow the workflows down.  So:

- ``Settled`` remembers, per token, that the task is closed (this replica decided it,
  or Step Functions said it was closed), and per link that Step Functions refused its
  output.  An entry lives as long as the link could still decide (past its expiry the
  link answers 410 without a call anyway) and the memory holds at most ``max_entries``
  (the oldest go first): bounded whatever clients send.  Keys are SHA-256 digests: the
  memory holds no token.
- ``Flights`` lets one call per token be in flight: concurrent POSTs of the same link
  share its answer; a sibling link's POST waits for it, then finds the task closed.

Per replica: another replica makes its own first call, and learns the same way.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import anyio

from broker.core.completer import Confirmation
from broker.decisions.links import DecisionLink

__all__ = ["MAX_REMEMBERED", "Flights", "Settled"]

#: Entries at most (about 150 bytes each).
MAX_REMEMBERED: Final = 16_384
_ANY_ACTION: Final = "*"


def _key(token: str, action: str) -> bytes:
    return hashlib.sha256(f"{action}\0{token}".encode()).digest()


class Settled:
    """Closed tokens and refused links, until their links expire."""

    def __init__(
        self, max_entries: int = MAX_REMEMBERED, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._max = max_entries
        self._clock = clock
        #: key -> (until, what Step Functions said); oldest first.
        self._entries: OrderedDict[bytes, tuple[float, Confirmation]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def recall(self, link: DecisionLink) -> Confirmation | None:
        """``TASK_CLOSED`` or ``INVALID_OUTPUT`` if known for this link, else None."""
        now = self._clock()
        for key in (_key(link.token, _ANY_ACTION), _key(link.token, link.action)):
            entry = self._entries.get(key)
            if entry is None:
                continue
            until, confirmation = entry
            if until <= now:
                del self._entries[key]
                continue
            return confirmation
        return None

    def learn(self, link: DecisionLink, confirmation: Confirmation) -> None:
        """Remember what a call for ``link`` answered, when it is final."""
        if confirmation in (Confirmation.CONFIRMED, Confirmation.TASK_CLOSED):
            # Any link of the token, either action: Step Functions would say "closed".
            key, known = _key(link.token, _ANY_ACTION), Confirmation.TASK_CLOSED
        elif confirmation is Confirmation.INVALID_OUTPUT:
            # This link's output only: its sibling may still decide.
            key, known = _key(link.token, link.action), confirmation
        else:
            return  # not final: the person may press again and be recorded
        self._entries.pop(key, None)
        self._entries[key] = (link.expires_at.timestamp(), known)
        now = self._clock()
        while self._entries:
            oldest_until, _ = next(iter(self._entries.values()))
            if len(self._entries) <= self._max and oldest_until > now:
                break
            self._entries.popitem(last=False)


@dataclass(eq=False, slots=True)
class _Flight:
    action: str
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Confirmation | None = None


class Flights:
    """At most one Step Functions call per token at a time; same-link callers share it."""

    def __init__(self) -> None:
        self._flights: dict[bytes, _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def once(
        self,
        link: DecisionLink,
        settled: Settled,
        call: Callable[[], Awaitable[Confirmation]],
    ) -> tuple[Confirmation, bool]:
        """What deciding ``link`` answers, and whether it was known without a call
        (from ``settled``, or from a call made for a concurrent request)."""
        key = _key(link.token, _ANY_ACTION)
        while True:
            known = settled.recall(link)
            if known is not None:
                return known, True
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None and flight.action == link.action:
                return flight.result, True
            # The sibling link's call, or one given up: look again.
        flight = _Flight(link.action)
        self._flights[key] = flight
        try:
            flight.result = await call()
            settled.learn(link, flight.result)
            return flight.result, False
        finally:
            del self._flights[key]
            flight.done.set()
