"""The broker's own cost per task, on the in-memory fakes: no SDK, no HTTP, no emulator.

    .venv/bin/python bench/overhead.py [TASKS]

Prints tasks/s and CPU ms per task (process user+sys over the run) with the default
settings and with uvloop.  This is the floor under the broker's own code: issue 4's
benchmark adds the SDK and a fast HTTP stub on top.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import anyio

from broker import BrokerSettings, QueueSettings, Router, Task
from broker.testing import TestBroker


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        wall0, cpu0 = time.perf_counter(), cpu_s()
        await tb.wait_idle(timeout_s=600)
        wall, cpu = time.perf_counter() - wall0, cpu_s() - cpu0
    assert len(tb.sfn.outcomes) == tasks, "every task must complete"
    return tasks / wall, 1000 * cpu / tasks


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    logging.basicConfig(level=logging.ERROR)  # the fakes' queue has no DLQ: not news here
    print(f"{tasks} tasks per run, default settings (concurrency 64), fakes at zero latency")
    print(f"{'loop':<8} {'run':>3} {'tasks/s':>9} {'CPU ms/task':>12}")
    for run in range(3):  # alternate the loops so noise hits both alike
        for loop in ("asyncio", "uvloop"):
            options = {"use_uvloop": loop == "uvloop"}
            rate, cpu_ms = anyio.run(one_run, tasks, backend_options=options)
            print(f"{loop:<8} {run:>3} {rate:>9.0f} {cpu_ms:>12.3f}")


if __name__ == "__main__":
    main()
