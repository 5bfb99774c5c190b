"""The broker's own cost per task, on the in-memory fakes: no SDK, no HTTP, no emulator.

    .venv/bin/python bench/overhead.py [TASKS] [--runs N] [--no-count]

Prints tasks/s and CPU ms per task (process user+sys over the run) with the default
settings, logging as ``broker run`` sets it up (JSON lines, level INFO, written to
/dev/null), on asyncio and on uvloop.  This is the floor under the broker's own code:
``bench/run.py`` adds the HTTP client and a fast HTTP stub on top.

Then one counted run (not timed: the counting costs CPU itself) says what the broker
does per task: anyio cancel scopes entered, tasks spawned, capacity-limiter and
semaphore acquisitions, log records made and written, spans asked for.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from anyio._backends import _asyncio as anyio_asyncio

from broker import BrokerSettings, QueueSettings, Router, Task
from broker.observability.logs import configure_logging
from broker.observability.tracing import Tracer
from broker.testing import TestBroker


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Counting is on only while the queued tasks are processed (not while they are queued).
_COUNTING = [False]


async def one_run(tasks: int) -> tuple[float, float]:
    router = Router()

    @router.handler("work")
    async def work(task: Task[Any]) -> dict[str, int]:
        return {"n": task.payload["n"]}

    settings = BrokerSettings(
        queues=(QueueSettings(name="tasks", wait_time_s=1),), entry_points=False
    )
    async with TestBroker(router, settings) as tb:
        for n in range(tasks):
            await tb.start_task({"n": n}, message_type="work")
        _COUNTING[0] = True
        wall0, cpu0 = time.perf_counter(), cpu_s()
        await tb.wait_idle(timeout_s=600)
        wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
        _COUNTING[0] = False
    assert len(tb.sfn.outcomes) == tasks, "every task must complete"
    return tasks / wall, 1000 * cpu / tasks


@contextmanager
def counting(counts: collections.Counter[str]) -> Iterator[None]:
    """Count the anyio, logging and tracing work done while the block runs."""
    patched: list[tuple[object, str, Any]] = []

    def wrap(owner: object, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if _COUNTING[0]:
                counts[label] += 1
            return original(*args, **kwargs)

        patched.append((owner, name, original))
        setattr(owner, name, counted)

    wrap(anyio_asyncio.CancelScope, "__enter__", "cancel scopes entered")
    wrap(anyio_asyncio.TaskGroup, "start_soon", "tasks spawned (start_soon)")
    wrap(anyio_asyncio.TaskGroup, "start", "tasks spawned (start)")
    wrap(anyio_asyncio.CapacityLimiter, "acquire_on_behalf_of_nowait", "limiter acquisitions")
    wrap(anyio_asyncio.Semaphore, "acquire_nowait", "semaphore acquisitions")
    wrap(logging.Logger, "makeRecord", "log records made")
    wrap(logging.StreamHandler, "emit", "log records written")
    wrap(Tracer, "span", "spans asked for (child)")
    wrap(Tracer, "message_span", "spans asked for (message)")
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="?", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-count", action="store_true")
    args = parser.parse_args()
    # As `broker run` sets logging up by default: JSON lines at INFO (here to /dev/null).
    devnull = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
    configure_logging("INFO", "json", stream=devnull)
    concurrency = BrokerSettings().concurrency
    print(
        f"{args.tasks} tasks per run, default settings (concurrency {concurrency}), "
        "fakes at zero latency"
    )
    print(f"{'loop':<8} {'run':>3} {'tasks/s':>9} {'CPU ms/task':>12}")
    for run in range(args.runs):  # alternate the loops so noise hits both alike
        for loop in ("asyncio", "uvloop"):
            options = {"use_uvloop": loop == "uvloop"}
            rate, cpu_ms = anyio.run(one_run, args.tasks, backend_options=options)
            print(f"{loop:<8} {run:>3} {rate:>9.0f} {cpu_ms:>12.3f}")
    if args.no_count:
        return
    counts: collections.Counter[str] = collections.Counter()
    tasks = min(args.tasks, 2000)
    with counting(counts):
        anyio.run(one_run, tasks)
    print(f"\nper task (one counted run of {tasks}, asyncio; the fakes' own work included):")
    for label, count in sorted(counts.items()):
        print(f"  {label:<32} {count / tasks:6.2f}")


if __name__ == "__main__":
    main()
