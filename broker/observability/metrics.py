"""Prometheus metrics, built from the broker's counters when ``/metrics`` is scraped.

Labels are bounded: queue (configured), type (registered, ``unknown`` or ``none``),
outcome, AWS API name and error code.  Never a token, a message id or a raw type
string from a message.  docs/operations.md says what each metric means.

By Prometheus' conventions: the process and platform collectors beside the broker's
own (``process_*``, ``python_info``), a ``broker_build_info`` gauge, and the throttle and
error series of the hot AWS APIs present at 0 from the first scrape, so that an alert
can tell "none" from "missing".  Long polls (ReceiveMessage, GetActivityTask) wait by
design, up to 20 s and 60 s: their time is ``broker_aws_poll_duration_seconds``, not the
call latency histogram, whose quantiles it would swamp.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker._version import __version__
from broker.observability.metric_names import (
    HOT_ERROR_CODES,
    METRIC_NAMES,
    STANDARD_METRIC_NAMES,
    hot_apis,
)
from broker.observability.stats import Histogram, Outcome, Stats

__all__ = [
    "HOT_ERROR_CODES",
    "METRIC_NAMES",
    "STANDARD_METRIC_NAMES",
    "BrokerGauges",
    "MetricsCollector",
    "hot_apis",
    "render_metrics",
]


@dataclass(frozen=True, slots=True)
class BrokerGauges:
    """Live values read at scrape time."""

    in_flight: Callable[[], Mapping[str, int]]
    free_slots: Callable[[], Mapping[str, int]]
    ready: Callable[[], bool]
    draining: Callable[[], bool]
    #: Calls/s each SendTask* API may send now (inf: no limit).
    completion_rates: Callable[[], Mapping[str, float]] = dict
    #: The hot AWS APIs (``hot_apis``): their throttle and error series start at 0.
    aws_apis: tuple[str, ...] = ()


def _histogram(
    name: str, documentation: str, label: str, series: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label] if label else None)
    for value, histogram in sorted(series.items()):
        family.add_metric([value] if label else [], histogram.cumulative(), histogram.sum)
    return family


def _counter(
    name: str, documentation: str, labels: list[str], series: Mapping[tuple[str, ...], int]
) -> CounterMetricFamily:
    # prometheus_client appends "_total" to counter family names itself.
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, n in sorted(series.items()):
        family.add_metric(list(values), n)
    return family


class MetricsCollector(Collector):
    def __init__(self, stats: Stats, gauges: BrokerGauges) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield _counter(
            "broker_messages_received",
            "Messages (and activity tasks) received.",
            ["queue"],
            {(queue,): n for queue, n in stats.received.items()},
        )
        yield _counter(
            "broker_messages",
            "Messages by how the broker settled them.",
            ["queue", "type", "outcome"],
            {(q, t, Outcome(o).value): n for (q, t, o), n in stats.by_type.items()},
        )
        yield _histogram(
            "broker_handler_duration_seconds",
            "Time in the handler, per message type.",
            "type",
            stats.handler_seconds,
        )
        yield _histogram(
            "broker_aws_call_duration_seconds",
            "Latency of AWS calls (SDK retries included), per API; long polls excluded.",
            "api",
            stats.aws_seconds,
        )
        yield _histogram(
            "broker_aws_poll_duration_seconds",
            "How long each long poll (ReceiveMessage, GetActivityTask) waited for its answer.",
            "api",
            stats.poll_seconds,
        )
        apis = self._gauges.aws_apis
        errors: dict[tuple[str, ...], int] = {
            (api, code): 0 for api in apis for code in HOT_ERROR_CODES.get(api, ())
        }
        errors.update(stats.aws_errors.items())
        yield _counter(
            "broker_aws_call_errors",
            "AWS calls that raised, by error code.",
            ["api", "code"],
            errors,
        )
        throttles: dict[tuple[str, ...], int] = {(api,): 0 for api in apis}
        throttles.update({(api,): n for api, n in stats.throttles.items()})
        yield _counter(
            "broker_throttles", "AWS calls answered with throttling.", ["api"], throttles
        )
        build = GaugeMetricFamily(
            "broker_build_info",
            "Always 1: the broker's version and the Python running it, as labels.",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield _counter(
            "broker_heartbeats",
            "SendTaskHeartbeat calls: sent, closed (the workflow gave up) or failed.",
            ["result"],
            {(result,): stats.heartbeats[result] for result in ("sent", "closed", "failed")},
        )
        yield _counter(
            "broker_decisions",
            "Answers of the decision endpoint, by the link's action and what was answered.",
            ["action", "status"],
            {key: n for key, n in stats.decisions.items()},
        )
        yield from self._gauge_families()
        yield _histogram(
            "broker_delete_batch_size",
            "Entries per DeleteMessageBatch call.",
            "",
            {"": stats.delete_batch_sizes},
        )

    def _gauge_families(self) -> Iterable[Metric]:
        gauges = self._gauges
        in_flight = GaugeMetricFamily(
            "broker_handlers_in_flight", "Handlers running now.", labels=["queue"]
        )
        for queue, n in sorted(gauges.in_flight().items()):
            in_flight.add_metric([queue], n)
        yield in_flight
        free = GaugeMetricFamily(
            "broker_free_slots", "Handler slots a queue could still take now.", labels=["queue"]
        )
        for queue, n in sorted(gauges.free_slots().items()):
            free.add_metric([queue], n)
        yield free
        yield GaugeMetricFamily(
            "broker_event_loop_lag_seconds",
            "How late the event loop woke a 0.5 s timer, the worst of the last 60 s.",
            value=self._stats.event_loop_lag_s,
        )
        allowed = GaugeMetricFamily(
            "broker_completion_rate_allowed",
            "Calls/s the adaptive rate allows each SendTask* API now (+Inf: never throttled, "
            "no ceiling).",
            labels=["api"],
        )
        for api, rate in sorted(gauges.completion_rates().items()):
            allowed.add_metric([api], rate)
        yield allowed
        yield GaugeMetricFamily("broker_ready", "1 when ready for work.", value=gauges.ready())
        yield GaugeMetricFamily("broker_draining", "1 during a drain.", value=gauges.draining())


def render_metrics(collector: MetricsCollector) -> bytes:
    """The Prometheus text exposition of one broker (its own registry: no globals), with
    the process and platform collectors (they read /proc and ``platform`` when asked)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return generate_latest(registry)
