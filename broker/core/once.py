"""An ``idempotent=True`` route's handler: at most one run per task token, fleet-wide.

``Step.run`` hands such a route's run here (docs/fleet.md, "Each task's side effects
once")::

    the claim (core.idempotency)      what happens here              the verdict
    claimed                           the handler runs               its own, recorded first
    done: a verdict recorded          nothing runs                   the recorded one (replayed)
    another run holds a live lease    nothing runs                   Busy(left_s)
    the table cannot be asked         nothing runs (fail closed)     Busy(error)

While the run is awaited its claim is renewed (every third of the lease), so a run that
outlives its timeout and the lease's margin (a handler ignoring cancellation) still
holds it: no copy elsewhere starts a second run meanwhile.  The route given to the run
wraps the handler to tell when its coroutine really ends: should the source stop
waiting for it while it goes on (its verdict a ``Retry``), that verdict is recorded as
final instead of released, since nothing would renew the claim once this call returns.

Recorded before the source sends anything: ``Succeeded`` (its output encoded as it will
be sent), ``Failed``, ``Closed``, ``Deferred``, and the failures that are not retried:
a ``NonRetryable`` exception, and a run the source stopped waiting for while its
coroutine goes on (recorded as the failure it becomes: a copy must not start a second
run beside it).  ``Retry`` (an exception, a timeout) releases the claim instead: the
handler decided nothing, and the next copy runs it again, as it would without
idempotency.  A verdict that cannot be recorded (the table failed) is still sent: the
side effect happened, and completing the task now is better than leaving it to a rerun
after the lease.  One refused because another run took the claim over (this run could
not renew its lease in time) is not sent: the verdict recorded by then is sent instead,
or, while the other run holds the claim, the copy waits for its verdict to replay it;
it never runs the handler again while that run lives.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

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
from broker.core.router import HandlerFunc, Route, Router
from broker.core.settings import ENV_PREFIX, BrokerSettings
from broker.core.task import Task
from broker.core.verdict import Busy, Failed, Retry, Succeeded, Verdict
from broker.observability.redact import token_ref

__all__ = ["LEASE_MARGIN_S", "Once", "idempotency_problems"]

log = logging.getLogger("broker.idempotency")

#: The lease is the handler's timeout plus this: the handler's end, the verdict's write
#: and the replicas' clock skew fit in it.
LEASE_MARGIN_S: Final = 30.0
#: A live run renews its claim this many times per lease: two renewals may fail in a
#: row (the table throttled, a slow call) before the lease is at risk.
_RENEWALS_PER_LEASE: Final = 3
#: Giving a claim back when the run is cancelled (the drain) is shielded, and bounded.
_RELEASE_TIMEOUT_S: Final = 2.0


class _Life:
    """Whether the handler's own coroutine still runs: the source may have stopped
    waiting for a handler that ignores cancellation, but its side effect may come yet."""

    def __init__(self) -> None:
        self.alive = False

    def track(self, handler: HandlerFunc) -> HandlerFunc:
        @functools.wraps(handler)
        async def tracked(task: Task[Any]) -> Any:
            self.alive = True
            try:
                return await handler(task)
            finally:
                self.alive = False

        return tracked


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
        self, route: Route, token: str, handler: Callable[[Route], Awaitable[Verdict]]
    ) -> Verdict:
        """``handler(route)`` at most once per token across replicas; what to do otherwise.

        ``handler`` is given the route to run: its handler is wrapped to tell when the
        coroutine really ends.
        """
        lease_s = self.lease_s(route)
        try:
            claim = await self.store.claim(token, route.message_type, lease_s)
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
        if claim.took_over:
            log.warning(
                "handler %s for %s: took over a claim whose lease lapsed (its replica died "
                "or could not renew it): a side effect of that run is made again",
                route.message_type,
                token_ref(token),
            )
        life = _Life()
        run = dataclasses.replace(route, handler=life.track(route.handler))
        verdict: Verdict = Busy()
        cut: BaseException | None = None
        async with anyio.create_task_group() as keeper:
            keeper.start_soon(self._keep, claim, lease_s, token, life)
            try:
                verdict = await handler(run)
            # Re-raised below, past the task group (which would wrap it in a group).
            except BaseException as exc:  # noqa: BLE001
                keeper.cancel_scope.cancel()
                if not life.alive:
                    # Cut off (the drain's grace period): the handler decided nothing;
                    # let the copy that comes back run it without waiting out the lease.
                    # A coroutine still running keeps the claim: it lapses with the lease.
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S):
                        await self._release(claim, token)
                cut = exc
            keeper.cancel_scope.cancel()
        if cut is not None:
            raise cut
        if life.alive and isinstance(verdict, Retry):
            # The source stopped waiting for a handler that ignores cancellation, but
            # it runs on: a second run beside it is what the claim exists to prevent.
            log.warning(
                "handler %s for %s outlived its timeout and still runs: its failure is "
                "recorded, the task is not retried",
                route.message_type,
                token_ref(token),
            )
            verdict = dataclasses.replace(verdict, retryable=False)
        return await self._settle(claim, token, verdict)

    async def _keep(self, claim: Claim, lease_s: float, token: str, life: _Life) -> None:
        """Renew the claim while the run lives (this task is cancelled once it ends)."""
        interval_s = lease_s / _RENEWALS_PER_LEASE
        while True:
            await anyio.sleep(interval_s)
            try:
                renewed = await self.store.renew(claim, lease_s)
            except StoreUnavailable as exc:
                log.warning(
                    "idempotency claim of %s not renewed (%s): tried again in %.0fs",
                    token_ref(token),
                    exc.code,
                    interval_s,
                )
                continue
            if renewed is None:
                if life.alive:
                    log.warning(
                        "idempotency claim of %s lost while its handler runs (its lease "
                        "lapsed and another run took it): this run's verdict is not sent",
                        token_ref(token),
                    )
                return

    async def _settle(self, claim: Claim, token: str, verdict: Verdict) -> Verdict:
        recorded: Recorded
        match verdict:
            case Retry(retryable=False):
                # A decided failure (NonRetryable, or a run left running): sent now by
                # the source, and replayed to every later copy.
                recorded = verdict.exhausted()
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
                verdict = recorded
            case _:
                recorded = verdict
        try:
            if not await self.store.record(claim, recorded):
                return await self._taken_over(token)
        except StoreUnavailable as exc:
            log.warning(
                "idempotency table %s: verdict of %s not recorded (%s); sent anyway (a copy "
                "of the task arriving after the lease would run the handler again)",
                self.store.table,
                token_ref(token),
                exc.code,
            )
        return verdict

    async def _taken_over(self, token: str) -> Verdict:
        """This run's verdict was refused: another run took the claim after its lease
        lapsed.  Send what that run recorded, or wait for it; never run again here."""
        try:
            found = await self.store.find(token)
        except StoreUnavailable as exc:
            return Busy(error=exc.code)
        if isinstance(found, Replay):
            log.warning(
                "idempotency claim of %s was taken over before this run's verdict was "
                "recorded (it outlived its lease): the verdict recorded by the run that "
                "took it is sent",
                token_ref(token),
            )
            return found.verdict
        log.warning(
            "idempotency claim of %s was taken over before this run's verdict was "
            "recorded (it outlived its lease): the run that took it completes the task",
            token_ref(token),
        )
        # Held: back by the time the other run's lease would end; its verdict is
        # replayed then.  None (changed meanwhile): back soon, to find what it became.
        return Busy(left_s=found.left_s if isinstance(found, Held) else 0.0)

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
