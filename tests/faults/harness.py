"""The fault-injection run: the broker, killed and restarted, against a faulty AWS stub.

    .venv/bin/python -m tests.faults.harness [--tasks 1000] [--kills 3] [--seed N]

What it does, in one process tree on loopback:

1. starts the fast AWS stub (``awsstub``, the top-level dev package) in its own process;
2. fills a queue with tasks whose outcome is decided by their payload alone
   (``tests/faults/handlers.py``): successes, failures, retries, slow handlers,
   heartbeats, exhausted attempts, invalid input, unknown types and poison bodies;
3. switches faults on for every AWS call: throttling, 500s, dropped connections (half
   of them after the call took effect) and latency;
4. runs ``broker run`` and SIGKILLs it at random moments, restarting it each time;
5. when every task is closed and the queue is empty, stops the last broker with SIGTERM
   and checks everything against the plan.

``run()`` returns a ``Report``; the test asserts on it, the command prints it.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from awsstub import StubControl, StubProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
QUEUE = "faults"
DEAD_LETTERS = "faults-dlq"
VISIBILITY_TIMEOUT_S = 4
SHUTDOWN_GRACE_S = 5.0

#: Share of each kind of task in the plan (poison has no token).
MIX: dict[str, float] = {
    "echo": 0.55,
    "reject": 0.10,
    "flaky": 0.10,
    "slow": 0.04,
    "heartbeat": 0.04,
    "exhaust": 0.05,
    "typed": 0.04,
    "unknown": 0.04,
    "poison": 0.04,
}


#: Kinds whose handler runs once for a task when nothing fails.
_RUN_ONCE = frozenset({"echo", "reject", "slow", "heartbeat"})


@dataclass(frozen=True, slots=True)
class Expected:
    """What the handler decides for one task, known before the run."""

    status: str  # "succeeded" or "failed"
    output: Any = None
    error: str | None = None
    dead_letter_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Faults:
    throttle_rate: float = 0.10
    error_rate: float = 0.05
    drop_rate: float = 0.01
    latency_ms: float = 2.0
    jitter_ms: float = 3.0


@dataclass
class Plan:
    messages: list[dict[str, Any]] = field(default_factory=list)
    expected: dict[str, Expected] = field(default_factory=dict)
    #: Poison bodies (no token) and the reason their dead-letter copy must carry.
    poison: dict[str, str] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    tasks: int
    poison: int
    kinds: dict[str, int]
    faults: dict[str, int]
    kills: int
    broker_starts: int
    redeliveries: int
    duplicates: int
    unknown_tokens: int
    lost: int
    stuck: int
    wrong: list[str]
    left_in_queue: int
    dead_letters: dict[str, int]
    dead_letter_problems: list[str]
    #: Distinct messages with a copy (a copy made just before a kill is made again).
    dead_lettered_messages: int
    drop_after_completions: int
    final_exit_code: int | None
    stop_s: float
    wall_s: float
    leaked_tokens: int
    seed: int
    #: Handler runs, and the most runs of one task that runs once when nothing fails
    #: (echo, reject, slow, heartbeat).  A kill makes a broker forget a verdict, so it
    #: is not asserted here: tests/faults/test_persistent_faults.py does.
    handler_runs: int = 0
    max_runs: int = 0

    def table(self) -> str:
        rows = [
            ("tasks (with a token)", self.tasks),
            ("poison messages (no token)", self.poison),
            ("faults injected: throttling", self.faults.get("throttle", 0)),
            ("faults injected: 500", self.faults.get("error", 0)),
            ("faults injected: dropped before the call", self.faults.get("drop_before", 0)),
            ("faults injected: dropped after the call", self.faults.get("drop_after", 0)),
            ("broker SIGKILLs / starts", f"{self.kills} / {self.broker_starts}"),
            ("redeliveries (receives with count > 1)", self.redeliveries),
            ("duplicate completions (answered task closed)", self.duplicates),
            (
                "dead-letter copies / messages dead-lettered",
                f"{sum(self.dead_letters.values())} / {self.dead_lettered_messages}",
            ),
            ("wrong outcomes", len(self.wrong)),
            ("lost (message gone, task open)", self.lost),
            ("stuck (task open at the end)", self.stuck),
            ("messages left in the source queue", self.left_in_queue),
            ("tokens found in the broker's logs", self.leaked_tokens),
            ("handler runs / most runs of one task", f"{self.handler_runs} / {self.max_runs}"),
            ("last broker: SIGTERM to exit", f"{self.stop_s:.1f} s, exit {self.final_exit_code}"),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("seed (--seed to replay the plan and faults)", self.seed),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def make_plan(tasks: int, rng: random.Random) -> Plan:
    plan = Plan()
    kinds = list(MIX)
    weights = [MIX[kind] for kind in kinds]
    for n in range(tasks):
        kind = rng.choices(kinds, weights)[0]
        plan.kinds[kind] += 1
        if kind == "poison":
            body = f"not json #{n} " + "{"
            plan.messages.append({"body": body, "attributes": {}, "token": None})
            plan.poison[body] = "InvalidJson"
            continue
        token = f"fault-{n:05d}-" + secrets.token_hex(24)
        payload: dict[str, Any] = {"n": n}
        message_type = kind
        if kind == "echo":
            expected = Expected("succeeded", output={"n": n})
        elif kind == "reject":
            expected = Expected("failed", error="Order.Rejected")
        elif kind == "flaky":
            expected = Expected("succeeded", output={"n": n, "recovered": True})
        elif kind == "slow":
            payload["sleep_s"] = round(rng.uniform(2.5, 3.5), 2)
            expected = Expected("succeeded", output={"n": n, "slow": True})
        elif kind == "heartbeat":
            expected = Expected("succeeded", output={"n": n, "heartbeats": True})
        elif kind == "exhaust":
            expected = Expected(
                "failed", error="RuntimeError", dead_letter_reason="AttemptsExhausted"
            )
        elif kind == "typed":
            payload = {"n": "not a number"}
            expected = Expected("failed", error="Broker.InvalidInput")
        else:  # unknown
            message_type = "nobody-handles-this"
            expected = Expected(
                "failed", error="Broker.UnknownMessageType", dead_letter_reason="UnknownMessageType"
            )
        body = orjson.dumps({"TaskToken": token, "input": payload}).decode()
        plan.messages.append(
            {
                "body": body,
                "attributes": {"type": {"DataType": "String", "StringValue": message_type}},
                "token": token,
            }
        )
        plan.expected[token] = expected
    return plan


def broker_env(endpoint_url: str, *, aws_client: str = "lean") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "AWS_ACCESS_KEY_ID": "faults",
            "AWS_SECRET_ACCESS_KEY": "faults",
            "AWS_REGION": "us-east-1",
            "BROKER_AWS_ENDPOINT_URL": endpoint_url,
            "BROKER_ENTRY_POINTS": "false",
            "BROKER_HANDLERS": '["tests.faults.handlers:router"]',
            "BROKER_QUEUES": orjson.dumps(
                [
                    {
                        "name": QUEUE,
                        "dead_letter_queue": DEAD_LETTERS,
                        "wait_time_s": 1,
                        "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
                    }
                ]
            ).decode(),
            "BROKER_RETRY_BASE_DELAY_S": "1",
            "BROKER_RETRY_MAX_DELAY_S": "2",
            "BROKER_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
            "BROKER_LOG_LEVEL": "INFO",
            "BROKER_HTTP_PORT": "0",
            "BROKER_AWS_CLIENT": aws_client,
        }
    )
    return env


class BrokerProcess:
    """One ``broker run``, its output appended to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def terminate(self, timeout_s: float) -> tuple[int | None, float]:
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            code = None
        self._log.close()
        return code, time.monotonic() - began

    def ensure_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the broker exited by itself with {self.process.returncode}")


def _closed(stats: dict[str, Any]) -> int:
    tasks = stats["tasks"]
    return int(tasks["succeeded"]) + int(tasks["failed"])


def _queue_depth(stats: dict[str, Any], name: str) -> int:
    queue = stats["queues"].get(name, {})
    return (
        int(queue.get("visible", 0)) + int(queue.get("in_flight", 0)) + int(queue.get("delayed", 0))
    )


def _wait_until(
    control: StubControl, broker: BrokerProcess, done: Any, deadline: float
) -> dict[str, Any]:
    while True:
        stats = control.stats()
        if done(stats) or time.monotonic() > deadline:
            return stats
        broker.ensure_alive()
        time.sleep(0.05)


def run(
    *,
    tasks: int = 1000,
    kills: int = 3,
    seed: int | None = None,
    faults: Faults | None = None,
    log_path: Path,
    timeout_s: float = 240.0,
    aws_client: str = "lean",
) -> Report:
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    faults = faults or Faults()
    plan = make_plan(tasks, rng)
    token_count = len(plan.expected)
    began = time.monotonic()
    deadline = began + timeout_s
    with StubProcess() as stub:
        control = stub.control()
        control.create_queue(QUEUE, visibility_timeout_s=VISIBILITY_TIMEOUT_S)
        control.create_queue(DEAD_LETTERS)
        for start in range(0, len(plan.messages), 500):
            control.add_messages(QUEUE, plan.messages[start : start + 500])
        control.set_faults(
            throttle_rate=faults.throttle_rate,
            error_rate=faults.error_rate,
            drop_rate=faults.drop_rate,
            latency_ms=faults.latency_ms,
            jitter_ms=faults.jitter_ms,
            seed=seed,
        )
        runs_path = log_path.with_suffix(".runs")
        runs_path.write_text("")
        env = broker_env(stub.endpoint_url, aws_client=aws_client)
        env["FAULT_RUNS_FILE"] = str(runs_path)
        # Kill while work is in flight: when a random share of the tasks is closed.
        thresholds = sorted(rng.uniform(0.1, 0.8) for _ in range(kills))
        broker = BrokerProcess(env, log_path)
        starts = 1
        for threshold in thresholds:
            _wait_until(
                control, broker, lambda s, t=threshold: _closed(s) >= t * token_count, deadline
            )
            time.sleep(rng.uniform(0, 0.2))
            broker.kill()
            broker = BrokerProcess(env, log_path)
            starts += 1

        def finished(stats: dict[str, Any]) -> bool:
            return _closed(stats) >= token_count and _queue_depth(stats, QUEUE) == 0

        _wait_until(control, broker, finished, deadline)
        # Let the last dead-letter copies and deletes land, then stop it as ECS would.
        time.sleep(0.5)
        control.set_faults()
        code, stop_s = broker.terminate(SHUTDOWN_GRACE_S + 10)
        stats = control.stats()
        outcomes = control.tasks()
        dead_letters = control.queue_messages(DEAD_LETTERS)
        remaining = control.queue_messages(QUEUE)
    wall_s = time.monotonic() - began

    still_queued = {
        m["token"]
        for m in plan.messages
        if m["token"] and any(m["body"] == r["body"] for r in remaining)
    }
    wrong: list[str] = []
    stuck = lost = 0
    for token, expected in plan.expected.items():
        seen = outcomes.get(token, {})
        status = seen.get("status")
        if status in (None, "open"):
            # Waiting with its message still queued is stuck; with the message gone, lost.
            if token in still_queued:
                stuck += 1
            else:
                lost += 1
            continue
        got = (
            status,
            orjson.loads(seen["output"]) if seen.get("output") else None,
            seen.get("error"),
        )
        if got != (expected.status, expected.output, expected.error):
            wrong.append(f"{token[:12]}…: expected {expected}, got {got}")

    dead_letter_problems: list[str] = []
    reasons: Counter[str] = Counter()
    copies: Counter[str] = Counter()
    for copy in dead_letters:
        attributes = copy.get("attributes") or {}
        reason = attributes.get("broker.reason", {}).get("StringValue")
        reasons[str(reason)] += 1
        copies[copy["body"]] += 1
    wanted = {
        m["body"]: plan.poison.get(m["body"]) or plan.expected[m["token"]].dead_letter_reason
        for m in plan.messages
        if m["token"] is None or plan.expected[m["token"]].dead_letter_reason
    }
    for body, reason in wanted.items():
        if not copies[body]:
            dead_letter_problems.append(f"no dead-letter copy with reason {reason}")
    for copy in dead_letters:
        body = copy["body"]
        reason = (copy.get("attributes") or {}).get("broker.reason", {}).get("StringValue")
        if body not in wanted:
            dead_letter_problems.append(f"unexpected dead-letter copy ({reason})")
        elif reason != wanted[body]:
            dead_letter_problems.append(f"copy with reason {reason}, expected {wanted[body]}")

    runs = Counter(runs_path.read_text().split())
    log_text = log_path.read_text(errors="replace")
    leaked = sum(1 for token in plan.expected if token in log_text)
    fault_totals = {kind: sum(ops.values()) for kind, ops in stats["faults"].items()}
    drop_after_completions = sum(
        n
        for op, n in stats["faults"].get("drop_after", {}).items()
        if op in ("SendTaskSuccess", "SendTaskFailure")
    )
    return Report(
        tasks=token_count,
        poison=len(plan.poison),
        kinds=dict(plan.kinds),
        faults=fault_totals,
        kills=kills,
        broker_starts=starts,
        redeliveries=int(stats["queues"][QUEUE]["redelivered"]),
        duplicates=int(stats["tasks"]["duplicates"]),
        unknown_tokens=int(stats["tasks"]["unknown_tokens"]),
        lost=lost,
        stuck=stuck,
        wrong=wrong,
        left_in_queue=_queue_depth(stats, QUEUE),
        dead_letters=dict(reasons),
        dead_letter_problems=dead_letter_problems,
        dead_lettered_messages=len(copies),
        drop_after_completions=drop_after_completions,
        final_exit_code=code,
        stop_s=stop_s,
        wall_s=wall_s,
        leaked_tokens=leaked,
        seed=seed,
        handler_runs=sum(runs.values()),
        max_runs=max(
            (
                count
                for n, count in runs.items()
                if plan.messages[int(n)]["attributes"].get("type", {}).get("StringValue")
                in _RUN_ONCE
            ),
            default=0,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--log", type=Path, default=Path("bench/results/faults-broker.log"))
    parser.add_argument(
        "--aws-client",
        choices=("lean", "botocore"),
        default="lean",
        help="BROKER_AWS_CLIENT (default lean)",
    )
    args = parser.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_bytes(b"")
    report = run(
        tasks=args.tasks,
        kills=args.kills,
        seed=args.seed,
        log_path=args.log,
        aws_client=args.aws_client,
    )
    print(report.table())
    for problem in [*report.wrong, *report.dead_letter_problems]:
        print("PROBLEM:", problem)
    ok = not (report.wrong or report.stuck or report.lost or report.left_in_queue)
    return 0 if ok and not report.dead_letter_problems else 1


if __name__ == "__main__":
    sys.exit(main())
