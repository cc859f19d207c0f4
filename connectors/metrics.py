"""The system-wide monitor's state as Prometheus metrics (``tripwire monitor run
--metrics-port``): event time, what it counted, late and held, whether it has
paused customer alerts, and each series' window against its baseline."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["MonitorCollector", "serve_metrics"]


class MonitorCollector(Collector):
    """Reads :attr:`tripwire.streams.monitor.MonitorLoop.gauges` at each scrape."""

    def __init__(self, gauges: Callable[[], dict[str, Any]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        g = self.gauges()
        if not g:
            return
        yield GaugeMetricFamily("tripwire_monitor_event_time_seconds",
                                "Event time the monitor has reached (its watermark)",
                                value=g["event_time_ms"] / 1000)
        for name, doc in (("counted", "Decisions and overrides counted"),
                          ("late", "Counted after the watermark had passed them"),
                          ("skipped", "Read again after a restart, already counted"),
                          ("held_alerts", "Customer alerts asked for while paused")):
            yield CounterMetricFamily(f"tripwire_monitor_{name}", doc, value=g[name])
        yield GaugeMetricFamily("tripwire_monitor_buffered",
                                "Records waiting for the watermark", value=g["buffered"])
        yield GaugeMetricFamily("tripwire_monitor_held_partitions",
                                "Partitions paused: too far ahead in event time",
                                value=g["held_partitions"])
        yield GaugeMetricFamily("tripwire_monitor_customer_alerts_paused",
                                "1 while the monitor holds customer alerts",
                                value=1 if g["paused"] else 0)
        raised = GaugeMetricFamily("tripwire_monitor_raised", "1 while a series is raised",
                                   labels=["tripwire", "key"])
        window = GaugeMetricFamily("tripwire_monitor_window",
                                   "Events in the series' current window",
                                   labels=["tripwire", "key"])
        baseline = GaugeMetricFamily("tripwire_monitor_baseline",
                                     "What is normal for the series' current window",
                                     labels=["tripwire", "key"])
        for (tw, key), (observed, base) in sorted(g["series"].items()):
            window.add_metric([tw, key], observed)
            baseline.add_metric([tw, key], base)
            raised.add_metric([tw, key], 1 if (tw, key) in g["raised"] else 0)
        yield from (raised, window, baseline)
        signals = CounterMetricFamily("tripwire_monitor_signals", "Transitions, by tripwire "
                                      "and state", labels=["tripwire", "state"])
        for name, n in sorted(g["signals"].items()):
            tw, _, state = name.partition(":")
            signals.add_metric([tw, state], n)
        yield signals


def serve_metrics(port: int, gauges: Callable[[], dict[str, Any]],
                  addr: str = "0.0.0.0") -> int:
    """Serve the monitor's metrics on ``port`` (0: any free one); the port."""
    registry = CollectorRegistry()
    registry.register(MonitorCollector(gauges))
    server, _ = start_http_server(port, addr, registry)
    return int(server.server_address[1])
