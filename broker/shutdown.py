"""How ``broker run`` stops: the signals, the drain's hard bound, and the exit itself.

The first SIGINT/SIGTERM begins the drain (``Broker.request_stop``).  The drain bounds
itself (``shutdown_grace_s``, then at most ``DRAIN_AFTER_GRACE_S`` of hand-back,
activity failures and delete flush), but a handler that blocks the event loop could
still hold it: so the first signal also arms a watchdog thread, which ends the process
at that bound whatever the loop does.  A second signal stops at once.  Both end with
``os._exit``: a handler that ignores its cancellation cannot be waited for, and
asyncio's own shutdown would wait for it forever (it cancels every task left and waits
for them).  Nothing is lost that way: messages not deleted come back after their
visibility timeout, as after a kill (docs/operations.md, "The drain, second by second").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Final, NoReturn

import anyio

from broker.service import Broker

__all__ = ["DRAIN_AFTER_GRACE_S", "exit_now", "watch_signals"]

log = logging.getLogger("broker")

#: The drain's bound past the grace period (docs/operations.md says grace + this).
DRAIN_AFTER_GRACE_S: Final = 15.0


def exit_now(code: int) -> NoReturn:
    """Flush what was logged and leave the process now, waiting for no task."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # leaving anyway
            handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _arm_watchdog(grace_s: float) -> None:
    bound_s = grace_s + DRAIN_AFTER_GRACE_S

    def overrun() -> None:
        log.error(
            "drain still running %.0fs after the stop (grace %.0fs + %.0fs): exiting now; "
            "messages not deleted come back after their visibility timeout",
            bound_s,
            grace_s,
            DRAIN_AFTER_GRACE_S,
        )
        exit_now(1)

    watchdog = threading.Timer(bound_s, overrun)
    watchdog.daemon = True  # a drain that ends in time exits without waiting for it
    watchdog.start()


class _RawSignals:
    """What must happen even while a handler blocks the event loop.

    The loop's own signal handling (``open_signal_receiver``) runs only when the loop
    does; Python's signal handler runs in the main thread at the next bytecode, blocked
    loop or not.  Replacing it keeps the loop's dispatch: the loop learns of the signal
    through the wakeup fd, which the C-level handler writes whatever the Python one is.
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self._count += 1
        if self._count == 1:
            _arm_watchdog(self._broker.settings.shutdown_grace_s)
            return
        log.warning(
            "%s received again: stopping now (%d handler(s) running; their messages come "
            "back after their visibility timeout)",
            signal.Signals(signum).name,
            self._broker.in_flight,
        )
        exit_now(0)


async def watch_signals(broker: Broker) -> None:
    """The first SIGINT/SIGTERM drains (bounded by the watchdog), a second exits now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        raw = _RawSignals(broker)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, raw)
        async for signum in signals:
            # The second signal never gets here: ``_RawSignals`` exits first.
            log.info(
                "%s received: draining (send it again to stop at once)",
                signal.Signals(signum).name,
            )
            broker.request_stop()


def leave_abandoned_runs(broker: Broker) -> None:
    """After the drain: exit now if abandoned handler runs are still going (asyncio's
    shutdown would wait for them forever); otherwise return to exit as usual."""
    if broker.runs.abandoned:
        log.warning(
            "exiting with %d abandoned handler run(s) still going (they ignored their "
            "cancellation; their results were never to be sent)",
            broker.runs.abandoned,
        )
        exit_now(0)
