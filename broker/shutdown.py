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


async def watch_signals(broker: Broker) -> None:
    """The first SIGINT/SIGTERM drains (bounded by the watchdog), a second exits now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        draining = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if not draining:
                log.info("%s received: draining (send it again to stop at once)", name)
                broker.request_stop()
                _arm_watchdog(broker.settings.shutdown_grace_s)
                draining = True
            else:
                log.warning(
                    "%s received again: stopping now (%d handler(s) running; their messages "
                    "come back after their visibility timeout)",
                    name,
                    broker.in_flight,
                )
                exit_now(0)


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
