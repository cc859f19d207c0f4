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
