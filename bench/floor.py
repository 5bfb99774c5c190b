"""The floor: client CPU per bare ``send_task_success`` call of a Python SDK, on the stub.

    .venv/bin/python bench/floor.py --sdk aiobotocore|boto3 [--calls 2000] [--profile]

Reads open tokens from the stub's control endpoint (``BENCH_ENDPOINT``), warms the
client up, then calls ``send_task_success`` one at a time and prints one JSON line:
calls, CPU ms per call (process user+sys), calls/s.  ``--no-validation`` turns botocore's
parameter validation off.  With ``--profile`` it also prints where the CPU of one call
goes, by component (cProfile, own time of each function, grouped by module).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

OUTPUT = json.dumps({"body": "Return from callback"})
WARMUP = 50

# Module path fragments → the component a profile line is charged to (first match wins).
COMPONENTS = (
    ("botocore/useragent", "botocore: user-agent string"),
    ("botocore/auth", "botocore: SigV4 signing"),
    ("botocore/signers", "botocore: SigV4 signing"),
    ("botocore/validate", "botocore: parameter validation"),
    ("botocore/serialize", "botocore: request serialization"),
    ("botocore/parsers", "botocore: response parsing"),
    ("botocore/regions", "botocore: endpoint resolution"),
    ("botocore/endpoint_provider", "botocore: endpoint resolution"),
    ("botocore/hooks", "botocore: event hooks"),
    ("botocore/handlers", "botocore: event hooks"),
    ("botocore/retries", "botocore: retries"),
    ("botocore/awsrequest", "botocore: request objects"),
    ("botocore/", "botocore: other"),
    ("/hmac.py", "botocore: SigV4 signing"),
    ("urllib/parse", "botocore: URL handling (urllib.parse)"),
    ("/uuid.py", "botocore: other"),
    ("/inspect.py", "aiobotocore"),
    ("logging/", "logging (stdlib)"),
    ("aiobotocore/", "aiobotocore"),
    ("aiohttp/", "aiohttp (HTTP client)"),
    ("yarl/", "aiohttp (HTTP client)"),
    ("multidict/", "aiohttp (HTTP client)"),
    ("asyncio/", "event loop"),
    ("uvloop", "event loop"),
    ("urllib3/", "urllib3 (HTTP client)"),
    ("http/client", "urllib3 (HTTP client)"),
    ("json/", "json"),
    ("/email/", "botocore: headers (stdlib email)"),
)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_tokens(endpoint: str, count: int) -> list[str]:
    with urllib.request.urlopen(f"{endpoint}/_stub/tasks", timeout=30) as reply:  # noqa: S310
        tasks = json.loads(reply.read())
    tokens = [token for token, task in tasks.items() if task["status"] == "open"]
    if len(tokens) < count + WARMUP:
        raise SystemExit(f"the stub has {len(tokens)} open tokens, {count + WARMUP} needed")
    return tokens[: count + WARMUP]


def boto3_calls(endpoint: str, tokens: list[str], validation: bool) -> Callable[[], None]:
    import boto3
    from botocore.config import Config

    config = Config(parameter_validation=validation)
    sfn = boto3.session.Session(region_name="us-east-1").client(
        "stepfunctions", endpoint_url=endpoint, config=config
    )
    for token in tokens[:WARMUP]:
        sfn.send_task_success(taskToken=token, output=OUTPUT)

    def run() -> None:
        for token in tokens[WARMUP:]:
            sfn.send_task_success(taskToken=token, output=OUTPUT)

    return run


def aiobotocore_calls(endpoint: str, tokens: list[str], validation: bool) -> Callable[[], None]:
    import aioboto3
    import uvloop
    from aiobotocore.config import AioConfig

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    config = AioConfig(parameter_validation=validation)
    session = aioboto3.Session(region_name="us-east-1")
    context = session.client("stepfunctions", endpoint_url=endpoint, config=config)
    sfn: Any = loop.run_until_complete(context.__aenter__())

    async def calls(batch: list[str]) -> None:
        for token in batch:
            await sfn.send_task_success(taskToken=token, output=OUTPUT)

    loop.run_until_complete(calls(tokens[:WARMUP]))

    def run() -> None:
        loop.run_until_complete(calls(tokens[WARMUP:]))

    return run


def component_of(filename: str, components: Sequence[tuple[str, str]] = COMPONENTS) -> str:
    where = filename.replace("\\", "/")
    return next((name for key, name in components if key in where), "other Python")


def own_time_by_component(
    stats: pstats.Stats, classify: Callable[[str], str] = component_of
) -> dict[str, float]:
    """Own (tottime) seconds by component; a C function's time goes to its callers.

    cProfile names C functions' file "~"; their time (str.join, hashing, socket
    calls) belongs to whoever called them, which the callers table says exactly.
    """
    totals: dict[str, float] = {}
    for (filename, _, _function), row in stats.stats.items():  # type: ignore[attr-defined]
        own_s, callers = row[2], row[4]
        if filename == "~" and callers:
            for (caller_file, _, _), caller_row in callers.items():
                name = "C builtins" if caller_file == "~" else classify(caller_file)
                totals[name] = totals.get(name, 0.0) + caller_row[2]
            continue
        name = "C builtins" if filename == "~" else classify(filename)
        totals[name] = totals.get(name, 0.0) + own_s
    return totals


def breakdown(profile: cProfile.Profile, calls: int) -> list[tuple[str, float]]:
    """Own CPU ms per call by component, largest first."""
    totals = own_time_by_component(pstats.Stats(profile))
    return sorted(((k, 1000 * v / calls) for k, v in totals.items()), key=lambda kv: -kv[1])


def cache_user_agent() -> None:
    """Memoise botocore's User-Agent string per client and feature set (an experiment).

    botocore rebuilds and re-sanitises the whole string twice per request although it
    only changes with the features the request context records.  This measures what
    building it once would save; it patches a botocore internal, so it stays here.
    """
    from botocore.context import get_context
    from botocore.useragent import UserAgentString

    build = UserAgentString.to_string
    cache: dict[tuple[int, frozenset[str]], str] = {}

    def to_string(self: UserAgentString) -> str:
        context = get_context()
        key = (id(self), frozenset(context.features) if context is not None else frozenset())
        value = cache.get(key)
        if value is None:
            value = cache[key] = build(self)
        return value

    UserAgentString.to_string = to_string  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdk", choices=("aiobotocore", "boto3"), required=True)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-validation", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--cache-user-agent", action="store_true", help="memoise the User-Agent string"
    )
    args = parser.parse_args()
    endpoint = os.environ["BENCH_ENDPOINT"]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "x")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "x")
    if args.cache_user_agent:
        cache_user_agent()
    tokens = open_tokens(endpoint, args.calls)
    build = aiobotocore_calls if args.sdk == "aiobotocore" else boto3_calls
    run = build(endpoint, tokens, not args.no_validation)
    profile = cProfile.Profile(time.process_time) if args.profile else None
    cpu0, wall0 = cpu_s(), time.perf_counter()
    if profile is not None:
        profile.enable()
    run()
    if profile is not None:
        profile.disable()
    cpu, wall = cpu_s() - cpu0, time.perf_counter() - wall0
    result = {
        "sdk": args.sdk,
        "validation": not args.no_validation,
        "cached_user_agent": args.cache_user_agent,
        "calls": args.calls,
        "cpu_ms_per_call": 1000 * cpu / args.calls,
        "calls_per_s": args.calls / wall,
    }
    if profile is not None:
        # Profiling inflates the total; the shares are what is worth reading.
        result["profile_ms_per_call"] = dict(breakdown(profile, args.calls))
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
