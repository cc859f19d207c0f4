"""How answers leave the decision loop, against the real broker.

Eager (the default): decisions go out at once, before the state transaction
commits; a worker that dies before its commit is replayed from the last commit
and sends the same decisions again — nothing lost, state not counted twice.
Transactional: decisions are visible to read-committed consumers only with the
commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import committed_inputs

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_topic
from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.schemas.records import OutRecord
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.processor import Processor
from tripwire.streams.topics import INPUTS, topic

pytestmark = pytest.mark.kafka

# the group moves a dead worker's partitions after this (the client's default: 45 s)
SESSION_MS = 6_000
# A worker that decides but never reaches its first commit (10-minute interval).
_NEVER_COMMITS = textwrap.dedent(f"""
    import sys, threading
    from pathlib import Path
    from tripwire.streams.decision_path import DecisionPath
    from tripwire.streams.topics import INPUTS
    from tripwire.streams.loop import BatchLoop
    from tripwire.streams.topics import topic
    boot, ns, group, state = sys.argv[1:5]
    loop = BatchLoop(boot, group, [topic(k, ns) for k in INPUTS], DecisionPath.default(),
                     namespace=ns, batch_size=50, state_dir=Path(state),
                     commit_interval_ms=600_000, session_timeout_ms={SESSION_MS})
    loop.run(threading.Event())
""")


def _send_cards(kafka: KafkaCluster, ns: str, path: DecisionPath) -> list[dict]:
    now = int(time.time() * 1000)
    events = list(normal_card_payments(3, now - 300_000, 60))
    events += list(magstripe_contactless_attack(4, now - 200_000, 40))
    events.sort(key=lambda e: e["event_time"])
    prod = EventProducer(kafka.bootstrap, path.codec)
    for e in events:
        prod.send(topic("card_payments", ns), CARD_SCHEMA, e, e["card_token"])
    prod.flush()
    return events


def test_decisions_precede_the_commit_and_a_crash_replays_them_identically(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    path = DecisionPath.default()
    events = _send_cards(kafka, topics, path)
    group = f"{topics}decision-path"
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = subprocess.Popen([sys.executable, "-c", _NEVER_COMMITS, kafka.bootstrap, topics,
                               group, str(state)], env=env, stderr=subprocess.PIPE)
    try:
        first = read_topic(kafka.bootstrap, [topic("decisions", topics)], len(events),
                           timeout=90)
        assert len(first) == len(events), worker.stderr and worker.poll()
        assert committed_inputs(kafka, group, topics) == 0  # every decision came before any commit
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)

    # a new worker takes over: state from the changelog (nothing committed), inputs
    # again, once the group has moved the dead member's partitions: after the session
    # timeout set, not the client's 45 s
    killed = time.monotonic()
    loop = BatchLoop(kafka.bootstrap, group, [topic(k, topics) for k in INPUTS], path,
                     namespace=topics, batch_size=50, state_dir=state,
                     session_timeout_ms=SESSION_MS)
    stats = loop.run(threading.Event(), idle_exit=3.0)
    assert stats.consumed == len(events) and stats.commits >= 1
    assert time.monotonic() - killed < 40, "the dead member held its partitions too long"
    assert committed_inputs(kafka, group, topics) == len(events)

    decisions = [path.codec.decode(m.value())[1] for m in read_topic(
        kafka.bootstrap, [topic("decisions", topics)], 2 * len(events), timeout=30)]
    by_id: dict[str, list[dict]] = defaultdict(list)
    for d in decisions:
        by_id[d["decision_id"]].append(d)
    assert len(by_id) == len(events)  # the same ids: one per event, sent twice
    volatile = ("decided_at", "latency_us")
    for before, after in by_id.values():
        assert {k: v for k, v in before.items() if k not in volatile} == \
            {k: v for k, v in after.items() if k not in volatile}
    # the windows held real history (the same on both passes: counted once, not twice)
    assert max(d["features"].get("card_auths_1h") or 0 for d in decisions) >= 2
    assert any(d["rule_hits"] for d in decisions)  # the attack was seen

    # and nothing is decided a third time
    again = BatchLoop(kafka.bootstrap, group, [topic(k, topics) for k in INPUTS], path,
                      namespace=topics, batch_size=50, state_dir=state)
    assert again.run(threading.Event(), idle_exit=2.0).consumed == 0


def test_transactional_delivery_shows_decisions_only_with_the_commit(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    path = DecisionPath.default()
    events = _send_cards(kafka, topics, path)
    loop = BatchLoop(kafka.bootstrap, f"{topics}decision-path",
                     [topic(k, topics) for k in INPUTS], path, namespace=topics,
                     batch_size=50, state_dir=tmp_path / "state",
                     commit_interval_ms=600_000, eager=False)
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while loop.stats.consumed < len(events) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loop.stats.consumed == len(events) and loop.stats.commits == 0
    assert read_topic(kafka.bootstrap, [topic("decisions", topics)], 1, timeout=3) == []
    stop.set()  # closing commits what was read
    t.join(60)
    assert loop.stats.commits == 1
    assert len(read_topic(kafka.bootstrap, [topic("decisions", topics)], len(events),
                          timeout=30)) == len(events)


class _Counting(Processor):
    """Counts records per key (state), answers each with the count (eager) and
    forwards it internally (transactional). The first time it reaches ``poison``
    its internal record is larger than the topic allows: the broker refuses it
    and the transaction aborts."""

    name = "counting"
    stores = ("counts.v1",)
    eager = frozenset({"decisions"})

    def __init__(self, poison: int) -> None:
        self.poison = poison
        self.poisoned = False

    def process(self, batch, now_ms, state):  # type: ignore[no-untyped-def]
        out = []
        for r in batch:
            view = state.view(r.topic, r.partition)
            count = int(view.get("counts.v1", r.key) or b"0") + 1
            view.put("counts.v1", r.key, str(count).encode())
            answer = f"{r.key.decode()}:{count}:{r.offset}".encode()
            out.append(OutRecord("decisions", r.key, answer))
            big = r.offset == self.poison and not self.poisoned
            self.poisoned = self.poisoned or big
            # random bytes: the producer's compression must not shrink it under the limit
            out.append(OutRecord("gather", r.key, os.urandom(20_000) if big else answer))
        return out


def test_an_aborted_commit_returns_every_partition_to_the_last_commit(
        kafka: KafkaCluster, topics: str) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from tripwire.connectors.kafka import admin, producer

    gather = topic("gather", topics)
    res = ConfigResource(ConfigResource.Type.TOPIC, gather, incremental_configs=[
        ConfigEntry("max.message.bytes", "4096",
                    incremental_operation=AlterConfigOpType.SET)])
    client = admin(kafka.bootstrap)
    for f in client.incremental_alter_configs([res]).values():
        f.result(30)
    source = topic("card_payments", topics)
    p = producer(kafka.bootstrap)
    for i in range(60):
        p.produce(source, b"x", f"k{i % 4}".encode(), partition=0)
    p.flush(30)

    processor = _Counting(poison=37)
    loop = BatchLoop(kafka.bootstrap, f"{topics}counting", [source], processor,
                     namespace=topics, batch_size=10, commit_interval_ms=0)
    stats = loop.run(threading.Event(), idle_exit=3.0)
    # the refused record aborts one transaction; librdkafka may need one more abort
    # to bump the producer epoch (OUT_OF_ORDER_SEQUENCE_NUMBER) — each goes back
    assert processor.poisoned and stats.aborted >= 1
    assert committed_inputs(kafka, f"{topics}counting", topics) == 60

    answers = [m.value().decode() for m in read_topic(
        kafka.bootstrap, [topic("decisions", topics)], 200, timeout=15)]
    by_offset: dict[int, set[str]] = defaultdict(set)
    for a in answers:
        key, count, offset = a.split(":")
        by_offset[int(offset)].add(f"{key}:{count}")
    assert sorted(by_offset) == list(range(60))  # every input answered
    # a replayed input is answered again with the same count: state went back to
    # the last commit, not counted twice
    assert all(len(v) == 1 for v in by_offset.values()), by_offset
    assert by_offset[59] == {f"k3:{60 // 4}"}
    assert len(answers) > 60  # the inputs after the last commit were answered twice
    internal = read_topic(kafka.bootstrap, [gather], 60, timeout=15)
    assert len(internal) == 60  # the aborted transaction's records are not visible


class _Cyclic(Processor):
    """Makes one reference cycle per record (and keeps none of them)."""

    name = "cyclic"
    stores = ("counts.v1",)

    def process(self, batch, now_ms, state):  # type: ignore[no-untyped-def]
        for _ in batch:
            node: list[object] = []
            node.append(node)
        return []


def test_with_automatic_collection_off_an_idle_loop_frees_cycles(
        kafka: KafkaCluster, topics: str) -> None:
    """Workers turn the garbage collector off (tune_gc: reference counting frees
    what they make); a loop collects cycles itself when nothing arrives."""
    import gc

    from tripwire.connectors.kafka import producer

    source = topic("card_payments", topics)
    p = producer(kafka.bootstrap)
    for i in range(50):
        p.produce(source, b"x", f"k{i}".encode())
    p.flush(30)
    loop = BatchLoop(kafka.bootstrap, f"{topics}cyclic", [source], _Cyclic(),
                     namespace=topics, batch_size=10)
    loop.IDLE_COLLECT_S, loop.IDLE_COLLECT_EVERY_S = 0.5, 0.0
    gc.collect()
    gc.disable()
    try:
        stats = loop.run(threading.Event(), idle_exit=3.0)
    finally:
        gc.enable()
    assert stats.consumed == 50
    assert stats.gc_collected >= 50  # every cycle freed (a list each)
