"""A sink against the real broker and a real local HTTP receiver: every record of
the topic reaches the webhook once (by key) and the file, through a receiver
that is down for a while; a sink started again in the same group sends nothing
twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import orjson

from tripwire.broker import KafkaCluster
from tripwire.connectors.control_watch import sink_control_key
from tripwire.connectors.events import EventProducer
from tripwire.connectors.sinks import Sink
from tripwire.connectors.standin_gateway import Gateway
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.topics import topic

CODEC = AvroCodec(SchemaStore.default())


def _run(sink: Sink, until: object, timeout: float = 60.0) -> None:
    stop = threading.Event()
    t = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not until():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    stop.set()
    t.join(30)


def test_a_sink_delivers_every_record_once_through_a_receiver_that_was_down(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    prod = EventProducer(kafka.bootstrap, CODEC)
    now = int(time.time() * 1000)
    for i in range(50):
        prod.send(topic("ops_alerts", topics), "tripwire.ops.OpsAlert", {
            "alert_id": f"ops-{i}", "raised_at": now, "kind": "RATE_LIMIT_TRIPPED",
            "subject": f"limit-{i % 3}", "summary": "held", "details_json": "{}"}, f"s{i}")
    prod.flush()
    gw = Gateway()
    out = tmp_path / "soc.jsonl"
    try:
        gw.down_for(4.0)
        sink = Sink(kafka.bootstrap, topic("ops_alerts", topics), CODEC, f"{topics}sink",
                    webhook=gw.url, file=out, backoff_s=(0.05, 0.5))
        _run(sink, lambda: len(gw.accepted) == 50)
        assert gw.refused > 0
        assert gw.accepted == Counter({f"ops-{i}": 1 for i in range(50)})
        lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert sorted(x["key"] for x in lines) == sorted(f"ops-{i}" for i in range(50))
        assert lines[0]["record"]["kind"] == "RATE_LIMIT_TRIPPED"
        assert sink.stats.delivered == 50 and sink.stats.by_kind == {"RATE_LIMIT_TRIPPED": 50}

        # started again in the same group: nothing is delivered twice
        again = Sink(kafka.bootstrap, topic("ops_alerts", topics), CODEC, f"{topics}sink",
                     webhook=gw.url, file=out)
        started = time.monotonic()
        _run(again, lambda: time.monotonic() - started > 4)
        assert again.stats.delivered == 0 and sum(gw.accepted.values()) == 50
    finally:
        gw.close()


def test_a_paused_sink_holds_where_it_is_until_resumed(
        kafka: KafkaCluster, topics: str) -> None:
    """A retry loop that misbehaves (a reversal hammering a bank system) is stopped by
    one command: the sink sends nothing more until resumed, and loses nothing."""
    prod = EventProducer(kafka.bootstrap, CODEC)
    group = f"{topics}executor"

    def switch(action: str) -> None:
        prod.send(topic("alert_control", topics), "tripwire.ops.AuditRecord", {
            "audit_id": f"{action}-{time.time()}", "at": int(time.time() * 1000),
            "actor": "test", "action": action, "subject": group, "reason": "test",
            "details_json": "{}"}, sink_control_key(group))
        prod.flush()

    def actions(start: int, n: int) -> None:
        for i in range(start, start + n):
            prod.send(topic("actions", topics), "tripwire.actions.ActionRequest", {
                "action_id": f"act-{i}", "decision_id": f"d{i}", "event_id": f"e{i}",
                "action": "BLOCK_CARD", "target": f"card-{i}", "reason": "r",
                "requested_at": 0, "status": "DONE", "detail": None}, f"card-{i}")
        prod.flush()

    gw = Gateway()
    try:
        actions(0, 10)
        sink = Sink(kafka.bootstrap, topic("actions", topics), CODEC, group, webhook=gw.url,
                    backoff_s=(0.05, 0.5), control_topic=topic("alert_control", topics))
        stop = threading.Event()
        t = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while len(gw.accepted) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        switch("sink.pause")
        time.sleep(1.5)  # the sink sees it within its poll
        actions(10, 10)
        time.sleep(3)
        assert len(gw.accepted) == 10, "nothing sent while paused"
        switch("sink.resume")
        while len(gw.accepted) < 20:
            assert time.monotonic() < deadline + 30
            time.sleep(0.1)
        stop.set()
        t.join(30)
        assert gw.accepted == Counter({f"act-{i}:DONE": 1 for i in range(20)})
        assert sink.control is not None and sink.control.paused_s > 1
    finally:
        gw.close()
