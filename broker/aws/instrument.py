"""Measure every AWS call at the transport seam: latency, errors, throttles, batch sizes.

Wrapping the clients (real or fake) keeps the measuring out of the broker's logic and
covers every call in one place, including ones added later.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

from broker.aws.errors import HEARTBEAT_CLOSED_CODES, error_name, is_throttle
from broker.aws.protocols import AwsClients, DynamoApi, SfnApi, SnsApi, SqsApi
from broker.observability.metric_names import LONG_POLL_APIS
from broker.observability.stats import Stats
from broker.observability.tracing import Tracer

__all__ = ["instrument"]

_Call = Callable[..., Awaitable[Mapping[str, Any]]]

#: botocore's snake_case method → the AWS API name used as the ``api`` label.
_API_NAMES: Final = {
    "get_queue_url": "GetQueueUrl",
    "get_queue_attributes": "GetQueueAttributes",
    "receive_message": "ReceiveMessage",
    "delete_message_batch": "DeleteMessageBatch",
    "change_message_visibility": "ChangeMessageVisibility",
    "send_message": "SendMessage",
    "send_message_batch": "SendMessageBatch",
    "send_task_success": "SendTaskSuccess",
    "send_task_failure": "SendTaskFailure",
    "send_task_heartbeat": "SendTaskHeartbeat",
    "get_activity_task": "GetActivityTask",
}


def _api_name(method: str) -> str:
    return _API_NAMES.get(method) or "".join(part.title() for part in method.split("_"))


def _measured(stats: Stats, tracer: Tracer, api: str, call: _Call) -> _Call:
    # Picked once per API, not per call: a long poll's wait is not call latency.
    seconds = stats.poll_seconds[api] if api in LONG_POLL_APIS else stats.aws_seconds[api]
    traced = tracer.enabled

    async def measured_call(**params: Any) -> Mapping[str, Any]:
        started = time.perf_counter()
        try:
            if traced:
                with tracer.span(api, **{"rpc.system": "aws-api", "rpc.method": api}):
                    result = await call(**params)
            else:  # tracing off: no span work at all
                result = await call(**params)
        except BaseException as exc:
            seconds.observe(time.perf_counter() - started)
            if isinstance(exc, Exception):
                _count_error(stats, api, exc)
            raise
        seconds.observe(time.perf_counter() - started)
        if api == "DeleteMessageBatch":
            stats.delete_batch_sizes.observe(len(params.get("Entries", ())))
        elif api == "SendTaskHeartbeat":
            stats.heartbeats["sent"] += 1
        return result

    return measured_call


def _count_error(stats: Stats, api: str, exc: Exception) -> None:
    code = error_name(exc)
    stats.aws_errors[(api, code)] += 1
    if is_throttle(code):
        stats.throttles[api] += 1
    if api == "SendTaskHeartbeat":
        # Only these mean the workflow gave up (see Completer.heartbeat).
        closed = code in HEARTBEAT_CLOSED_CODES
        stats.heartbeats["closed" if closed else "failed"] += 1


class _Instrumented:
    """Any client, with each awaited call measured.  Attributes are wrapped once."""

    def __init__(self, client: object, stats: Stats, tracer: Tracer) -> None:
        self._client = client
        self._stats = stats
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        wrapped = _measured(self._stats, self._tracer, _api_name(name), attribute)
        setattr(self, name, wrapped)  # cache: later lookups skip __getattr__
        return wrapped


def instrument(clients: AwsClients, stats: Stats, tracer: Tracer) -> AwsClients:
    poll, sns, dynamodb = clients.sfn_poll, clients.sns, clients.dynamodb
    return AwsClients(
        sqs=cast(SqsApi, _Instrumented(clients.sqs, stats, tracer)),
        sfn=cast(SfnApi, _Instrumented(clients.sfn, stats, tracer)),
        sfn_poll=None if poll is None else cast(SfnApi, _Instrumented(poll, stats, tracer)),
        sns=None if sns is None else cast(SnsApi, _Instrumented(sns, stats, tracer)),
        dynamodb=(
            None if dynamodb is None else cast(DynamoApi, _Instrumented(dynamodb, stats, tracer))
        ),
    )
