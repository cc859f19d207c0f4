"""A worker's Prometheus endpoint, scraped while it runs: its numbers are the
topics' (decisions by outcome, latency counts, quarantine reasons, control runs
and remembered answers, actions), and lag goes to zero once it has caught up."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Worker, cards_with_an_attack, eventually, free_port
from prometheus_client.parser import text_string_to_metric_families

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import read_to_end, read_topic
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.topics import topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
CODEC = AvroCodec.from_url(None)


def _scrape(port: int) -> dict[str, list[Any]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, ())
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_running_worker_serves_its_numbers(kafka: KafkaCluster, topics: str,
                                             tmp_path: Path) -> None:
    port = free_port()
    worker = Worker(kafka, topics, tmp_path / "w", TRIPWIRE_METRICS_PORT=str(port))
    worker.start()
    try:
        events = cards_with_an_attack(kafka, topics, 5, 40, 8)
        msgs = read_topic(kafka.bootstrap, [topic("decisions", topics)], len(events),
                          timeout=120)
        decisions = [CODEC.decode(m.value())[1] for m in msgs]
        outcomes = Counter(d["outcome"] for d in decisions)
        assert outcomes["DENY"] >= 8

        def caught_up() -> dict[str, list[Any]] | None:
            try:
                got = _scrape(port)
            except httpx.HTTPError:
                return None
            done = _total(got, "tripwire_decisions_total") >= len(events) and \
                _total(got, "tripwire_quarantined_total") >= 1 and \
                _total(got, "tripwire_actions_total") >= 1 and \
                got.get("tripwire_consumer_lag") and \
                _total(got, "tripwire_consumer_lag") == 0
            return got if done else None

        got = eventually(caught_up, 60)
        assert got is not None, _scrape(port).keys()
        card = "tripwire.events.CardPayment"
        for outcome, n in outcomes.items():
            assert _total(got, "tripwire_decisions_total", event_type=card,
                          outcome=outcome) == n
        assert _total(got, "tripwire_decision_latency_seconds_count",
                      event_type=card) == len(events)
        assert _total(got, "tripwire_decision_latency_seconds_bucket", event_type=card,
                      le="+Inf") == len(events)
        assert _total(got, "tripwire_quarantined_total", reason="INVALID_ID") == 1
        assert _total(got, "tripwire_control_runs_total", control="card_outliers") == \
            len(events)
        assert _total(got, "tripwire_control_errors_total") == 0
        assert _total(got, "tripwire_control_seconds_total", control="card_outliers") > 0
        # answers remembered by their inputs (TRIPWIRE_CONTROLS_REMEMBER, on by default):
        # counted as the execution records mark them
        logs = [CODEC.decode(m.value())[1]
                for m in read_to_end(kafka.bootstrap, topic("control_executions", topics))]
        marked = Counter(e["control_id"] for r in logs for e in r["executions"]
                         if e["remembered"])
        assert marked and sum(marked.values()) == _total(got, "tripwire_control_remembered_total")
        for control, n in marked.items():
            assert _total(got, "tripwire_control_remembered_total", control=control) == n
        assert _total(got, "tripwire_stage_events_in_total") >= len(events) + 1
        assert _total(got, "tripwire_stage_events_out_total", topic="decisions") >= len(events)
        actions = [CODEC.decode(m.value())[1] for m in
                   read_topic(kafka.bootstrap, [topic("actions", topics)], 1, timeout=30)]
        assert actions and _total(got, "tripwire_actions_total", action="BLOCK_CARD",
                                  status="DONE") >= 1
        assert _total(got, "tripwire_node_timeouts_total") == 0
    finally:
        code, _ = worker.stop(within_s=30)
    assert code == 0, worker.stderr()
