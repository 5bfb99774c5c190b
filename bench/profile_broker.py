"""Where the broker's CPU per task goes: the broker under cProfile, on the stub.

    .venv/bin/python bench/profile_broker.py [--tasks 5000] [--latency-ms 0] [--tuned]

Runs ``broker run`` (default settings, or the benchmark's tuned ones) under cProfile as
one benchmark run, then prints the own-time CPU ms per task by component (the broker's
code, botocore by part, aiohttp, logging, the event loop...) and the top functions.
The profiler (on a CPU clock) slows the run down several times: read the shares.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awsstub import StubProcess
from bench.floor import COMPONENTS, component_of, own_time_by_component
from bench.run import PYTHON, RESULTS, contenders, run_one

BROKER_COMPONENTS = (
    ("/broker/", "broker (this project)"),
    ("/handlers/", "broker (this project)"),
    ("logging/", "logging (stdlib)"),
    ("/email/", "botocore: headers (stdlib email)"),
    ("/anyio/", "anyio"),
    ("/pydantic", "pydantic"),
    ("/orjson", "orjson"),
    *COMPONENTS,
)


def broker_component(filename: str) -> str:
    return component_of(filename, BROKER_COMPONENTS)


def report(path: Path, tasks: int, top: int = 25) -> dict[str, float]:
    stats = pstats.Stats(str(path))
    by_component = own_time_by_component(stats, broker_component)
    total = sum(by_component.values())
    print(f"\nown CPU ms per task by component (profiled total {1000 * total / tasks:.2f})")
    shares = {}
    for component, own_s in sorted(by_component.items(), key=lambda kv: -kv[1]):
        shares[component] = 1000 * own_s / tasks
        print(f"  {component:<36} {shares[component]:7.3f}  {100 * own_s / total:5.1f}%")
    rows = [
        (
            row[2],
            "C (charged to callers above)" if filename == "~" else broker_component(filename),
            f"{Path(filename).name}:{line}({function})",
        )
        for (filename, line, function), row in stats.stats.items()  # type: ignore[attr-defined]
    ]
    print(f"\ntop {top} functions by own time")
    for own_s, component, where in sorted(rows, reverse=True)[:top]:
        print(f"  {1000 * own_s / tasks:7.3f} ms/task  {component:<30} {where}")
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--tuned", action="store_true")
    args = parser.parse_args()
    RESULTS.joinpath("logs").mkdir(parents=True, exist_ok=True)
    out = RESULTS / "broker.prof"
    name = "broker tuned" if args.tuned else "broker default"
    broker = next(c for c in contenders() if c.name == name)
    wrapper = str(Path(__file__).with_name("cpu_profile.py"))
    profiled = replace(broker, argv=(PYTHON, wrapper, str(out), *broker.argv))
    with StubProcess() as stub:
        run = run_one(stub, profiled, args.latency_ms, args.tasks)
    print(
        f"{name} under cProfile: {run.per_s:,.0f} tasks/s, {run.cpu_ms_per_task:.2f} CPU ms/task, "
        f"calls {run.calls}"
    )
    report(out, run.completed)


if __name__ == "__main__":
    main()
