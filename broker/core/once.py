"""An ``idempotent=True`` route's handler: at most one run per task token, fleet-wide.

``Step.run`` hands such a route's run here (docs/fleet.md, "Each task's side effects
once")::

    the claim (core.idempotency)      what happens here              the verdict
    claimed                           the handler runs               its own, recorded first
    done: a verdict recorded          nothing runs                   the recorded one (replayed)
    another run holds a live lease    nothing runs                   Busy(left_s)
    the table cannot be asked         nothing runs (fail closed)     Busy(error)

Recorded before the source sends anything: ``Succeeded`` (its output encoded as it will
be sent), ``Failed``, ``Closed`` and ``Deferred``.  ``Retry`` (an exception, a timeout)
releases the claim instead: the handler decided nothing, and the next copy runs it
again, as it would without idempotency.  A verdict that cannot be recorded (the table
failed) is still sent: the side effect happened, and completing the task now is better
than leaving it to a rerun after the lease; one whose claim was taken over meanwhile
(the lease ran out) is not: the run that took it sends its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from broker.core.errors import ConfigError
from broker.core.idempotency import (
    Claim,
    Held,
    IdempotencyStore,
    Recorded,
    Replay,
    StoreUnavailable,
)
from broker.core.payloads import encode_output
from broker.core.router import Route, Router
from broker.core.settings import ENV_PREFIX, BrokerSettings
from broker.core.verdict import Busy, Failed, Retry, Succeeded, Verdict
from broker.observability.redact import token_ref

__all__ = ["LEASE_MARGIN_S", "Once", "idempotency_problems"]

log = logging.getLogger("broker.idempotency")

#: The lease is the handler's timeout plus this: the handler's end, the verdict's write
#: and the replicas' clock skew fit in it.
LEASE_MARGIN_S: Final = 30.0
#: Giving a claim back when the run is cancelled (the drain) is shielded, and bounded.
_RELEASE_TIMEOUT_S: Final = 2.0


class Once:
    """Claims, runs, records or replays, for every idempotent route of one broker."""

    def __init__(self, store: IdempotencyStore, *, handler_timeout_s: float | None) -> None:
        self.store = store
        self._handler_timeout_s = handler_timeout_s

    def lease_s(self, route: Route) -> float:
        """How long a claim holds: start-up refuses an idempotent route without a timeout."""
        timeout_s = route.options.timeout_s or self._handler_timeout_s
        if timeout_s is None:
            raise ValueError(f"idempotent route {route.message_type!r} has no handler timeout")
        return timeout_s + LEASE_MARGIN_S

    async def run(
        self, route: Route, token: str, handler: Callable[[], Awaitable[Verdict]]
    ) -> Verdict:
        """``handler()`` at most once per token across replicas; what to do otherwise."""
        try:
            claim = await self.store.claim(token, route.message_type, self.lease_s(route))
        except StoreUnavailable as exc:
            log.warning(
                "idempotency table %s: claim of %s failed (%s): the handler is not run, the "
                "task comes back later",
                self.store.table,
                token_ref(token),
                exc.code,
            )
            return Busy(error=exc.code)
        if isinstance(claim, Replay):
            log.info(
                "handler %s not run again for %s: replaying its recorded verdict",
                route.message_type,
                token_ref(token),
            )
            return claim.verdict
        if isinstance(claim, Held):
            log.info(
                "handler %s for %s is running elsewhere (claim held %.0fs more): wait",
                route.message_type,
                token_ref(token),
                claim.left_s,
            )
            return Busy(left_s=claim.left_s)
        try:
            verdict = await handler()
        except BaseException:
            # Cut off (the drain's grace period): the handler decided nothing; let the
            # copy that comes back run it without waiting out the lease.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S):
                await self._release(claim, token)
            raise
        return await self._settle(claim, token, verdict)

    async def _settle(self, claim: Claim, token: str, verdict: Verdict) -> Verdict:
        recorded: Recorded
        match verdict:
            case Retry() | Busy():
                await self._release(claim, token)
                return verdict
            case Succeeded():
                # Recorded exactly as it will be sent (or as the failure it becomes).
                encoded = encode_output(verdict.output)
                recorded = (
                    encoded
                    if isinstance(encoded, Failed)
                    else Succeeded(verdict.output, encoded=encoded)
                )
            case _:
                recorded = verdict
        try:
            if not await self.store.record(claim, recorded):
                log.warning(
                    "idempotency claim of %s was taken over before its verdict was recorded "
                    "(the handler outlived its lease): the run that took it completes the task",
                    token_ref(token),
                )
                return Busy()
        except StoreUnavailable as exc:
            log.warning(
                "idempotency table %s: verdict of %s not recorded (%s); sent anyway (a copy "
                "of the task arriving after the lease would run the handler again)",
                self.store.table,
                token_ref(token),
                exc.code,
            )
        return recorded

    async def _release(self, claim: Claim, token: str) -> None:
        try:
            await self.store.release(claim)
        except StoreUnavailable as exc:
            log.warning(
                "idempotency claim of %s not released (%s): it lapses with its lease",
                token_ref(token),
                exc.code,
            )


def idempotency_problems(settings: BrokerSettings, router: Router) -> list[ConfigError]:
    """What start-up refuses about ``idempotent=True`` routes (before any AWS call)."""
    idempotent = sorted(route.message_type for route in router if route.options.idempotent)
    if not idempotent:
        return []
    problems = []
    if not settings.idempotency_table:
        problems.append(
            ConfigError(
                f"{ENV_PREFIX}IDEMPOTENCY_TABLE: not set, but handler(s) "
                f"{router.describe(idempotent)} are idempotent=True (create the table with "
                "`broker idempotency create-table NAME`; docs/fleet.md)"
                f"{router.plugin_note(idempotent)}"
            )
        )
    untimed = [
        route.message_type
        for route in router
        if route.options.idempotent and not (route.options.timeout_s or settings.handler_timeout_s)
    ]
    if untimed:
        problems.append(
            ConfigError(
                f"{ENV_PREFIX}HANDLER_TIMEOUT_S: idempotent=True handler(s) "
                f"{router.describe(sorted(untimed))} need a timeout (their claim's lease is "
                "the timeout plus a margin): give them timeout_s or set a default"
                f"{router.plugin_note(untimed)}"
            )
        )
    return problems
