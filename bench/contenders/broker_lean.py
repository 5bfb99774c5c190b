"""An experiment, not a product: the broker with a lean path for its three hot calls.

    BROKER_QUEUES=... BROKER_AWS_ENDPOINT_URL=... python bench/contenders/broker_lean.py

The broker exactly as ``broker run`` starts it (settings from the environment, the seed
handlers, SIGTERM drains), except that the clients it gets from its ``clients`` factory
send SendTaskSuccess, SendTaskFailure, ReceiveMessage and DeleteMessageBatch as
fixed-shape JSON requests signed by ``bench.lean_call.LeanSigner`` over one aiohttp
session, instead of through botocore.  Every other call goes to aiobotocore.  Errors are
raised as botocore ``ClientError`` with the code SQS/Step Functions sent, so the broker's
``classify`` reads them as usual.  It measures what issue 4's proposed change would gain;
it skips what a real implementation needs (credential refresh, endpoint resolution
without an endpoint URL, retries of the SQS calls).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import anyio
import orjson
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.lean_call import LeanSigner
from broker import Broker, load_settings
from broker.aws.clients import open_clients
from broker.aws.protocols import AwsClients, SfnApi, SqsApi
from broker.core.settings import BrokerSettings
from broker.observability.logs import configure_logging
from handlers.seeds import router


class _LeanCalls:
    """Signed JSON POSTs to one endpoint for one service."""

    def __init__(self, http: aiohttp.ClientSession, endpoint: str, service: str) -> None:
        self.http = http
        self.url = endpoint.rstrip("/") + "/"
        self.host = urllib.parse.urlsplit(endpoint).netloc
        self.signer = LeanSigner(
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_REGION", "us-east-1"),
            service,
        )

    async def call(self, target: str, params: Mapping[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(params)
        amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = self.signer.headers(self.host, target, body, amz_date)
        async with self.http.post(self.url, data=body, headers=headers) as response:
            payload = await response.read()
            status = response.status
            query_error = response.headers.get("x-amzn-query-error")
        parsed: dict[str, Any] = orjson.loads(payload) if payload else {}
        if status == 200:
            return parsed
        code = str(parsed.get("__type", status)).rsplit("#", 1)[-1]
        if query_error and query_error.split(";")[0]:
            code = query_error.split(";")[0]
        error = {
            "Error": {"Code": code, "Message": str(parsed.get("message", ""))},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        raise ClientError(error, target.rsplit(".", 1)[-1])  # type: ignore[arg-type]


class LeanSqs:
    def __init__(self, real: SqsApi, lean: _LeanCalls) -> None:
        self._real = real
        self._lean = lean
        self.get_queue_url = real.get_queue_url
        self.get_queue_attributes = real.get_queue_attributes
        self.change_message_visibility = real.change_message_visibility
        self.send_message = real.send_message
        self.send_message_batch = real.send_message_batch

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        return await self._lean.call("AmazonSQS.ReceiveMessage", params)

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        return await self._lean.call("AmazonSQS.DeleteMessageBatch", params)


class LeanSfn:
    def __init__(self, real: SfnApi, lean: _LeanCalls) -> None:
        self._real = real
        self._lean = lean
        self.send_task_heartbeat = real.send_task_heartbeat

    async def send_task_success(self, **params: Any) -> dict[str, Any]:
        return await self._lean.call("AWSStepFunctions.SendTaskSuccess", params)

    async def send_task_failure(self, **params: Any) -> dict[str, Any]:
        return await self._lean.call("AWSStepFunctions.SendTaskFailure", params)

    def __getattr__(self, name: str) -> Any:
        # Activity calls and anything added later go to aiobotocore.
        return getattr(self._real, name)


@asynccontextmanager
async def lean_clients(settings: BrokerSettings) -> AsyncIterator[AwsClients]:
    endpoint = settings.aws_endpoint_url
    if endpoint is None:
        raise SystemExit("the lean experiment needs BROKER_AWS_ENDPOINT_URL")
    longest_wait_s = max((queue.wait_time_s for queue in settings.queues), default=20)
    timeout = aiohttp.ClientTimeout(total=longest_wait_s + 10)
    connector = aiohttp.TCPConnector(limit=settings.completion_concurrency + 16)
    async with (
        open_clients(settings) as real,
        aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
    ):
        sqs = LeanSqs(real.sqs, _LeanCalls(http, endpoint, "sqs"))
        sfn = LeanSfn(real.sfn, _LeanCalls(http, endpoint, "states"))
        yield AwsClients(sqs=cast(SqsApi, sqs), sfn=cast(SfnApi, sfn))


async def serve() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.log_levels)
    broker = Broker(settings, router, clients=lean_clients)
    async with anyio.create_task_group() as root:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    broker.request_stop()
                    return

        root.start_soon(stop_on_signal)
        await broker.run()
        root.cancel_scope.cancel()


def main() -> None:
    anyio.run(serve, backend_options={"use_uvloop": True})


if __name__ == "__main__":
    main()
