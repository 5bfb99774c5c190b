"""Side-by-side benchmark: the broker against the seeds' loop, a thread pool and
bbc/sqs-consumer, all completing the same tasks on the same stub, in one run.

    make bench            # quick: one calibration round + one measured round (minutes)
    make bench FULL=1     # three measured rounds, longer runs, the 100k growth point

    .venv/bin/python bench/run.py [--full] [--only NAME ...] [--latencies 0,20]

One stub process (awsstub/) with an injected latency per AWS call; each contender
runs as its own process.  A run: reset the stub, start the contender, wait until it
polls, add N tasks at once, wait until the stub has seen every token closed, then read
the contender's CPU (user+sys from /proc) and peak RSS (VmHWM) and stop it (SIGTERM).
Throughput is N over the time from the tasks' arrival to the last completion; CPU per
completion is the contender's CPU over that same window divided by N (start-up
excluded).  Contenders run alternately (the order rotates each round) so that the noise
of a shared 2-core machine hits all alike; figures are medians over rounds.

Also measured: the floor (CPU per bare SendTaskSuccess of each SDK on the same stub),
the latency at a fixed arrival rate (half the broker's capacity at 20 ms; one run per
contender each round, medians over rounds, with the machine's steal during each), and the
broker's growth curve (1k, 10k, and with --full 100k tasks).  Results: a table on
stdout, JSON and a PNG chart under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from awsstub import StubControl, StubProcess  # noqa: E402 - after the path fix

RESULTS = REPO / "bench" / "results"
PYTHON = str(REPO / ".venv" / "bin" / "python")
BROKER = str(REPO / ".venv" / "bin" / "broker")
NODE_DIR = REPO / "bench" / "node"
QUEUE = "bench"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The path of one completion at a fixed arrival rate: the receive that returns the
# message and the SendTaskSuccess call each carry the injected latency once.
CALLS_ON_LATENCY_PATH = 2

BROKER_TUNED = {
    "BROKER_CONCURRENCY": "256",
    "BROKER_COMPLETION_CONCURRENCY": "128",
    # One JSON log line per outcome is the default; at this rate it is CPU worth saving.
    "BROKER_LOG_LEVELS": json.dumps({"broker.outcome": "WARNING"}),
}


@dataclass(frozen=True)
class Contender:
    name: str
    settings: str  # stated in the table
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def contenders() -> list[Contender]:
    node = shutil.which("node") or "node"
    consumer = str(NODE_DIR / "consumer.mjs")
    broker_env = (
        ("BROKER_QUEUES", json.dumps([QUEUE])),
        ("BROKER_HANDLERS", json.dumps(["handlers.seeds:router"])),
        ("BROKER_ENTRY_POINTS", "false"),
        # /livez /readyz /metrics stay on (a default), on a free port: 8080 may be taken.
        ("BROKER_HTTP_PORT", "0"),
    )
    tuned = ", ".join(f"{k.removeprefix('BROKER_').lower()}={v}" for k, v in BROKER_TUNED.items())
    return [
        Contender(
            "broker default",
            "defaults (concurrency 128, completions 32)",
            (BROKER, "run"),
            broker_env,
        ),
        Contender("broker tuned", tuned, (BROKER, "run"), broker_env + tuple(BROKER_TUNED.items())),
        Contender(
            "broker botocore",
            "defaults but aws_client=botocore (the escape hatch: every call through aiobotocore)",
            (BROKER, "run"),
            (*broker_env, ("BROKER_AWS_CLIENT", "botocore")),
        ),
        Contender(
            "seed loop",
            "sync boto3: receive 10, per record SendTaskSuccess then DeleteMessage",
            (PYTHON, str(REPO / "bench" / "contenders" / "seed_loop.py")),
        ),
        Contender(
            "thread pool",
            "boto3, 4 pollers, 32 threads: SendTaskSuccess + DeleteMessage per message",
            (PYTHON, str(REPO / "bench" / "contenders" / "threadpool.py")),
            (("BENCH_THREADS", "32"), ("BENCH_POLLERS", "4")),
        ),
        Contender(
            "sqs-consumer default",
            "library defaults: handleMessage, batchSize 1, 1 consumer",
            (node, consumer, "--mode", "default"),
        ),
        Contender(
            "sqs-consumer batch 10",
            "handleMessage, batchSize 10, 1 consumer",
            (node, consumer, "--mode", "batch10"),
        ),
        Contender(
            "sqs-consumer tuned",
            "handleMessageBatch + Promise.all completions, batchSize 10, 10 consumers",
            (node, consumer, "--mode", "tuned", "--consumers", "10"),
        ),
    ]


@dataclass
class Run:
    contender: str
    latency_ms: float
    tasks: int
    completed: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stub_cpu_s: float
    duplicates: int
    unknown_tokens: int
    redelivered: int
    latency: dict[str, float]
    warmup: int = 0
    rate_per_s: float | None = None
    calls: dict[str, int] = field(default_factory=dict)
    #: Where the latency went (the stub's ``latency_parts_ms``: queue, consumer, call).
    latency_parts: dict[str, Any] = field(default_factory=dict)
    #: The machine's CPU time the hypervisor gave to other guests during the run (%).
    steal_pct: float = 0.0

    @property
    def per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_s / max(1, self.completed)

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "per_s": self.per_s, "cpu_ms_per_task": self.cpu_ms_per_task}


def describe_parts(parts: dict[str, Any]) -> str:
    """One line: the medians of the latency's parts, overall and over the slowest 1 %."""
    if not parts:
        return "not measured"

    def row(medians: dict[str, float]) -> str:
        return " + ".join(f"{name} {medians[name]:.1f}" for name in ("queue", "consumer", "call"))

    lag = parts["stub_sleep_lag"]
    return (
        f"median {row(parts['all'])} ms; slowest 1 % {row(parts['slowest_1pct'])} ms; "
        f"stub sleeps late p99 {lag['p99']:.1f} max {lag['max']:.1f} ms"
    )


def machine_cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine so far (``/proc/stat``)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return values[7], sum(values)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def base_env(endpoint: str, queue_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env.update(
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",  # noqa: S106 - a dummy: the stub accepts any signature
        AWS_REGION="us-east-1",
        BROKER_AWS_ENDPOINT_URL=endpoint,
        BENCH_ENDPOINT=endpoint,
        BENCH_QUEUE_URL=queue_url,
        PYTHONPATH=str(REPO),
        # The SDK's "node 20 is ageing" notice, once per process, is noise here.
        NODE_NO_WARNINGS="1",
    )
    return env


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def run_one(
    stub: StubProcess,
    contender: Contender,
    latency_ms: float,
    tasks: int,
    *,
    rate_per_s: float | None = None,
    min_rate_per_s: float = 5.0,
    warmup: int = 0,
) -> Run:
    control = StubControl(stub.endpoint_url)
    control.reset()
    queue_url = control.create_queue(QUEUE, visibility_timeout_s=120)
    control.set_faults(latency_ms=latency_ms)
    env = base_env(stub.endpoint_url, queue_url)
    env.update(contender.env)
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"{contender.name.replace(' ', '-').replace(',', '')}.log").open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own contenders
        contender.argv, env=env, cwd=REPO, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while control.stats()["calls"].get("ReceiveMessage", 0) < 1:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{contender.name} did not start polling (see {log.name})")
            time.sleep(0.05)
        time.sleep(0.3)  # let every poller of the contender start its long poll
        warmup_duplicates = 0
        if warmup:
            # Warm up first (imports, connection pools, node's JIT), then count afresh.
            control.add_tasks(QUEUE, count=warmup, type="callback")
            control.wait_closed(timeout_s=warmup / min_rate_per_s + 60)
            warmup_duplicates = control.stats()["tasks"]["duplicates"]
            time.sleep(0.2)  # the last deletes of the warm-up
            control.reset_stats()
        control.add_tasks(QUEUE, count=tasks, type="callback", rate_per_s=rate_per_s)
        cpu0, stub0, wall0 = proc_cpu_s(process.pid), proc_cpu_s(stub.pid), time.perf_counter()
        steal0, ticks0 = machine_cpu_ticks()
        expected_s = tasks / (rate_per_s or min_rate_per_s)
        closed = control.wait_closed(timeout_s=expected_s + 60)
        wall = time.perf_counter() - wall0
        steal1, ticks1 = machine_cpu_ticks()
        cpu, stub_cpu = proc_cpu_s(process.pid) - cpu0, proc_cpu_s(stub.pid) - stub0
        rss = proc_peak_rss_mb(process.pid)
        stats = control.stats()
    finally:
        stop(process)
        log.close()
    return Run(
        contender=contender.name,
        latency_ms=latency_ms,
        tasks=tasks,
        completed=closed["succeeded"] + closed["failed"],
        wall_s=wall,
        cpu_s=cpu,
        peak_rss_mb=rss,
        stub_cpu_s=stub_cpu,
        duplicates=stats["tasks"]["duplicates"] + warmup_duplicates,
        unknown_tokens=stats["tasks"]["unknown_tokens"],
        redelivered=stats["queues"][QUEUE]["redelivered"],
        latency=stats["latency_ms"],
        warmup=warmup,
        rate_per_s=rate_per_s,
        calls=stats["calls"],
        latency_parts=stats.get("latency_parts_ms") or {},
        steal_pct=100 * (steal1 - steal0) / max(1, ticks1 - ticks0),
    )


def floors(stub: StubProcess, calls: int) -> dict[str, dict[str, Any]]:
    """CPU per bare SendTaskSuccess of each SDK, one call at a time, on the same stub."""
    control = StubControl(stub.endpoint_url)
    commands = {
        "aiobotocore (broker)": [PYTHON, "bench/floor.py", "--sdk", "aiobotocore"],
        "boto3 (seed loop, thread pool)": [PYTHON, "bench/floor.py", "--sdk", "boto3"],
        "AWS SDK JS v3 (sqs-consumer)": ["node", str(NODE_DIR / "consumer.mjs"), "--floor"],
        "aiobotocore, profiled": [PYTHON, "bench/floor.py", "--sdk", "aiobotocore", "--profile"],
    }
    results = {}
    for name, command in commands.items():
        control.reset()
        control.create_queue(QUEUE)
        control.add_tasks(QUEUE, count=calls + 100)
        argv = [*command, str(calls)] if command[0] == "node" else [*command, "--calls", str(calls)]
        out = subprocess.run(  # noqa: S603 - our own scripts
            argv,
            env=base_env(stub.endpoint_url, ""),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def median_runs(runs: Sequence[Run]) -> dict[str, Any]:
    """One row: the median of each figure over the rounds (worst case for duplicates)."""
    pick = statistics.median
    return {
        "contender": runs[0].contender,
        "latency_ms": runs[0].latency_ms,
        "rounds": len(runs),
        "tasks": runs[0].tasks,
        "per_s": pick(r.per_s for r in runs),
        "cpu_ms_per_task": pick(r.cpu_ms_per_task for r in runs),
        "p50_ms": pick(r.latency["p50"] for r in runs),
        "p99_ms": pick(r.latency["p99"] for r in runs),
        "peak_rss_mb": max(r.peak_rss_mb for r in runs),
        "stub_busy": pick(r.stub_cpu_s / r.wall_s for r in runs),
        "duplicates": sum(r.duplicates for r in runs),
        "unknown_tokens": sum(r.unknown_tokens for r in runs),
        "incomplete": sum(r.tasks - r.completed for r in runs),
    }


def arrival_rows(runs: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per contender, the median over rounds of each latency figure, and every run's p99."""
    rows = []
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        if not mine:
            continue
        rows.append(
            {
                "contender": name,
                "rounds": len(mine),
                "rate_per_s": mine[0]["rate_per_s"],
                **{
                    f"{q}_ms": statistics.median(r["latency"][q] for r in mine)
                    for q in ("p50", "p90", "p99", "max")
                },
                "p99_runs_ms": [r["latency"]["p99"] for r in mine],
                "steal_pct_runs": [round(r["steal_pct"], 1) for r in mine],
            }
        )
    return rows


def table(rows: list[dict[str, Any]], floor_ms: dict[str, float], settings: dict[str, str]) -> str:
    sdk_of = {"broker": "aiobotocore", "seed": "boto3", "thread": "boto3", "sqs-": "AWS SDK JS"}
    # The floor is a bare aiobotocore call; the broker's default path is not on it.
    lines = [
        "| contender | latency/call | tasks/s | CPU ms/task | x floor | p50 ms | p99 ms "
        "| peak RSS MB | dup/unknown | stub busy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        sdk = next(v for k, v in sdk_of.items() if row["contender"].startswith(k))
        floor = next((ms for name, ms in floor_ms.items() if name.startswith(sdk)), None)
        times = f"{row['cpu_ms_per_task'] / floor:.1f}" if floor else "-"
        flag = " (incomplete)" if row["incomplete"] else ""
        lines.append(
            f"| {row['contender']}{flag} | {row['latency_ms']:g} ms | {row['per_s']:,.0f} "
            f"| {row['cpu_ms_per_task']:.2f} | {times} | {row['p50_ms']:,.0f} "
            f"| {row['p99_ms']:,.0f} | {row['peak_rss_mb']:.0f} "
            f"| {row['duplicates']}/{row['unknown_tokens']} | {100 * row['stub_busy']:.0f}% |"
        )
    lines.append("")
    lines.append("Settings: " + "; ".join(f"**{k}**: {v}" for k, v in settings.items()))
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = list(dict.fromkeys(r["contender"] for r in rows))
    latencies = sorted({r["latency_ms"] for r in rows})
    figure, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    width = 0.8 / len(latencies)
    for i, latency in enumerate(latencies):
        by_name = {r["contender"]: r for r in rows if r["latency_ms"] == latency}
        xs = [n + i * width for n in range(len(names))]
        label = f"{latency:g} ms per AWS call"
        axes[0].bar(
            xs, [by_name[n]["per_s"] if n in by_name else 0 for n in names], width, label=label
        )
        axes[1].bar(
            xs,
            [by_name[n]["cpu_ms_per_task"] if n in by_name else 0 for n in names],
            width,
            label=label,
        )
    for axis, title in zip(
        axes[:2], ("Completions per second (log)", "Client CPU ms per completion"), strict=True
    ):
        axis.set_xticks([n + width * (len(latencies) - 1) / 2 for n in range(len(names))])
        axis.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        axis.set_title(title)
        axis.legend(fontsize=8)
    axes[0].set_yscale("log")
    styles = iter(("dotted", "dashed", "dashdot"))
    for name, floor in result["floors"].items():
        if "profiled" not in name:
            axes[1].axhline(
                floor["cpu_ms_per_call"],
                color="grey",
                linestyle=next(styles, "dotted"),
                linewidth=1,
                label=f"floor: bare call, {name} {floor['cpu_ms_per_call']:.2f}",
            )
    axes[1].legend(fontsize=7)
    growth = result.get("growth", [])
    if growth:
        tasks = [g["tasks"] for g in growth]
        axes[2].plot(tasks, [g["per_s"] for g in growth], "o-", label="tasks/s")
        axes[2].set_xscale("log")
        axes[2].set_xlabel("tasks in the run (broker default, 0 ms)")
        axes[2].set_ylabel("tasks/s")
        rss = axes[2].twinx()
        rss.plot(
            tasks, [g["peak_rss_mb"] for g in growth], "s--", color="tab:red", label="peak RSS MB"
        )
        rss.set_ylabel("peak RSS MB")
        rss.set_ylim(bottom=0)
        axes[2].set_ylim(bottom=0)
        axes[2].set_title("Growth: throughput and memory")
        lines = axes[2].get_lines() + rss.get_lines()
        axes[2].legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    figure.suptitle(
        f"{result['machine']['summary']} · {result['date']} · "
        f"python bench/run.py{' --full' if result['full'] else ''}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def machine() -> dict[str, str]:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    node = subprocess.run(  # noqa: S603 - node from PATH, as the contenders use it
        [shutil.which("node") or "node", "--version"], capture_output=True, text=True, check=False
    )
    info = {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "node": node.stdout.strip(),
        "kernel": platform.release(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "broker_dirty": str(bool(git("status", "--porcelain", "--", "broker", "handlers"))),
    }
    info["summary"] = f"{info['cores']} cores {model}, Python {info['python']}, node {info['node']}"
    return info


def git(*args: str) -> str:
    git_bin = shutil.which("git") or "git"
    out = subprocess.run(  # noqa: S603 - fixed git queries
        [git_bin, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="3 rounds, longer runs, 100k growth")
    parser.add_argument("--only", nargs="*", help="contender names (substring match)")
    parser.add_argument("--latencies", default="0,20", help="ms per AWS call, comma-separated")
    parser.add_argument("--target-s", type=float, help="length of one measured run")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 1, --full 3)")
    parser.add_argument("--no-growth", action="store_true")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--no-arrival", action="store_true")
    parser.add_argument("--replot", type=Path, help="redraw table and chart from a JSON result")
    args = parser.parse_args(argv)
    if args.replot:
        return publish(json.loads(args.replot.read_text()), None)
    rounds = args.rounds or (3 if args.full else 1)
    target_s = args.target_s or (12.0 if args.full else 4.0)
    latencies = [float(x) for x in args.latencies.split(",")]
    chosen = [c for c in contenders() if not args.only or any(o in c.name for o in args.only)]
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "full": args.full,
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {c.name: c.settings for c in chosen},
    }
    runs: list[Run] = []
    with StubProcess() as stub:
        # Calibration: a short run each, to size the measured runs to ~target_s.
        sizes: dict[tuple[str, float], int] = {}
        warmups: dict[tuple[str, float], int] = {}  # about one second of work
        print(f"calibrating {len(chosen)} contenders x {len(latencies)} latencies", flush=True)
        for latency in latencies:
            for c in chosen:
                probe = 300 if latency == 0 else 150
                run = run_one(stub, c, latency, probe)
                sizes[c.name, latency] = max(200, min(100_000, int(run.per_s * target_s)))
                warmups[c.name, latency] = max(20, min(2_000, int(run.per_s)))
                print(f"  {c.name:<24} {latency:>4g} ms  ~{run.per_s:,.0f}/s", flush=True)
        for round_no in range(rounds):
            order = chosen[round_no % len(chosen) :] + chosen[: round_no % len(chosen)]
            for latency in latencies:
                for c in order:
                    key = c.name, latency
                    run = run_one(stub, c, latency, sizes[key], warmup=warmups[key])
                    runs.append(run)
                    print(
                        f"round {round_no + 1} {c.name:<24} {latency:>4g} ms {run.tasks:>7} tasks "
                        f"{run.per_s:>8,.0f}/s {run.cpu_ms_per_task:6.2f} CPU ms/task "
                        f"p99 {run.latency['p99']:,.0f} ms dup {run.duplicates} "
                        f"steal {run.steal_pct:.1f} %",
                        flush=True,
                    )
        rows = [
            median_runs([r for r in runs if r.contender == c.name and r.latency_ms == lat])
            for lat in latencies
            for c in chosen
        ]
        result["rows"] = rows
        result["runs"] = [r.summary() for r in runs]

        result["floors"] = {} if args.no_floor else floors(stub, 3000 if args.full else 1500)
        for name, floor in result["floors"].items():
            print(f"floor {name:<32} {floor['cpu_ms_per_call']:.3f} CPU ms per call", flush=True)

        by_name = {c.name: c for c in contenders()}
        arrival = []
        base = next(
            (r for r in rows if r["contender"] == "broker default" and r["latency_ms"] == 20), None
        )
        if base and not args.no_arrival:
            rate = round(base["per_s"] / 2)
            names = ["broker default", "broker tuned", "sqs-consumer tuned"]
            # Rounds as for throughput: one run's p99 is a handful of stalls, and a
            # stall is as often the machine (its hypervisor's steal) as the contender.
            for round_no in range(rounds):
                for name in names[round_no % 3 :] + names[: round_no % 3]:
                    run = run_one(
                        stub,
                        by_name[name],
                        20,
                        int(rate * target_s),
                        rate_per_s=rate,
                        warmup=warmups.get((name, 20.0), 200),
                    )
                    arrival.append(run.summary())
                    print(
                        f"arrival {rate}/s round {round_no + 1} {name:<22} "
                        f"p50 {run.latency['p50']:.1f} ms p90 {run.latency['p90']:.1f} ms "
                        f"p99 {run.latency['p99']:.1f} ms (latency on the path "
                        f"{CALLS_ON_LATENCY_PATH * 20} ms; steal {run.steal_pct:.1f} %)",
                        flush=True,
                    )
                    print(f"  where it went: {describe_parts(run.latency_parts)}", flush=True)
            result["arrival_rows"] = arrival_rows(arrival, names)
            for row in result["arrival_rows"]:
                print(
                    f"arrival median of {row['rounds']} {row['contender']:<22} "
                    f"p50 {row['p50_ms']:.1f} p90 {row['p90_ms']:.1f} p99 {row['p99_ms']:.1f} ms "
                    f"(p99 of each run: {', '.join(f'{v:.1f}' for v in row['p99_runs_ms'])})",
                    flush=True,
                )
        result["arrival"] = arrival

        growth = []
        if not args.no_growth:
            sizes_growth = (1_000, 10_000, 100_000) if args.full else (1_000, 10_000)
            for n in sizes_growth:
                run = run_one(stub, by_name["broker default"], 0, n, warmup=200)
                growth.append(run.summary())
                print(
                    f"growth {n:>7} tasks {run.per_s:>8,.0f}/s "
                    f"{run.cpu_ms_per_task:.3f} CPU ms/task peak RSS {run.peak_rss_mb:.1f} MB",
                    flush=True,
                )
        result["growth"] = growth

    return publish(result, started)


def publish(result: dict[str, Any], started: dt.datetime | None) -> int:
    """Print the table; write JSON (for a new run), the markdown table and the chart."""
    floor_ms = {k: v["cpu_ms_per_call"] for k, v in result["floors"].items() if "profiled" not in k}
    text = table(result["rows"], floor_ms, result["settings"])
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if started is not None:
        stamp = started.strftime("%Y%m%dT%H%M%S")
        (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2))
        (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "table.md").write_text(text + "\n")
    chart(result, RESULTS / "bench.png")
    print(f"\nwrote {RESULTS / 'latest.json'}, {RESULTS / 'table.md'}, {RESULTS / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
