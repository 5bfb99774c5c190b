"""What a leaner hot path would cost: SendTaskSuccess without botocore, on the stub.

    .venv/bin/python bench/lean_call.py [--calls 2000]

The broker's CPU per task is mostly the SDK's (see docs/benchmarks.md).  Its three hot
calls (SendTaskSuccess, ReceiveMessage, DeleteMessageBatch) are fixed-shape JSON
requests, so a hand-written path can skip botocore's per-request machinery (model
lookups, event hooks, user-agent, header objects).  This measures, one call at a time
on the same stub and event loop (uvloop), the client CPU per SendTaskSuccess of:

- aiobotocore (what the broker uses);
- a lean SigV4 signer + aiohttp (the HTTP client aiobotocore already brings);
- a lean SigV4 signer + a raw asyncio keep-alive connection.

The lean signer is checked against botocore's SigV4Auth on the same request first, so
the figures are for requests AWS would accept.  Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import resource
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

OUTPUT = json.dumps({"body": "Return from callback"})
WARMUP = 50
ALGORITHM = "AWS4-HMAC-SHA256"
SIGNED_HEADERS = "content-type;host;x-amz-date;x-amz-target"
JSON_1_0 = "application/x-amz-json-1.0"


class LeanSigner:
    """SigV4 for one service and region; the signing key is derived once per day."""

    def __init__(self, access_key: str, secret_key: str, region: str, service: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.service = service
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = f"AWS4{self.secret_key}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, key
        return self._key

    def headers(self, host: str, target: str, body: bytes, amz_date: str) -> dict[str, str]:
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        canonical = (
            f"POST\n/\n\ncontent-type:{JSON_1_0}\nhost:{host}\nx-amz-date:{amz_date}\n"
            f"x-amz-target:{target}\n\n{SIGNED_HEADERS}\n{hashlib.sha256(body).hexdigest()}"
        )
        to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Content-Type": JSON_1_0,
            "X-Amz-Date": amz_date,
            "X-Amz-Target": target,
            "Authorization": (
                f"{ALGORITHM} Credential={self.access_key}/{scope}, "
                f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
            ),
        }


def check_against_botocore(host: str) -> None:
    """The lean signature equals botocore's for the same request (else AWS would refuse)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = orjson.dumps({"taskToken": "t", "output": OUTPUT})
    target = "AWSStepFunctions.SendTaskSuccess"
    request = AWSRequest(
        method="POST",
        url=f"http://{host}/",
        data=body,
        headers={"Content-Type": JSON_1_0, "X-Amz-Target": target},
    )
    SigV4Auth(Credentials("AKIDEXAMPLE", "secret"), "states", "us-east-1").add_auth(request)
    # botocore stamps the request with the current time: sign ours with the same stamp.
    lean = LeanSigner("AKIDEXAMPLE", "secret", "us-east-1", "states")
    ours = lean.headers(host, target, body, request.headers["X-Amz-Date"])
    if request.headers["Authorization"] != ours["Authorization"]:
        raise SystemExit("the lean SigV4 signature differs from botocore's")


def amz_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


class RawConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time (enough for a floor)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in status_and_headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(status_and_headers[9:12]), await self.reader.readexactly(length)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    name: str, tokens: list[str], call: Callable[[str], Awaitable[Any]]
) -> dict[str, Any]:
    for token in tokens[:WARMUP]:
        await call(token)
    measured = tokens[WARMUP:]
    cpu0, wall0 = cpu_s(), time.perf_counter()
    for token in measured:
        await call(token)
    cpu, wall = cpu_s() - cpu0, time.perf_counter() - wall0
    return {
        "variant": name,
        "calls": len(measured),
        "cpu_ms_per_call": 1000 * cpu / len(measured),
        "calls_per_s": len(measured) / wall,
    }


def new_tokens(endpoint: str, count: int) -> list[str]:
    def post(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the stub's own URL
            f"{endpoint}/_stub/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
            return json.loads(reply.read())

    post("reset", {})
    post("tasks", {"queue": "lean", "count": count + WARMUP})
    with urllib.request.urlopen(f"{endpoint}/_stub/tasks", timeout=30) as reply:  # noqa: S310
        return list(json.loads(reply.read()))


async def run(endpoint: str, calls: int) -> list[dict[str, Any]]:
    import aiohttp
    from aiobotocore.session import get_session

    parsed = urllib.parse.urlsplit(endpoint)
    host_port = parsed.netloc
    signer = LeanSigner("x", "x", "us-east-1", "states")
    target = "AWSStepFunctions.SendTaskSuccess"
    results = []

    session = get_session()
    async with session.create_client(
        "stepfunctions",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="x",
        aws_secret_access_key="x",  # noqa: S106 - a dummy: the stub checks no signature
    ) as sfn:

        async def aiobotocore_call(token: str) -> Any:
            return await sfn.send_task_success(taskToken=token, output=OUTPUT)

        tokens = new_tokens(endpoint, calls)
        results.append(await measure("aiobotocore", tokens, aiobotocore_call))

    async with aiohttp.ClientSession() as http:

        async def lean_aiohttp(token: str) -> Any:
            body = orjson.dumps({"taskToken": token, "output": OUTPUT})
            headers = signer.headers(host_port, target, body, amz_now())
            async with http.post(endpoint + "/", data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200:
                    raise RuntimeError(orjson.loads(payload).get("__type"))
                return orjson.loads(payload)

        tokens = new_tokens(endpoint, calls)
        results.append(await measure("lean SigV4 + aiohttp", tokens, lean_aiohttp))

    connection = RawConnection(parsed.hostname or "127.0.0.1", parsed.port or 80)

    async def lean_raw(token: str) -> Any:
        body = orjson.dumps({"taskToken": token, "output": OUTPUT})
        headers = signer.headers(host_port, target, body, amz_now())
        status, payload = await connection.post(headers, body)
        if status != 200:
            raise RuntimeError(orjson.loads(payload).get("__type"))
        return orjson.loads(payload)

    tokens = new_tokens(endpoint, calls)
    results.append(await measure("lean SigV4 + raw asyncio connection", tokens, lean_raw))
    if connection.writer is not None:
        connection.writer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--endpoint", default=os.environ.get("BENCH_ENDPOINT"))
    args = parser.parse_args()
    import uvloop

    check_against_botocore("127.0.0.1:1")
    if args.endpoint:
        for row in uvloop.run(run(args.endpoint, args.calls)):
            print(json.dumps(row), flush=True)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from awsstub import StubProcess

    with StubProcess() as stub:
        for row in uvloop.run(run(stub.endpoint_url, args.calls)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
