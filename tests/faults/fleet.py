"""The fleet run: three ``broker run`` on one queue, one Step Functions quota between them.

    .venv/bin/python -m tests.faults.fleet [--tasks 4000] [--seed N]

What it does, in one process tree on loopback:

1. starts the AWS stub with one token bucket for SendTaskSuccess, SendTaskFailure and
   SendTaskHeartbeat together: 200 burst, 200 per second (``--quota``), stricter than
   AWS's bucket per API;
2. fills one queue with ``tasks`` tasks (``echo`` succeeds, ``reject`` fails: the outcome
   of each is known in advance, tests/faults/handlers.py);
3. starts three brokers with default settings (only the endpoint, the queue, the
   handlers and, three processes sharing a host, the probe port differ);
4. when a quarter of the tasks is closed, SIGKILLs the first broker and starts a fourth;
5. when every task is closed and the queue is empty, stops the others with SIGTERM and
   reads the stub's counts: every outcome, and the quota's per-second timeline.

*While a backlog exists* is read from that timeline (``awsstub/_quota.py``): its second
0 begins with the first SendTask* call; the backlog lasts up to the end of the last
second in which every call the stub answered, of any API, saw at least one message
visible in the queue.  The quota offered in that time is the bucket's burst plus its
refill for each of those seconds; *quota used* is the SendTask* calls it let through in
them (whatever they answered) over that.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from awsstub import StubControl, StubProcess

from .harness import REPO_ROOT, BrokerProcess

QUEUE = "fleet"
#: The queue's own visibility timeout: a killed replica's messages come back in 5 s.
VISIBILITY_TIMEOUT_S = 5
BURST = 200
RATE_PER_S = 200
SEND_TASK = ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")
REJECT_SHARE = 0.1
REPLICAS = 3
#: Share of the tasks closed when the first replica is killed and a new one starts.
KILL_AT = 0.25


@dataclass
class FleetReport:
    tasks: int
    rejects: int
    broker_starts: int
    kills: int
    send_task_calls: int
    throttled: int
    backlog_s: int
    used_in_backlog: int
    offered_in_backlog: int
    per_second: list[int]
    throttled_per_second: list[int]
    duplicates: int
    redeliveries: int
    unknown_tokens: int
    wrong: list[str]
    lost: int
    stuck: int
    left_in_queue: int
    exit_codes: list[int | None]
    wall_s: float
    seed: int

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.send_task_calls if self.send_task_calls else 0.0

    @property
    def quota_used(self) -> float:
        return self.used_in_backlog / self.offered_in_backlog if self.offered_in_backlog else 0.0

    def table(self) -> str:
        # Second 0 has the bucket's burst on top: the spread is of the seconds after it.
        backlog = sorted(self.per_second[1 : self.backlog_s]) or [0]
        spread = f"{backlog[0]} / {backlog[len(backlog) // 2]} / {backlog[-1]}"
        rows = [
            ("tasks (succeed / fail)", f"{self.tasks - self.rejects} / {self.rejects}"),
            ("quota (one bucket for SendTask*)", f"{BURST} burst, {RATE_PER_S}/s"),
            ("brokers started / SIGKILLed", f"{self.broker_starts} / {self.kills}"),
            ("SendTask* calls", self.send_task_calls),
            (
                "SendTask* calls throttled",
                f"{self.throttled} ({self.throttled_share:.1%})",
            ),
            ("backlog (s, whole seconds from the first SendTask*)", self.backlog_s),
            (
                "quota used during the backlog",
                f"{self.used_in_backlog} / {self.offered_in_backlog} ({self.quota_used:.1%})",
            ),
            ("SendTask* let through per s, backlog (min / median / max)", spread),
            ("duplicate completions (answered task closed)", self.duplicates),
            ("redeliveries (receives with count > 1)", self.redeliveries),
            ("wrong outcomes", len(self.wrong)),
            ("lost (message gone, task open)", self.lost),
            ("stuck (task open at the end)", self.stuck),
            ("messages left in the queue", self.left_in_queue),
            ("brokers' exit codes after SIGTERM", " ".join(map(str, self.exit_codes))),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("seed (--seed to replay the plan)", self.seed),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def fleet_env(endpoint_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Default settings but for where AWS is, the queue and the handlers (and ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "AWS_ACCESS_KEY_ID": "fleet",
            "AWS_SECRET_ACCESS_KEY": "fleet",
            "AWS_REGION": "us-east-1",
            "BROKER_AWS_ENDPOINT_URL": endpoint_url,
            "BROKER_ENTRY_POINTS": "false",
            "BROKER_HANDLERS": '["tests.faults.handlers:router"]',
            "BROKER_QUEUES": orjson.dumps([QUEUE]).decode(),
            # Three processes on one host cannot all listen on 8080; no rate depends on it.
            "BROKER_HTTP_PORT": "0",
            **(extra or {}),
        }
    )
    return env


def _plan(
    tasks: int, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, tuple[str, int]]]:
    messages: list[dict[str, Any]] = []
    expected: dict[str, tuple[str, int]] = {}
    for n in range(tasks):
        kind = "reject" if rng.random() < REJECT_SHARE else "echo"
        token = f"fleet-{n:05d}-" + secrets.token_hex(24)
        body = orjson.dumps({"TaskToken": token, "input": {"n": n}}).decode()
        attributes = {"type": {"DataType": "String", "StringValue": kind}}
        messages.append({"body": body, "attributes": attributes, "token": token})
        expected[token] = (kind, n)
    return messages, expected


def _closed(stats: dict[str, Any]) -> int:
    return int(stats["tasks"]["succeeded"]) + int(stats["tasks"]["failed"])


def _depth(stats: dict[str, Any]) -> int:
    queue = stats["queues"].get(QUEUE, {})
    return sum(int(queue.get(key, 0)) for key in ("visible", "in_flight", "delayed"))


def _wait(
    control: StubControl, brokers: list[BrokerProcess], done: Any, deadline: float
) -> dict[str, Any]:
    while True:
        stats = control.stats()
        if done(stats) or time.monotonic() > deadline:
            return stats
        for broker in brokers:
            broker.ensure_alive()
        time.sleep(0.1)


def backlog_seconds(timeline: list[dict[str, Any]]) -> int:
    """Whole seconds from second 0 to the end of the last one seen with a backlog."""
    last = -1
    for row in timeline:
        if row["visible_min"] is not None and row["visible_min"] > 0:
            last = row["second"]
    # The timeline's last row is still running when it is read: never count it.
    return min(last + 1, max(0, len(timeline) - 1))


def run(
    *,
    tasks: int = 4000,
    seed: int | None = None,
    log_dir: Path,
    timeout_s: float = 100.0,
    extra_env: dict[str, str] | None = None,
) -> FleetReport:
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    messages, expected = _plan(tasks, rng)
    began = time.monotonic()
    deadline = began + timeout_s
    quota = f"{','.join(SEND_TASK)}={BURST}/{RATE_PER_S}"
    with StubProcess(quotas=(quota,)) as stub:
        control = stub.control()
        control.create_queue(QUEUE, visibility_timeout_s=VISIBILITY_TIMEOUT_S)
        for start in range(0, len(messages), 500):
            control.add_messages(QUEUE, messages[start : start + 500])
        env = fleet_env(stub.endpoint_url, extra_env)
        brokers = [BrokerProcess(env, log_dir / f"broker-{n}.log") for n in range(REPLICAS)]
        try:
            _wait(control, brokers, lambda s: _closed(s) >= KILL_AT * tasks, deadline)
            brokers.pop(0).kill()
            brokers.append(BrokerProcess(env, log_dir / f"broker-{REPLICAS}.log"))

            def finished(stats: dict[str, Any]) -> bool:
                return _closed(stats) >= tasks and _depth(stats) == 0

            _wait(control, brokers, finished, deadline)
            stats = control.stats()
        finally:
            exit_codes = [broker.terminate(30)[0] for broker in brokers]
        outcomes = control.tasks()
    wall_s = time.monotonic() - began

    wrong: list[str] = []
    lost = stuck = 0
    for token, (kind, n) in expected.items():
        seen = outcomes.get(token, {})
        status = seen.get("status")
        if status in (None, "open"):
            # The queue is empty at the end (or the run timed out with it full).
            if _depth(stats):
                stuck += 1
            else:
                lost += 1
            continue
        want: tuple[Any, ...] = (
            ("succeeded", {"n": n}, None) if kind == "echo" else ("failed", None, "Order.Rejected")
        )
        output = orjson.loads(seen["output"]) if seen.get("output") else None
        got = (status, output, seen.get("error"))
        if got != want:
            wrong.append(f"{token[:12]}…: expected {want}, got {got}")

    quotas = stats["quotas"]
    timeline = quotas["timeline"]
    backlog_s = backlog_seconds(timeline)
    per_second = [
        sum(row["calls"].get(api, 0) - row["throttled"].get(api, 0) for api in SEND_TASK)
        for row in timeline
    ]
    throttled_per_second = [
        sum(row["throttled"].get(api, 0) for api in SEND_TASK) for row in timeline
    ]
    return FleetReport(
        tasks=tasks,
        rejects=sum(1 for kind, _ in expected.values() if kind == "reject"),
        broker_starts=REPLICAS + 1,
        kills=1,
        send_task_calls=sum(quotas["calls"].get(api, 0) for api in SEND_TASK),
        throttled=sum(quotas["throttled"].get(api, 0) for api in SEND_TASK),
        backlog_s=backlog_s,
        used_in_backlog=sum(per_second[:backlog_s]),
        offered_in_backlog=BURST + RATE_PER_S * backlog_s,
        per_second=per_second,
        throttled_per_second=throttled_per_second,
        duplicates=int(stats["tasks"]["duplicates"]),
        redeliveries=int(stats["queues"][QUEUE]["redelivered"]),
        unknown_tokens=int(stats["tasks"]["unknown_tokens"]),
        wrong=wrong,
        lost=lost,
        stuck=stuck,
        left_in_queue=_depth(stats),
        exit_codes=exit_codes,
        wall_s=wall_s,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--logs", type=Path, default=Path("bench/results/fleet"))
    parser.add_argument(
        "--no-adaptive",
        action="store_true",
        help="BROKER_COMPLETION_RATE_ADAPTIVE=false: the fleet as it was before issue 14",
    )
    parser.add_argument("--timeline", action="store_true", help="print the per-second counts")
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    for old_log in args.logs.glob("broker-*.log"):
        old_log.unlink()
    extra = {"BROKER_COMPLETION_RATE_ADAPTIVE": "false"} if args.no_adaptive else None
    report = run(tasks=args.tasks, seed=args.seed, log_dir=args.logs, extra_env=extra)
    print(report.table())
    if args.timeline:
        print("second  let through  throttled")
        for n, (through, throttled) in enumerate(
            zip(report.per_second, report.throttled_per_second, strict=True)
        ):
            print(f"{n:>6}  {through:>11}  {throttled:>9}")
    for problem in report.wrong:
        print("PROBLEM:", problem)
    ok = not (report.wrong or report.lost or report.stuck or report.left_in_queue)
    return 0 if ok and report.throttled_share <= 0.05 and report.quota_used >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
