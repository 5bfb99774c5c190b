"""A handler runs in a task of its own; the message path waits for it, but not forever.

Why not in the message's own task: a handler that catches ``CancelledError`` and goes on
cannot be cancelled, and whatever awaits it waits as long as it runs.  Inside an anyio
cancel scope it also spins: anyio delivers the cancellation again on every turn of the
loop, so each ``await`` of the handler raises at once (a core for a handler that
"retries" its sleep).  So each run is an asyncio task (the broker runs on asyncio, with
uvloop when installed) that the message path awaits without joining:

- at the handler's timeout the run is cancelled once (edge-triggered, asyncio's own
  ``Task.cancel``: no spin whatever the handler does with it), and the message path
  waits ``ABANDON_MARGIN_S`` more for it to end;
- a run still going then is *abandoned*: its verdict is ``Broker.HandlerTimeout`` (retried
  like any timeout), whatever it returns later is dropped, and until it ends it takes one
  of the broker-wide slots away (``capacity``), said in a WARNING when abandoned and an
  INFO line when it ends;
- a cancellation from outside (the drain's grace deadline, a workflow that closed the
  task) cancels the run the same way, waits the same margin (shielded), then is
  re-raised, as anyio's rule asks.

What a handler raises is always its task's failure, never the broker's: ``SystemExit``
(``sys.exit()`` in a library), ``KeyboardInterrupt``, ``GeneratorExit`` and any other
``BaseException`` become a ``Retry`` named after their class.  The process's own
interrupt never arrives that way: ``broker run`` takes SIGINT and SIGTERM with its own
signal handlers (``broker.shutdown``), and under a plain ``asyncio.run`` SIGINT
cancels the main task; neither raises ``KeyboardInterrupt`` inside a handler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import anyio

from broker.core.errors import TaskClosed, TaskFailed
from broker.core.router import Route
from broker.core.task import Task
from broker.core.verdict import Closed, Deferred, Failed, Retry, Succeeded, Verdict, retry_for
from broker.core.verdict import timed_out as timeout_verdict
from broker.observability.redact import token_ref

__all__ = ["ABANDON_MARGIN_S", "HandlerRuns"]

log = logging.getLogger("broker.step")

#: How long a cancelled handler has to end before its run is abandoned.
ABANDON_MARGIN_S: Final = 1.0


class HandlerRuns:
    """The broker's handler runs.  ``capacity``: the broker-wide slots, one of which an
    abandoned run keeps until it ends (None: nothing to account, as in unit tests)."""

    def __init__(self, capacity: anyio.CapacityLimiter | None = None) -> None:
        self.capacity = capacity
        #: Abandoned runs still going (strong references: asyncio keeps only weak ones).
        self._strays: set[asyncio.Task[Verdict]] = set()
        #: Slots taken away from ``capacity`` for them (never below one slot left).
        self._withheld = 0
        #: Runs abandoned since start.
        self.abandoned_total = 0

    @property
    def abandoned(self) -> int:
        """Abandoned runs still going."""
        return len(self._strays)

    async def run(self, route: Route, task: Task[Any], timeout_s: float | None) -> Verdict:
        """The handler's verdict, within ``timeout_s`` + the margin whatever it does."""
        cancelled = False

        async def body() -> Verdict:
            try:
                decided = await _decide(route, task)
            except asyncio.CancelledError as exc:
                # Ours (the timeout, or the message path cancelled from outside), or the
                # handler's own ``raise CancelledError`` / a cancelled inner await.
                return timeout_verdict() if cancelled else retry_for(exc)
            # Past its timeout a result is never sent, even one returned in the margin.
            return timeout_verdict() if cancelled else decided

        # Not a task group's child on purpose: the message path must be able to stop
        # waiting for a run that ignores its cancellation (see the module docstring).
        running = asyncio.get_running_loop().create_task(body())
        try:
            if not await _ended_within(running, timeout_s):
                cancelled = True
                running.cancel()
                await _ended_within(running, ABANDON_MARGIN_S)
        except anyio.get_cancelled_exc_class():
            if not running.done():
                cancelled = True
                running.cancel()
                with anyio.CancelScope(shield=True):
                    await _ended_within(running, ABANDON_MARGIN_S)
                if not running.done():
                    self._abandon(running, route, task, timeout_s)
            raise
        if running.done():
            # Cancelled before its first step (a timeout of ~0): it never ran.
            return timeout_verdict() if running.cancelled() else running.result()
        self._abandon(running, route, task, timeout_s)
        return Retry(
            timeout_verdict().error,
            f"handler exceeded its timeout ({timeout_s}s) and ignored its cancellation; its "
            "run was abandoned and whatever it returns is not sent",
        )

    def _abandon(
        self, running: asyncio.Task[Verdict], route: Route, task: Task[Any], timeout_s: float | None
    ) -> None:
        self._strays.add(running)
        self.abandoned_total += 1
        withheld = False
        capacity = self.capacity
        if capacity is not None and capacity.total_tokens > 1:
            capacity.total_tokens -= 1
            self._withheld += 1
            withheld = True
        running.add_done_callback(lambda ended: self._ended(ended, withheld))
        log.warning(
            "handler %s for task %s ignored its cancellation %.0fs after its timeout (%ss): "
            "abandoned (its result will not be sent); it keeps %s until it returns; "
            "%d abandoned run(s) going",
            route.message_type,
            token_ref(task.token),
            ABANDON_MARGIN_S,
            timeout_s,
            "a handler slot" if withheld else "running (no slot left to withhold)",
            len(self._strays),
        )

    def _ended(self, running: asyncio.Task[Verdict], withheld: bool) -> None:
        self._strays.discard(running)
        if withheld and self.capacity is not None:
            self._withheld -= 1
            self.capacity.total_tokens += 1
        log.info(
            "an abandoned handler run ended; %d still going; its result was dropped",
            len(self._strays),
        )


async def _ended_within(running: asyncio.Task[Verdict], timeout_s: float | None) -> bool:
    """Whether ``running`` ended within ``timeout_s`` (None: no limit).

    Waits on a future of its own, so a cancellation of the waiter leaves the run alone;
    a future and a timer cost less per message than a cancel scope and a shield.
    """
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    running.add_done_callback(wake)
    timer = loop.call_later(timeout_s, wake) if timeout_s is not None else None
    try:
        await woken
    finally:
        running.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
    return running.done()


async def _decide(route: Route, task: Task[Any]) -> Verdict:
    """What the handler decided.  Raises only ``CancelledError``."""
    try:
        result = await route.handler(task)
    except TaskFailed as exc:
        return Failed(exc.error, exc.cause)
    except TaskClosed:
        return Closed()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a handler fails its task only
        return retry_for(exc)
    # Deferred: the task stays open for someone else (a person) to complete.
    return result if isinstance(result, Deferred) else Succeeded(result)
