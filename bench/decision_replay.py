"""A replay storm on the decision endpoint, and what it costs the broker's SQS tasks.

    .venv/bin/python bench/decision_replay.py [--clients 64] [--seconds 20] [--rate 50]
        [--quota 200/200] [--code DIR]

On loopback: the AWS stub (``awsstub``, with one Step Functions bucket for SendTask*,
by default 200 burst / 200 per s, as the fleet test's) and ``broker run`` with decisions on and
the seed ``callback`` handler. SQS tasks arrive at ``--rate`` per second throughout;
first ``--seconds`` / 2 without the storm, then ``--seconds`` with ``--clients`` clients
POSTing one decision link of a closed task in a loop. Printed: the SendTask* calls the
storm made, the answers it got, and the SQS tasks' latency (arrival to completion, the
stub's figures) in each phase. ``--code DIR`` runs the broker from another checkout (to
measure an older commit: ``git archive COMMIT | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from awsstub import StubControl, StubProcess  # noqa: E402
from broker.decisions.links import DecisionKeys, DecisionLink, LinkCodec, new_key  # noqa: E402

QUEUE = "replay"
#: One bucket for the three SendTask* APIs (``--quota BURST/RATE`` changes it).
QUOTA_APIS = "SendTaskSuccess,SendTaskFailure,SendTaskHeartbeat"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(code: Path, endpoint_url: str, key: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_"))}
    env.update(
        {
            "PYTHONPATH": str(code),
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "BROKER_AWS_ENDPOINT_URL": endpoint_url,
            "BROKER_ENTRY_POINTS": "false",
            "BROKER_HANDLERS": '["handlers.seeds:router"]',
            "BROKER_QUEUES": json.dumps([{"name": QUEUE, "wait_time_s": 1}]),
            "BROKER_HTTP_PORT": "0",
            "BROKER_LOG_LEVEL": "WARNING",
            "BROKER_DECISION_KEYS": json.dumps([key]),
            "BROKER_DECISION_BASE_URL": "https://approve.example.com",
            "BROKER_DECISION_HOST": "127.0.0.1",
            "BROKER_DECISION_PORT": str(port),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "broker", "run"],
        cwd=code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def storm(url: str, clients: int, seconds: float) -> Counter[int]:
    answers: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=30)

    async def client() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.post(url) as reply:
                        await reply.read()
                        answers[reply.status] += 1
                except (aiohttp.ClientError, TimeoutError):
                    answers[0] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


async def wait_answering(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the decision endpoint never answered")
            await asyncio.sleep(0.2)


def phase(control: StubControl, rate: float, seconds: float) -> None:
    control.reset_stats()
    control.add_tasks(QUEUE, count=int(rate * seconds), type="callback", rate_per_s=rate)


def latency(stats: dict[str, Any]) -> str:
    figures = stats["latency_ms"]
    return (
        f"{figures['count']} tasks, p50 {figures['p50']:.1f} ms, p99 {figures['p99']:.1f} ms, "
        f"max {figures['max']:.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    key = new_key()
    port = free_port()
    # An InvalidToken link: Step Functions answers it as closed, as for a decided task.
    link = LinkCodec(DecisionKeys.parse([key]), f"http://127.0.0.1:{port}").make(
        DecisionLink(
            "AQB" + "x" * 600, "approve", datetime.fromtimestamp(time.time() + 3600, UTC), output={}
        )
    )
    with StubProcess(quotas=(f"{QUOTA_APIS}={args.quota}",)) as stub:
        control = StubControl(stub.endpoint_url)
        control.create_queue(QUEUE)
        broker = start_broker(args.code, stub.endpoint_url, key, port)
        try:
            await wait_answering(link)
            quiet_s = args.seconds / 2
            phase(control, args.rate, quiet_s)
            await asyncio.sleep(quiet_s + 2)
            quiet = control.stats()
            phase(control, args.rate, args.seconds)
            answers = await storm(link, args.clients, args.seconds)
            await asyncio.sleep(2)
            stormy = control.stats()
        finally:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(30)
            except subprocess.TimeoutExpired:
                broker.kill()
    print(
        f"code: {args.code}; {args.clients} clients for {args.seconds:.0f} s; tasks "
        f"{args.rate}/s; SendTask* bucket {args.quota}"
    )
    print(f"without the storm: {latency(quiet)}")
    print(f"during the storm:  {latency(stormy)}")
    print(
        f"storm: {sum(answers.values())} POSTs answered {dict(sorted(answers.items()))}; "
        f"SendTask* calls for the link: {stormy['tasks']['unknown_tokens']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--quota", default="200/200", help="SendTask* bucket, BURST/RATE")
    parser.add_argument("--code", type=lambda text: Path(text).resolve(), default=REPO)
    asyncio.run(main(parser.parse_args()))
