"""Task latency under sporadic throttling: ``broker run`` at a steady arrival rate, with a
random share of its SendTaskSuccess calls answered ``ThrottlingException``.

    .venv/bin/python -m bench.sporadic_throttle [--rate 60] [--seconds 40] [--throttle 0.01]

Starts the loopback stub (``awsstub``) in its own process and one ``broker run`` (the
fault suite's settings and handlers), warms it up with 20 tasks, then throttles
``--throttle`` of the SendTaskSuccess calls at random, lets tasks arrive at ``--rate``
per second for ``--seconds`` until every token is closed, and prints one JSON line: the
stub's latency figures (from a message becoming visible to its completion) and their
parts, and the throttles injected.  Run it with ``--throttle 0`` for the fault-free
figure of the same machine and moment (the machine's load moves both).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from awsstub import StubProcess
from tests.faults.harness import DEAD_LETTERS, QUEUE, BrokerProcess, broker_env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=60.0, help="tasks per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long tasks arrive")
    parser.add_argument("--throttle", type=float, default=0.01, help="share throttled")
    parser.add_argument("--log", type=Path, default=Path("sporadic_throttle.log"))
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    with StubProcess() as stub:
        control = stub.control()
        control.create_queue(QUEUE, visibility_timeout_s=30)
        control.create_queue(DEAD_LETTERS)
        env = broker_env(stub.endpoint_url)
        env["BROKER_LOG_LEVEL"] = "WARNING"
        args.log.unlink(missing_ok=True)
        broker = BrokerProcess(env, args.log)
        try:
            # Warm-up: its start-up is not the tasks' latency.
            control.add_tasks(QUEUE, count=20, type="echo", input={"n": 1})
            control.wait_closed(timeout_s=60)
            broker.ensure_alive()
            control.reset_stats()
            control.set_faults(throttle_rate=args.throttle, apis=["SendTaskSuccess"], seed=7)
            control.add_tasks(QUEUE, count=count, type="echo", input={"n": 1}, rate_per_s=args.rate)
            began = time.monotonic()
            closed = control.wait_closed(timeout_s=args.seconds * 4 + 30)
            wall_s = time.monotonic() - began
            stats = control.stats()
        finally:
            broker.terminate(10.0)
    print(
        json.dumps(
            {
                "rate": args.rate,
                "tasks": count,
                "throttle": args.throttle,
                "open_at_end": closed.get("open"),
                "wall_s": round(wall_s, 1),
                "latency_ms": stats["latency_ms"],
                "latency_parts_ms": stats.get("latency_parts_ms"),
                "throttled": stats["faults"].get("throttle", {}),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
