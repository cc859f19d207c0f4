"""For the same events and control versions, a backtest's decisions are the live
decisions: the live loops decide events on the real broker, then `tripwire
backtest` replays the same topics; every decision is equal but for the fields that
time the run.

Two live shapes: the one-process decision path over one ordered topic, and the
live pipeline (intake → feature nodes by entity → decide) over cards, logins and
FPS on several partitions, whose account, device, IP and payee windows count
events from every topic — as the backtest's one-log replay does."""

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
from helpers import send_event

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_to_end
from tripwire.connectors.kafka import consume_available, consumer
from tripwire.connectors.simulator import CARD_SCHEMA, magstripe_contactless_attack, mixed_traffic
from tripwire.features.engine import FeatureLibrary
from tripwire.streams.backtest import comparable
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.runner import STAGES, Pipeline, stage_loop
from tripwire.streams.topics import INPUTS, create_topics, topic

pytestmark = pytest.mark.kafka


def _norm(d: dict) -> dict:  # the same JSON types on both sides, without the run's timing
    return orjson.loads(orjson.dumps(comparable(d)))


def _replay(kafka: KafkaCluster, ns: str, names: list[str], tmp_path: Path) -> list[dict]:
    """`tripwire backtest --events topic:...` as a user runs it; its decisions."""
    out = tmp_path / "replayed.jsonl"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": ns}
    done = subprocess.run([sys.executable, "-m", "tripwire", "backtest", "--events",
                           "topic:" + ",".join(names), "--out", str(out),
                           "--report", str(tmp_path / "r.html")], env=env, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


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

    replayed = _replay(kafka, ns, [topic("card_payments", ns)], tmp_path)
    assert [_norm(d) for d in replayed] == [_norm(d) for d in live]
    assert sum(d["repeat"] for d in live) == 5


def test_backtest_decisions_are_the_live_pipelines_across_topics(
        kafka: KafkaCluster, tmp_path: Path) -> None:
    ns = f"t-pipeline-identity-{uuid.uuid4().hex[:6]}."
    create_topics(kafka.bootstrap, ns, partitions=2)
    now = int(time.time() * 1000)
    traffic = mixed_traffic(23, now - 30 * 60_000, 110)  # few accounts, devices, IPs, payees
    traffic += [("CardPayment", e) for e in magstripe_contactless_attack(
        24, now - 10 * 60_000, 12, cards=4)]
    traffic += traffic[:3]  # repeats get the first answer, live and replayed
    path = DecisionPath.default()  # the shipped schemas and controls, compiled once
    codec = path.codec
    library = FeatureLibrary()
    # one event at a time, each sent when the previous one is answered, so every
    # feature node sees them in the order the replay will: the topics' timestamps
    loops = {s: stage_loop(s, kafka.bootstrap, ns, codec=codec, controls=path.controls,
                           library=library, state_dir=tmp_path / "live",
                           batch_size=100, node_timeout_ms=120_000, commit_interval_ms=0)
             for s in STAGES}
    pipeline = Pipeline.start(loops)
    answers = consumer(kafka.bootstrap, f"{ns}reader")
    answers.subscribe([topic("decisions", ns), topic("quarantine", ns)])
    prod = EventProducer(kafka.bootstrap, codec)
    live: list[dict] = []
    try:
        pipeline.wait_assigned()
        for i, (kind, ev) in enumerate(traffic):
            send_event(prod, ns, kind, ev)
            prod.flush()
            deadline = time.monotonic() + 60
            while len(live) <= i:
                assert time.monotonic() < deadline, f"event {i} not answered in 60 s"
                assert not pipeline.errors, pipeline.errors
                for m in consume_available(answers, 10, 0.2):
                    if m.error() is None:
                        assert m.topic() == topic("decisions", ns), "nothing is refused here"
                        live.append(codec.decode(m.value())[1])
    finally:
        answers.close()
        pipeline.stop()
    assert len(live) == len(traffic)

    replayed = _replay(kafka, ns, [topic(k, ns) for k in INPUTS], tmp_path)
    assert [_norm(d) for d in replayed] == [_norm(d) for d in live]
    assert sum(d["repeat"] for d in live) == 3
    # windows counted across topics: payees added at login, seen by the account's FPS
    # payments (the one-process path per input partition would never see them)
    assert any(d["event_type"].endswith("FpsMessage")
               and (d["features"].get("account_new_payees_24h") or 0) > 0
               for d in live), "no FPS decision saw its account's logins"
    assert {d["outcome"] for d in live} >= {"ALLOW", "DENY"}
