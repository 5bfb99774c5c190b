"""The names the broker's metrics are known by: its families, the standard collectors'
families, and the hot AWS APIs whose throttle and error series start at 0.

Apart from ``metrics`` (which builds the families at scrape time) so that the deploy
examples, the docs' tests and ``observability.health`` read them without the collector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "HOT_ERROR_CODES",
    "LONG_POLL_APIS",
    "METRIC_NAMES",
    "POLL_BUCKETS_S",
    "STANDARD_METRIC_NAMES",
    "hot_apis",
]

#: The long polls: they wait by design (up to 20 s and 60 s), so their time is
#: ``broker_aws_poll_duration_seconds``, not call latency.
LONG_POLL_APIS: Final = frozenset({"ReceiveMessage", "GetActivityTask"})
#: Their buckets, up to the read timeouts past the longest waits.
POLL_BUCKETS_S: Final = (0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 70.0)

#: Every metric family the broker exposes (tests and the deploy examples check this list).
METRIC_NAMES = (
    "broker_messages_received_total",
    "broker_messages_total",
    "broker_handler_duration_seconds",
    "broker_aws_call_duration_seconds",
    "broker_aws_poll_duration_seconds",
    "broker_aws_call_errors_total",
    "broker_throttles_total",
    "broker_handlers_in_flight",
    "broker_free_slots",
    "broker_delete_batch_size",
    "broker_heartbeats_total",
    "broker_decisions_total",
    "broker_event_loop_lag_seconds",
    "broker_completion_rate_allowed",
    "broker_ready",
    "broker_draining",
    "broker_build_info",
)
#: The families of prometheus_client's process and platform collectors (process_* on
#: Linux, where /proc is; python_info everywhere).
STANDARD_METRIC_NAMES = (
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "python_info",
)

_SQS_HOT: Final = (
    "ReceiveMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
)
_CLOSED: Final = ("TaskTimedOut", "InvalidToken", "TaskDoesNotExist")
#: The error series present at 0 from the start, per hot API: its throttling code (SQS
#: models ``RequestThrottled``; Step Functions answers the common
#: ``ThrottlingException``) and, for the SendTask* calls, the "task closed" answers.
HOT_ERROR_CODES: Final[Mapping[str, tuple[str, ...]]] = {
    **{api: ("RequestThrottled",) for api in _SQS_HOT},
    "SendTaskSuccess": ("ThrottlingException", *_CLOSED, "InvalidOutput"),
    "SendTaskFailure": ("ThrottlingException", *_CLOSED),
    "SendTaskHeartbeat": ("ThrottlingException", *_CLOSED),
    "GetActivityTask": ("ThrottlingException",),
}


def hot_apis(*, queues: bool, activities: bool) -> tuple[str, ...]:
    """The AWS APIs a broker with queues and/or activities calls per task."""
    completions = ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat")
    return (
        (_SQS_HOT if queues else ())
        + (completions if queues or activities else ())
        + (("GetActivityTask",) if activities else ())
    )
