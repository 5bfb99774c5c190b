"""A short, bounded memory of the tokens this process settled, and of the verdicts it
could not get confirmed yet: so that a copy of a task received again runs no handler.

A task's message can come back after its outcome is known here: its delete failed or
landed late (SQS answers a receive that raced the delete), or Step Functions did not
confirm the completion before the retries ran out.  Running the handler again would
repeat its side effects for nothing.  So, per process:

- a token settled here (completed and confirmed, closed, deferred, dead-lettered) is
  remembered for ``SETTLED_TTL_S``: a copy received meanwhile is deleted as a duplicate;
- a ``Succeeded`` / ``Failed`` verdict whose completion was not confirmed is remembered
  too: a copy received meanwhile sends that verdict again instead of running the handler.

Tokens are kept as digests (a token is a credential), both memories are bounded in
entries (and the verdicts in output bytes too), the oldest forgotten first.  Another
replica does not share it: there the visibility keeper is what keeps the copy away.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final

import anyio

from broker.core.payloads import encode_output
from broker.core.verdict import Failed, Succeeded

__all__ = ["SETTLED_TTL_S", "TokenMemory"]

#: How long a settled token or an unconfirmed verdict is remembered.
SETTLED_TTL_S: Final = 900.0
_MAX_SETTLED: Final = 50_000
_MAX_VERDICTS: Final = 2_000
_MAX_VERDICT_BYTES: Final = 32 * 1024 * 1024


def _key(token: str) -> bytes:
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _sized(verdict: Succeeded | Failed) -> tuple[Succeeded | Failed, int]:
    """The verdict as it is sent again (an output encoded once), and its size."""
    if isinstance(verdict, Failed):
        return verdict, len(verdict.cause) + len(verdict.error)
    if verdict.encoded is None:
        encoded = encode_output(verdict.output)
        if not isinstance(encoded, str):
            return verdict, 0  # not sendable: sending it again fails the task the same way
        verdict = Succeeded(None, encoded)  # the object itself is not kept
    assert verdict.encoded is not None
    return verdict, len(verdict.encoded)


class TokenMemory:
    """Settled tokens and unconfirmed verdicts, by token digest, oldest first."""

    def __init__(
        self,
        *,
        ttl_s: float = SETTLED_TTL_S,
        max_settled: int = _MAX_SETTLED,
        max_verdicts: int = _MAX_VERDICTS,
        max_verdict_bytes: int = _MAX_VERDICT_BYTES,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_settled = max_settled
        self._max_verdicts = max_verdicts
        self._max_verdict_bytes = max_verdict_bytes
        self._settled: OrderedDict[bytes, float] = OrderedDict()
        self._verdicts: OrderedDict[bytes, tuple[float, Succeeded | Failed, int]] = OrderedDict()
        self._verdict_bytes = 0

    def settled(self, token: str) -> None:
        """``token``'s task is settled here: a copy of it needs nothing more."""
        key = _key(token)
        self._forget_verdict(key)
        self._settled[key] = anyio.current_time() + self._ttl_s
        self._settled.move_to_end(key)
        self._expire()
        while len(self._settled) > self._max_settled:
            self._settled.popitem(last=False)

    def unconfirmed(self, token: str, verdict: Succeeded | Failed) -> None:
        """``verdict`` was decided for ``token`` but Step Functions did not confirm it."""
        key = _key(token)
        self._forget_verdict(key)
        verdict, size = _sized(verdict)
        if size > self._max_verdict_bytes:
            return
        self._verdicts[key] = (anyio.current_time() + self._ttl_s, verdict, size)
        self._verdict_bytes += size
        self._expire()
        while self._verdicts and (
            len(self._verdicts) > self._max_verdicts
            or self._verdict_bytes > self._max_verdict_bytes
        ):
            self._forget_verdict(next(iter(self._verdicts)))

    def is_settled(self, token: str) -> bool:
        expires = self._settled.get(_key(token))
        return expires is not None and expires > anyio.current_time()

    def verdict(self, token: str) -> Succeeded | Failed | None:
        """The verdict decided for ``token`` and not confirmed yet, if remembered."""
        found = self._verdicts.get(_key(token))
        if found is None or found[0] <= anyio.current_time():
            return None
        return found[1]

    def clear(self) -> None:
        """Forget everything (tests: play a replica that never saw these tokens)."""
        self._settled.clear()
        self._verdicts.clear()
        self._verdict_bytes = 0

    def _forget_verdict(self, key: bytes) -> None:
        found = self._verdicts.pop(key, None)
        if found is not None:
            self._verdict_bytes -= found[2]

    def _expire(self) -> None:
        now = anyio.current_time()
        while self._settled and next(iter(self._settled.values())) <= now:
            self._settled.popitem(last=False)
        while self._verdicts and next(iter(self._verdicts.values()))[0] <= now:
            self._forget_verdict(next(iter(self._verdicts)))
