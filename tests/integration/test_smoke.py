"""The smoke path through the real broker: both client libraries, one event end to end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_topic
from tripwire.connectors.kafka import admin
from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.topics import TOPICS, TopicSpec, create_topics, declared, spec, topic

pytestmark = pytest.mark.kafka


def test_declared_topics_are_created_idempotently(kafka: KafkaCluster, namespace: str) -> None:
    first = create_topics(kafka.bootstrap, namespace)
    wanted = declared()  # no entity served apart: no idle per-entity feature topics
    assert set(first.values()) == {"created"} and len(first) == len(wanted) < len(TOPICS)
    assert topic("features", namespace) in first and topic("features_ip", namespace) not in first
    assert set(create_topics(kafka.bootstrap, namespace).values()) == {"exists"}
    client = admin(kafka.bootstrap)
    md = client.list_topics(timeout=10)
    for t in wanted:
        assert len(md.topics[namespace + t.name].partitions) == t.partitions
    apart = create_topics(kafka.bootstrap, namespace, declared({"ip"}))  # TRIPWIRE_NODES_APART=ip
    assert [n for n, state in apart.items() if state == "created"] == \
        [topic("features_ip", namespace)]
    from confluent_kafka.admin import ConfigResource
    res = ConfigResource("topic", topic("controls", namespace))
    cfg = client.describe_configs([res])[res].result(10)
    assert cfg["cleanup.policy"].value == "compact" == spec("controls").cleanup


def test_card_payment_end_to_end_through_the_decision_loop(kafka: KafkaCluster,
                                                           topics: str) -> None:
    path = DecisionPath.default()
    now = int(time.time() * 1000)
    events = list(normal_card_payments(1, now - 10_000, 5)) + \
        list(magstripe_contactless_attack(2, now - 1_000, 3))
    prod = EventProducer(kafka.bootstrap, path.codec)
    for e in events:
        prod.send(topic("card_payments", topics), CARD_SCHEMA, e, e["card_token"])
    prod.send_raw(topic("card_payments", topics), b"\xc3\x01garbage", "tok-bad")
    assert prod.flush() == len(events) + 1

    loop = BatchLoop(kafka.bootstrap, f"{topics}decisions", [topic("card_payments", topics)],
                     path, namespace=topics, batch_size=4)
    stats = loop.run(threading.Event(), idle_exit=3.0)
    assert stats.consumed == len(events) + 1
    def ran(e: dict, stage: str) -> int:
        return sum(c.wanted(e) for c in path.controls.for_type("CardPayment", stage))

    attack = {e["event_id"] for e in events if e["entry_mode"] == "MAGSTRIPE_CONTACTLESS"}
    assert stats.produced == {"decisions": len(events), "quarantine": 1,
                              "control_executions": len(events)}  # one log record per event
    logs = {(r := path.codec.decode(m.value())[1])["event_id"]: r["executions"] for m in
            read_topic(kafka.bootstrap, [topic("control_executions", topics)], len(events),
                       timeout=20)}
    for e in events:  # the whole network where a detector fired, else the detectors
        want = ran(e, "DETECTOR") + (ran(e, "ACTION") + 1 if e["event_id"] in attack else 0)
        assert len(logs[e["event_id"]]) == want

    msgs = read_topic(kafka.bootstrap, [topic("decisions", topics)], len(events), timeout=20)
    got = {path.codec.decode(m.value())[1]["event_id"]: m for m in msgs}
    assert set(got) == {e["event_id"] for e in events}
    for e in events:
        m = got[e["event_id"]]
        d = path.codec.decode(m.value())[1]
        assert m.key() == e["card_token"].encode()
        want = "DENY" if e["entry_mode"] == "MAGSTRIPE_CONTACTLESS" else "ALLOW"
        assert d["outcome"] == want
    (q,) = read_topic(kafka.bootstrap, [topic("quarantine", topics)], 1, timeout=20)
    rec = path.codec.decode(q.value())[1]
    assert rec["original"] == b"\xc3\x01garbage" and rec["reasons"][0]["code"] == "TRUNCATED"

    # offsets were committed inside the transactions: a restarted loop has nothing left
    again = BatchLoop(kafka.bootstrap, f"{topics}decisions", [topic("card_payments", topics)],
                      path, namespace=topics)
    assert again.run(threading.Event(), idle_exit=3.0).consumed == 0


def test_aiokafka_produces_consumes_and_commits(kafka: KafkaCluster, namespace: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    name = f"{namespace}aiokafka"
    group = f"{namespace}g"

    async def scenario() -> tuple[list[bytes], int]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(name, f"m{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(name, bootstrap_servers=kafka.bootstrap, group_id=group,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < 10:
                batch = await consumer.getmany(timeout_ms=5000)
                got += [m.value for msgs in batch.values() for m in msgs]
            await consumer.commit()
            committed = await consumer.committed(TopicPartition(name, 0))
        finally:
            await consumer.stop()
        return got, committed

    got, committed = asyncio.run(scenario())
    assert got == [f"m{i}".encode() for i in range(10)]
    assert committed == 10
    # and librdkafka sees aiokafka's commit
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as TP
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:
        assert c.committed([TP(name, 0)], timeout=10)[0].offset == 10
    finally:
        c.close()


def test_faust_agent_round_trip(kafka: KafkaCluster, namespace: str) -> None:
    source, sink = f"{namespace}faust-in", f"{namespace}faust-out"
    create_topics(kafka.bootstrap, "", [TopicSpec(n, n, "test", partitions=2)
                                        for n in (source, sink)])
    app_id = f"{namespace}relay-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tripwire.streams.faust_app", "relay", "--bootstrap",
         kafka.bootstrap, "--source", source, "--sink", sink, "--app-id", app_id],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        prod = EventProducer(kafka.bootstrap, AvroCodec.from_url(None))
        # enough compressible messages that librdkafka sends lz4 batches, which
        # aiokafka can read only with its codec library installed
        sent = {f"v{i:04d}-".encode() + b"card payment " * 20 for i in range(500)}
        for v in sent:
            prod.send_raw(source, v, v)
        prod.flush()
        msgs = read_topic(kafka.bootstrap, [sink], len(sent), timeout=90)
        if proc.poll() is not None:
            pytest.fail(f"faust worker died:\n{proc.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
        assert {m.value() for m in msgs} == sent
        assert all(m.key() == m.value() for m in msgs)
        # faust committed what it consumed (its group is the app id)
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": app_id})
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                tps = c.committed([TopicPartition(source, p) for p in range(2)], timeout=10)
                if sum(max(tp.offset, 0) for tp in tps) == len(sent):
                    break
                time.sleep(0.5)
            assert sum(max(tp.offset, 0) for tp in tps) == len(sent)
        finally:
            c.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
