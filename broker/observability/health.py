"""The broker's health, as its probes and scrapes see it: liveness, readiness, metrics.

``BrokerHealth`` reads the broker it belongs to (its consumers, activity pollers and
counters) at request time and serves them on the probes' listener
(``broker.observability.probes``); it also measures the event loop's lag, which
liveness and ``/metrics`` report.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

import anyio
from anyio.abc import TaskStatus

from broker.core.errors import ConfigError
from broker.core.settings import ENV_PREFIX
from broker.observability.metric_names import hot_apis
from broker.observability.metrics import BrokerGauges, MetricsCollector, render_metrics
from broker.observability.probes import Health, HttpEndpoints, serve_http
from broker.observability.stats import LAG_PROBE_S, LAG_WINDOW_S

if TYPE_CHECKING:  # the broker holds this object: no import at run time
    from broker.service import Broker

__all__ = ["BrokerHealth"]

#: A loop this late is not serving anyone: liveness fails and the orchestrator restarts.
#: Compared with the worst lag of the last LAG_WINDOW_S, so one stall keeps liveness
#: failing long enough for the orchestrator's failure threshold to see it.
_MAX_LIVE_LAG_S: Final = 10.0


class BrokerHealth:
    """Liveness, readiness and the metrics of one ``Broker``, read when asked."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def serve(self, *, task_status: TaskStatus[int]) -> None:
        """Serve /livez /readyz /metrics on the configured address; reports the port."""
        settings = self._broker.settings
        host, port = settings.http_host, settings.http_port or 0
        endpoints = HttpEndpoints(self.liveness, self.readiness, self.metrics)
        try:
            await serve_http(endpoints, host, port, task_status=task_status)
        except OSError as exc:
            raise ConfigError(
                f"{ENV_PREFIX}HTTP_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"
            ) from exc

    async def watch_event_loop(self) -> None:
        """Measure how late the loop wakes a timer: a blocked loop shows up here.

        The wall clock, not the loop's: uvloop's loop time is cached per iteration and
        would hide a stall inside the iteration that measures it.
        """
        lag = self._broker.stats.loop_lag
        while True:
            lag.sleeping(time.monotonic())
            await anyio.sleep(LAG_PROBE_S)
            lag.woke(time.monotonic())

    def liveness(self) -> Health:
        lag = self._broker.stats.loop_lag
        worst_s = lag.worst(time.monotonic())
        checks = {
            "event_loop": f"lag {lag.last_s * 1000:.0f} ms, worst {worst_s * 1000:.0f} ms "
            f"in the last {LAG_WINDOW_S:.0f} s"
        }
        ok = worst_s < _MAX_LIVE_LAG_S
        for consumer in self._broker.consumers:
            stuck_for_s = consumer.stuck_for_s()
            if stuck_for_s is not None:
                ok = False
                checks[f"poller {consumer.queue.name}"] = f"no answer for {stuck_for_s:.0f}s"
        return Health(ok, checks)

    def readiness(self) -> Health:
        broker = self._broker
        checks: dict[str, str] = {}
        if broker.draining:
            checks["state"] = "draining"
        elif not broker.ready:
            checks["state"] = "starting"
        else:
            checks["state"] = "running"
        failing = [c.queue.name for c in broker.consumers if c.failing]
        for name in failing:
            checks[f"queue {name}"] = "ReceiveMessage failing"
        return Health(broker.ready and not failing, checks)

    def metrics(self) -> bytes:
        return render_metrics(self.collector)

    @property
    def collector(self) -> MetricsCollector:
        broker = self._broker
        return MetricsCollector(
            broker.stats,
            BrokerGauges(
                in_flight=self._in_flight_by_source,
                free_slots=lambda: {c.queue.name: c.free_slots for c in broker.consumers},
                ready=lambda: broker.ready,
                draining=lambda: broker.draining,
                completion_rates=broker.completion_rates.allowed,
                aws_apis=hot_apis(
                    queues=bool(broker.settings.queues),
                    activities=bool(broker.settings.activities),
                ),
            ),
        )

    def _in_flight_by_source(self) -> dict[str, int]:
        """Handlers running per queue and per activity (its pollers together)."""
        running = {consumer.queue.name: consumer.in_flight for consumer in self._broker.consumers}
        for poller in self._broker.activity_pollers:
            name = poller.activity.name
            running[name] = running.get(name, 0) + poller.in_flight
        return running
