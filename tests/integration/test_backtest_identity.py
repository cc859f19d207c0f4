"""For the same events and control versions, a backtest's decisions are the live
decisions: the live loop decides events on the real broker, then `tripwire
backtest` replays the same topic; every decision is equal but for the fields that
time the run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_to_end
from tripwire.connectors.kafka import create_topics
from tripwire.connectors.simulator import CARD_SCHEMA, magstripe_contactless_attack, mixed_traffic
from tripwire.streams.backtest import comparable
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.topics import topic

pytestmark = pytest.mark.kafka


def test_backtest_decisions_are_the_live_decisions(kafka: KafkaCluster, tmp_path: Path) -> None:
    ns = f"t-identity-{uuid.uuid4().hex[:6]}."
    create_topics(kafka.bootstrap, ns, partitions=1)  # one ordered log of card payments
    now = int(time.time() * 1000)
    cards = [e for k, e in mixed_traffic(21, now - 3_600_000, 700) if k == "CardPayment"]
    cards += list(magstripe_contactless_attack(22, now - 1_800_000, 30, cards=10))
    cards.sort(key=lambda e: e["event_time"])
    cards += cards[:5]  # repeats get the first answer, live and replayed
    path = DecisionPath.default()
    prod = EventProducer(kafka.bootstrap, path.codec)
    for e in cards:
        prod.send(topic("card_payments", ns), CARD_SCHEMA, e, e["card_token"])
    prod.flush()
    loop = BatchLoop(kafka.bootstrap, f"{ns}live", [topic("card_payments", ns)], path,
                     namespace=ns, batch_size=100)
    stats = loop.run(threading.Event(), idle_exit=3.0)
    assert stats.consumed == len(cards)
    live = [path.codec.decode(m.value())[1]
            for m in read_to_end(kafka.bootstrap, topic("decisions", ns))]
    assert len(live) == len(cards) and {d["outcome"] for d in live} >= {"ALLOW", "DENY"}

    out = tmp_path / "replayed.jsonl"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": ns}
    done = subprocess.run([sys.executable, "-m", "tripwire", "backtest", "--events",
                           f"topic:{topic('card_payments', ns)}", "--out", str(out),
                           "--report", str(tmp_path / "r.html")], env=env, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    replayed = [orjson.loads(line) for line in out.read_bytes().splitlines()]

    def norm(d: dict) -> dict:  # the same JSON types on both sides
        return orjson.loads(orjson.dumps(comparable(d)))

    assert [norm(d) for d in replayed] == [norm(d) for d in live]
    assert sum(d["repeat"] for d in live) == 5
