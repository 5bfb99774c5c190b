"""``python -m awsstub --host 127.0.0.1 --port 0 [--quota APIS=BURST/RATE]``: serve until
SIGTERM/SIGINT.  ``--quota SendTaskSuccess,SendTaskFailure=200/200`` makes those APIs
share one token bucket of 200 burst refilled at 200/s (repeat it for more buckets)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ._control import READY_PREFIX
from ._quota import Quotas
from ._server import StubServer


async def _serve(host: str, port: int, quotas: Quotas) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with StubServer(host, port, quotas=quotas) as stub:
        # The one line a parent waits for; counts and tokens are never printed.
        print(f"{READY_PREFIX}{stub.endpoint_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m awsstub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    parser.add_argument(
        "--quota",
        action="append",
        default=[],
        metavar="APIS=BURST/RATE",
        help="a Step Functions token bucket, e.g. SendTaskSuccess=3000/500 (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        quotas = Quotas.parse_flag(args.quota)
    except (KeyError, ValueError) as exc:
        parser.error(f"--quota: {exc}")
    runner = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(_serve(args.host, args.port, quotas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
