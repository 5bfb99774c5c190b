"""A smoke run of the benchmark harness: one contender, a few tasks, figures sane."""

from __future__ import annotations

from awsstub import StubProcess
from bench.run import contenders, median_runs, run_one, table


def test_one_contender_completes_every_task_and_is_measured() -> None:
    seed_loop = next(c for c in contenders() if c.name == "seed loop")
    with StubProcess() as stub:
        run = run_one(stub, seed_loop, 0, 50, warmup=10)
    assert (run.tasks, run.completed) == (50, 50)
    assert (run.duplicates, run.unknown_tokens) == (0, 0)
    assert run.calls["SendTaskSuccess"] == 50, "warm-up calls are not counted"
    assert run.cpu_s > 0
    assert run.peak_rss_mb > 10
    assert run.latency["count"] == 50

    rendered = table([median_runs([run])], {"boto3": 1.0}, {"seed loop": seed_loop.settings})
    row = next(line for line in rendered.splitlines() if line.startswith("| seed loop"))
    assert f"| {run.per_s:,.0f} |" in row
