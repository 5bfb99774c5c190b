"""One persistent fault on one API while ``broker run`` works: handler runs per task.

Issue 21 item 8: deletes failing for 20 s ran 150 tasks' handlers 900 times;
SendTaskSuccess answering 500 for 30 s ran a handler up to 9 times.  Here one broker
or two (never killed: none forgets a verdict) work through tasks whose verdict is decided by
the payload while the stub fails, or slows down, every call of one API for a while.
Each handler run is counted (``FAULT_RUNS_FILE``, tests/faults/handlers.py): where the
broker knew the verdict, a task must not run its handler twice.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from awsstub import StubControl, StubProcess

from .harness import (
    DEAD_LETTERS,
    QUEUE,
    SHUTDOWN_GRACE_S,
    VISIBILITY_TIMEOUT_S,
    BrokerProcess,
    broker_env,
)


@dataclass(frozen=True, slots=True)
class Fault:
    """What the stub does to every call of ``api`` during ``seconds``."""

    name: str
    api: str
    seconds: float
    error_rate: float = 0.0
    latency_ms: float = 0.0
    #: ``broker run`` processes on the queue (the verdict is known to one of them).
    replicas: int = 1


@dataclass
class PersistentReport:
    fault: Fault
    tasks: int
    faulty_calls: int
    runs: Counter[int]
    redeliveries: int
    wrong: list[str]
    open_tasks: int
    left_in_queue: int
    exit_codes: list[int | None]
    wall_s: float

    @property
    def max_runs(self) -> int:
        return max(self.runs.values(), default=0)

    @property
    def run_again(self) -> int:
        """Tasks whose handler ran more than once."""
        return sum(1 for count in self.runs.values() if count > 1)

    def table(self) -> str:
        rows = [
            ("fault", f"{self.fault.name} for {self.fault.seconds:.0f} s"),
            ("replicas", self.fault.replicas),
            ("tasks", self.tasks),
            (f"{self.fault.api} calls", self.faulty_calls),
            ("handler runs", sum(self.runs.values())),
            ("tasks run more than once / most runs of one", f"{self.run_again} / {self.max_runs}"),
            ("redeliveries (receives with count > 1)", self.redeliveries),
            ("wrong outcomes / open tasks", f"{len(self.wrong)} / {self.open_tasks}"),
            ("wall time", f"{self.wall_s:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _plan(tasks: int) -> tuple[list[dict[str, Any]], dict[str, tuple[str, Any]]]:
    """Echo (SendTaskSuccess) and reject (SendTaskFailure) tasks, 3 to 1."""
    messages, expected = [], {}
    for n in range(tasks):
        token = f"persist-{n:05d}-" + secrets.token_hex(24)
        kind = "reject" if n % 4 == 3 else "echo"
        body = orjson.dumps({"TaskToken": token, "input": {"n": n}}).decode()
        messages.append(
            {
                "body": body,
                "attributes": {"type": {"DataType": "String", "StringValue": kind}},
                "token": token,
            }
        )
        expected[token] = (
            ("failed", "Order.Rejected") if kind == "reject" else ("succeeded", {"n": n})
        )
    return messages, expected


def _closed(stats: dict[str, Any]) -> int:
    return int(stats["tasks"]["succeeded"]) + int(stats["tasks"]["failed"])


def run_persistent(
    fault: Fault, *, tasks: int, log_path: Path, timeout_s: float = 120.0
) -> PersistentReport:
    messages, expected = _plan(tasks)
    runs_path = log_path.with_suffix(".runs")
    runs_path.write_text("")
    began = time.monotonic()
    deadline = began + timeout_s
    with StubProcess() as stub:
        control = stub.control()
        control.create_queue(QUEUE, visibility_timeout_s=VISIBILITY_TIMEOUT_S)
        control.create_queue(DEAD_LETTERS)
        control.add_messages(QUEUE, messages)
        control.set_faults(
            error_rate=fault.error_rate, latency_ms=fault.latency_ms, apis=[fault.api]
        )
        env = broker_env(stub.endpoint_url) | {"FAULT_RUNS_FILE": str(runs_path)}
        brokers = [BrokerProcess(env, log_path) for _ in range(fault.replicas)]
        fault_ends = time.monotonic() + fault.seconds
        stats = _wait(control, brokers, fault_ends, lambda _: False)
        control.set_faults()
        stats = _wait(
            control,
            brokers,
            deadline,
            lambda s: _closed(s) >= tasks and _queue_depth(s) == 0,
        )
        time.sleep(0.5)  # the last deletes land
        codes = [broker.terminate(SHUTDOWN_GRACE_S + 10)[0] for broker in brokers]
        stats = control.stats()
        outcomes = control.tasks()
    wrong, open_tasks = [], 0
    for token, (status, value) in expected.items():
        seen = outcomes.get(token, {})
        if seen.get("status") in (None, "open"):
            open_tasks += 1
            continue
        got = orjson.loads(seen["output"]) if status == "succeeded" else seen.get("error")
        if (seen.get("status"), got) != (status, value):
            wrong.append(f"{token[:14]}…: expected {status} {value}, got {seen}")
    runs = Counter(int(line) for line in runs_path.read_text().split())
    return PersistentReport(
        fault=fault,
        tasks=tasks,
        faulty_calls=int(stats["calls"].get(fault.api, 0)),
        runs=runs,
        redeliveries=int(stats["queues"][QUEUE]["redelivered"]),
        wrong=wrong,
        open_tasks=open_tasks,
        left_in_queue=_queue_depth(stats),
        exit_codes=codes,
        wall_s=time.monotonic() - began,
    )


def _queue_depth(stats: dict[str, Any]) -> int:
    queue = stats["queues"].get(QUEUE, {})
    return sum(int(queue.get(key, 0)) for key in ("visible", "in_flight", "delayed"))


def _wait(
    control: StubControl, brokers: list[BrokerProcess], until: float, done: Any
) -> dict[str, Any]:
    while True:
        stats = control.stats()
        if done(stats) or time.monotonic() > until:
            return stats
        for broker in brokers:
            broker.ensure_alive()
        time.sleep(0.05)
