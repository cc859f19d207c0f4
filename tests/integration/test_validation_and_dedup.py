"""Validation, quarantine and idempotency through the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_topic
from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    FPS_SCHEMA,
    corrupt_dates,
    fps_messages,
    normal_card_payments,
)
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop, LoopStats
from tripwire.streams.topics import INPUTS, topic

pytestmark = pytest.mark.kafka


def _run(kafka: KafkaCluster, ns: str, path: DecisionPath, state_dir: Path | None,
         idle: float = 3.0) -> LoopStats:
    loop = BatchLoop(kafka.bootstrap, f"{ns}decision-path", [topic(k, ns) for k in INPUTS],
                     path, namespace=ns, batch_size=200, state_dir=state_dir)
    return loop.run(threading.Event(), idle_exit=idle)


def _decoded(kafka: KafkaCluster, path: DecisionPath, key: str, ns: str, n: int) -> list[dict]:
    msgs = read_topic(kafka.bootstrap, [topic(key, ns)], n, timeout=30)
    return [path.codec.decode(m.value())[1] for m in msgs]


def test_fps_feed_with_a_quarter_of_dates_corrupted(kafka: KafkaCluster, topics: str,
                                                    tmp_path: Path) -> None:
    path = DecisionPath.default()
    now = int(time.time() * 1000)
    feed = list(fps_messages(21, now - 600_000, 400, gap_ms=500))
    feed, corrupted = corrupt_dates(feed, 0.25, seed=5)
    assert 0.2 < len(corrupted) / len(feed) < 0.3
    prod = EventProducer(kafka.bootstrap, path.codec)
    for m in feed:
        prod.send(topic("fps", topics), FPS_SCHEMA, m, m["account_id"])
    prod.flush()

    stats = _run(kafka, topics, path, tmp_path / "state")
    assert stats.consumed == len(feed)

    refs = {m["transaction_reference"]: m["event_id"] for m in feed
            if m["message_type"] == "PAYMENT_REQUEST"}
    orphaned = {m["event_id"] for m in feed if m["event_id"] not in corrupted
                and m.get("original_reference") and refs.get(m["original_reference"])
                in corrupted}
    decided_ids = {d["event_id"] for d in _decoded(kafka, path, "decisions", topics,
                                                   len(feed) - len(corrupted) - len(orphaned))}
    quarantined = _decoded(kafka, path, "quarantine", topics, len(corrupted) + len(orphaned))
    by_id = {m["event_id"]: m for m in feed}
    q_ids = {}
    for q in quarantined:
        ev = path.codec.decode(q["original"])[1]
        q_ids[ev["event_id"]] = {r["code"] for r in q["reasons"]}
        assert q["source_topic"] == topic("fps", topics) and q["stage"] == "validate"
        assert ev == by_id[ev["event_id"]]  # the original bytes, untouched

    assert corrupted.isdisjoint(decided_ids)  # none reaches decisions
    assert {i for i, codes in q_ids.items() if "INVALID_DATE" in codes} == corrupted
    assert {i for i, codes in q_ids.items() if codes == {"UNKNOWN_ORIGINAL"}} == orphaned
    assert decided_ids == set(by_id) - corrupted - orphaned  # all others decided
    assert len(decided_ids) + len(q_ids) == len(feed)

    # analysts see the counts per reason
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": topics}
    res = subprocess.run([sys.executable, "-m", "tripwire", "quarantine", "--timeout", "5"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"{len(quarantined)} quarantined messages" in res.stdout
    orphan_rows = [ln for ln in res.stdout.splitlines() if "UNKNOWN_ORIGINAL" in ln]
    assert orphan_rows and orphan_rows[0].split("│")[-2].strip() == str(len(orphaned))


@pytest.mark.parametrize("wipe_local_state", [False, True])
def test_repeats_across_a_restart_get_the_same_decision(
        kafka: KafkaCluster, topics: str, tmp_path: Path, wipe_local_state: bool) -> None:
    path = DecisionPath.default()
    now = int(time.time() * 1000)
    events = list(normal_card_payments(8, now - 60_000, 30))
    prod = EventProducer(kafka.bootstrap, path.codec)
    card_topic = topic("card_payments", topics)
    for e in events:
        prod.send(card_topic, CARD_SCHEMA, e, e["card_token"])
    prod.flush()
    first = _run(kafka, topics, path, tmp_path / "state")
    assert first.consumed == 30 and first.produced["decisions"] == 30
    if wipe_local_state:
        import shutil
        shutil.rmtree(tmp_path / "state")

    # the upstream resends ten events unchanged and two with a changed amount
    for e in events[:10]:
        prod.send(card_topic, CARD_SCHEMA, e, e["card_token"])
    changed = [{**e, "amount_minor": e["amount_minor"] + 100} for e in events[10:12]]
    for e in changed:
        prod.send(card_topic, CARD_SCHEMA, e, e["card_token"])
    prod.flush()
    second = _run(kafka, topics, path, tmp_path / "state")
    assert second.consumed == 12
    assert second.restored > 0 if wipe_local_state else second.restored == 0

    decisions = _decoded(kafka, path, "decisions", topics, 40)
    assert len(decisions) == 40
    originals = {d["event_id"]: d for d in decisions if not d["repeat"]}
    repeats = [d for d in decisions if d["repeat"]]
    assert len(originals) == 30 and len(repeats) == 10
    for r in repeats:
        assert {**r, "repeat": False} == originals[r["event_id"]]
    conflicts = _decoded(kafka, path, "quarantine", topics, 2)
    assert sorted(path.codec.decode(q["original"])[1]["event_id"] for q in conflicts) == \
        sorted(e["event_id"] for e in changed)
    assert all(q["reasons"][0]["code"] == "DUPLICATE_CONFLICT" for q in conflicts)
