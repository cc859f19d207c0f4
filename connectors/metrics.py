"""Prometheus metrics, read from the workers' own counters at each scrape (nothing
on the hot path but the counting):

* a pipeline worker's (``tripwire run stage --metrics-port``): events in and out
  per stage, consumer lag, decisions by type and outcome, decision latency,
  quarantine reasons, control runs, errors and durations, node timeouts, actions
  by status (:class:`PipelineCollector`);
* the customer-alert sender's (``tripwire alerts send --metrics-port``): alerts by
  outcome, attempts, failures, paused time (:class:`SenderCollector`);
* the system-wide monitor's (``tripwire monitor run --metrics-port``): event time,
  what it counted, late and held, whether it has paused customer alerts, and each
  series' window against its baseline (:class:`MonitorCollector`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["MonitorCollector", "PipelineCollector", "SenderCollector", "serve",
           "serve_metrics"]


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


class PipelineCollector(Collector):
    """A pipeline worker's loops (name → :class:`tripwire.streams.loop.BatchLoop`):
    their stats, tallies (:class:`tripwire.streams.tally.Tally`) and lag."""

    def __init__(self, loops: Callable[[], Mapping[str, Any]]) -> None:
        self.loops = loops

    def collect(self) -> Iterator[Any]:
        from tripwire.streams.tally import LATENCY_BUCKETS_S

        loops = dict(self.loops())
        c_in = CounterMetricFamily("tripwire_stage_events_in", "Records read, per stage",
                                   labels=["stage"])
        c_out = CounterMetricFamily("tripwire_stage_events_out", "Records written, per stage "
                                    "and topic", labels=["stage", "topic"])
        aborted = CounterMetricFamily("tripwire_stage_aborted", "Transactions aborted (their "
                                      "inputs read again)", labels=["stage"])
        lag = GaugeMetricFamily("tripwire_consumer_lag", "Records behind the end of each "
                                "assigned input partition", labels=["stage", "topic",
                                                                    "partition"])
        decisions = CounterMetricFamily("tripwire_decisions", "Decisions, per event type and "
                                        "outcome", labels=["event_type", "outcome"])
        repeats = CounterMetricFamily("tripwire_decision_repeats", "Repeats answered with "
                                      "their first decision", labels=["event_type"])
        latency = HistogramMetricFamily("tripwire_decision_latency_seconds", "From arrival "
                                        "at the worker to the decision", labels=["event_type"])
        quarantined = CounterMetricFamily("tripwire_quarantined", "Records refused, per stage "
                                          "and reason", labels=["stage", "reason"])
        runs = CounterMetricFamily("tripwire_control_runs", "Control executions",
                                   labels=["control"])
        errors = CounterMetricFamily("tripwire_control_errors", "Control executions that "
                                     "failed", labels=["control"])
        seconds = CounterMetricFamily("tripwire_control_seconds", "Time in each control",
                                      labels=["control"])
        remembered = CounterMetricFamily("tripwire_control_remembered", "Control executions "
                                         "answered from an earlier call with the same inputs "
                                         "(not called)", labels=["control"])
        timeouts = CounterMetricFamily("tripwire_node_timeouts", "Feature nodes that did not "
                                       "answer in time (the decision went ahead without them)")
        actions = CounterMetricFamily("tripwire_actions", "Actions ended, per action and "
                                      "status (DONE, SUPPRESSED, RATE_LIMITED, ...)",
                                      labels=["action", "status"])
        total_timeouts = 0
        for name, loop in sorted(loops.items()):
            st, t = loop.stats, loop.tally
            c_in.add_metric([name], st.consumed)
            aborted.add_metric([name], st.aborted)
            for key, n in sorted(st.produced.items()):
                c_out.add_metric([name, key], n)
            for (topic, partition), behind in sorted(dict(loop.lag).items()):
                lag.add_metric([name, topic, str(partition)], behind)
            for (event_type, outcome), n in sorted(t.decisions.items()):
                decisions.add_metric([event_type, outcome], n)
            for event_type, n in sorted(t.repeats.items()):
                repeats.add_metric([event_type], n)
            for event_type, counts in sorted(t.latency.items()):
                cumulative, buckets = 0, []
                for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), counts, strict=True):
                    cumulative += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound),
                                    cumulative))
                latency.add_metric([event_type], buckets, t.latency_sum_s[event_type])
            for (stage, reason), n in sorted(t.quarantined.items()):
                quarantined.add_metric([stage, reason], n)
            for control, n in sorted(t.control_runs.items()):
                runs.add_metric([control], n)
                errors.add_metric([control], t.control_errors[control])
                seconds.add_metric([control], t.control_seconds[control])
                remembered.add_metric([control], t.control_remembered[control])
            for (action, status), n in sorted(t.actions.items()):
                actions.add_metric([action, status], n)
            total_timeouts += t.node_timeouts
        timeouts.add_metric([], total_timeouts)
        yield from (c_in, c_out, aborted, lag, decisions, repeats, latency, quarantined, runs,
                    errors, seconds, remembered, timeouts, actions)


class SenderCollector(Collector):
    """A customer-alert sender's :class:`tripwire.connectors.alert_sender.SenderStats`
    and whether it is paused."""

    def __init__(self, stats: Callable[[], Any], paused: Callable[[], bool]) -> None:
        self.stats, self.paused = stats, paused

    def collect(self) -> Iterator[Any]:
        st = self.stats()
        ended = CounterMetricFamily("tripwire_alerts", "Customer alerts ended, per outcome "
                                    "(SENT, SUMMARISED, EXPIRED, DEAD)", labels=["outcome"])
        for outcome, n in sorted(st.outcomes.items()):
            ended.add_metric([outcome], n)
        yield ended
        yield CounterMetricFamily("tripwire_alert_attempts", "Gateway calls",
                                  value=st.attempts)
        yield CounterMetricFamily("tripwire_alert_failures", "Gateway calls that failed and "
                                  "were tried again", value=st.failures)
        yield CounterMetricFamily("tripwire_alerts_paused_seconds", "Time spent paused "
                                  "(alerts held, none lost)", value=st.paused_s)
        yield GaugeMetricFamily("tripwire_alerts_paused", "1 while customer alerts are held",
                                value=1 if self.paused() else 0)


def serve(port: int, *collectors: Collector, addr: str = "0.0.0.0") -> int:
    """Serve ``collectors`` at ``/metrics`` on ``port`` (0: any free one); the port."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    server, _ = start_http_server(port, addr, registry)
    return int(server.server_address[1])


def serve_metrics(port: int, gauges: Callable[[], dict[str, Any]],
                  addr: str = "0.0.0.0") -> int:
    """Serve the monitor's metrics on ``port`` (0: any free one); the port."""
    return serve(port, MonitorCollector(gauges), addr=addr)
