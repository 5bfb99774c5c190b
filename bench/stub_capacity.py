"""The stub's capacity alone: how many AWS calls per second it answers.

    .venv/bin/python bench/stub_capacity.py [--seconds 3] [--connections 8]

The stub runs in its own process (as in the benchmark); this process is a lean load
generator: pre-built HTTP requests on several keep-alive raw-socket connections, each
reading only the status line and Content-Length of the answer.  Two workloads:

- SendTaskSuccess on open tokens (one call per token, all distinct);
- ReceiveMessage of 10 then DeleteMessageBatch of those 10 (the consumer's SQS side).

It prints requests/s, the stub's CPU seconds over the run (from /proc) and requests per
stub CPU second: on 2 shared cores the generator itself competes for CPU, so the last
figure is the stub's capacity when it has a core to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awsstub import StubControl, StubProcess

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def aws_request(port: int, target: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/x-amz-json-1.0\r\nX-Amz-Target: {target}\r\n"
        "Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/states/aws4_request, "
        "SignedHeaders=host, Signature=0\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"stub answered {head.splitlines()[0]!r}: {body[:200]!r}")
    return body


async def send_successes(port: int, tokens: list[str], connections: int) -> int:
    requests = [
        aws_request(port, "AWSStepFunctions.SendTaskSuccess", {"taskToken": t, "output": "{}"})
        for t in tokens
    ]

    async def worker(share: list[bytes]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in share:
            writer.write(request)
            await read_response(reader)
        writer.close()
        return len(share)

    shares = [requests[i::connections] for i in range(connections)]
    return sum(await asyncio.gather(*(worker(share) for share in shares)))


async def receive_and_delete(port: int, url: str, batches: int, connections: int) -> int:
    receive = aws_request(
        port,
        "AmazonSQS.ReceiveMessage",
        {"QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0},
    )

    async def worker(count: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        calls = 0
        for _ in range(count):
            writer.write(receive)
            messages = json.loads(await read_response(reader)).get("Messages", [])
            calls += 1
            if not messages:
                continue
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            body = {"QueueUrl": url, "Entries": entries}
            writer.write(aws_request(port, "AmazonSQS.DeleteMessageBatch", body))
            await read_response(reader)
            calls += 1
        writer.close()
        return calls

    per_connection = batches // connections
    return sum(await asyncio.gather(*(worker(per_connection) for _ in range(connections))))


def measure(name: str, pid: int, run: Callable[[], int]) -> dict[str, float]:
    cpu0, wall0 = process_cpu_s(pid), time.perf_counter()
    calls = run()
    wall, cpu = time.perf_counter() - wall0, process_cpu_s(pid) - cpu0
    row = {
        "calls": calls,
        "wall_s": wall,
        "calls_per_s": calls / wall,
        "stub_cpu_s": cpu,
        "calls_per_stub_cpu_s": calls / cpu if cpu > 0 else float("inf"),
    }
    print(
        f"{name:<34} {calls:>7} calls {row['calls_per_s']:>9.0f}/s  "
        f"stub CPU {cpu:5.2f} s  {row['calls_per_stub_cpu_s']:>9.0f} calls per stub CPU s"
    )
    return row


def run_capacity(tasks: int = 20_000, connections: int = 8) -> dict[str, dict[str, float]]:
    """Both workloads against a fresh stub process; the figures by workload."""
    results = {}
    with StubProcess() as stub:
        control = StubControl(stub.endpoint_url)
        port = int(stub.endpoint_url.rsplit(":", 1)[1])
        url = control.create_queue("capacity")
        control.add_tasks("capacity", count=tasks)
        tokens = list(control.tasks())

        def successes() -> int:
            return asyncio.run(send_successes(port, tokens, connections))

        results["SendTaskSuccess"] = measure("SendTaskSuccess", stub.pid, successes)
        control.reset()
        url = control.create_queue("capacity")
        control.add_tasks("capacity", count=tasks)

        def sqs_side() -> int:
            return asyncio.run(receive_and_delete(port, url, tasks // 10, connections))

        results["ReceiveMessage+DeleteMessageBatch"] = measure(
            "ReceiveMessage(10)+DeleteMessageBatch", stub.pid, sqs_side
        )
        stats = control.stats()
        assert stats["queues"]["capacity"]["deleted"] > 0
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = run_capacity(args.tasks, args.connections)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
