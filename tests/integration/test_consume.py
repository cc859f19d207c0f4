"""The loops take what has arrived as soon as anything has, against the real
broker: ``Consumer.consume(n, timeout)`` alone waits for ``n`` messages or the
whole timeout, which at low rates added the poll timeout to every hop."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

import tripwire.connectors.kafka as kafka_clients
from tripwire.broker import KafkaCluster
from tripwire.connectors.kafka import consumer, producer
from tripwire.streams.topics import TopicSpec, create_topics

pytestmark = pytest.mark.kafka


def test_a_lone_message_is_taken_without_waiting_for_a_full_batch(kafka: KafkaCluster) -> None:
    name = f"t-consume-{uuid.uuid4().hex[:6]}"
    create_topics(kafka.bootstrap, "", [TopicSpec(name, name, "test", partitions=1)])
    c = consumer(kafka.bootstrap, f"{name}-group")
    c.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
    p = producer(kafka.bootstrap)
    try:
        assert kafka_clients.consume_available(c, 500, 0.5) == []  # nothing: the timeout passes
        p.produce(name, b"one", b"k")
        p.flush(30)
        started = time.monotonic()
        got = kafka_clients.consume_available(c, 500, 60)  # a full batch would wait all 60 s
        assert [m.value() for m in got] == [b"one"]
        assert time.monotonic() - started < 30

        for i in range(20):  # already fetched messages come in the same call
            p.produce(name, f"m{i}".encode(), b"k")
        p.flush(30)
        seen: list[bytes | None] = []
        deadline = time.monotonic() + 30
        while len(seen) < 20 and time.monotonic() < deadline:
            seen += [m.value() for m in kafka_clients.consume_available(c, 500, 5)]
        assert seen == [f"m{i}".encode() for i in range(20)]
    finally:
        c.close()



def test_the_offsets_of_a_topic_not_yet_led_are_asked_again_until_it_is(
        kafka: KafkaCluster) -> None:
    """``watermarks`` on a topic that has no leader yet (a topic just made, a broker
    just restarted; here one not made yet) asks again until it has one, instead of
    raising; past its limit the error is raised."""
    import threading

    from confluent_kafka import KafkaException

    name = f"watermarks-{uuid.uuid4().hex[:8]}"
    c = consumer(kafka.bootstrap, f"g-{name}")
    try:
        with pytest.raises(KafkaException):  # what the client says without the helper
            c.get_watermark_offsets(TopicPartition(name, 0), timeout=5)
        with pytest.raises(KafkaException):
            kafka_clients.watermarks(c, TopicPartition(name, 0), within_s=1.0)
        maker = threading.Timer(1.5, create_topics, (kafka.bootstrap, "",
                                                     [TopicSpec(name, name, "test", 1)]))
        maker.start()
        asked = []
        assert kafka_clients.watermarks(c, TopicPartition(name, 0), within_s=30.0,
                                        meanwhile=lambda: asked.append(1)) == (0, 0)
        assert asked  # it did wait: the topic came after the first ask
        maker.join()
    finally:
        c.close()


def test_offsets_are_found_by_a_client_that_met_the_broker_shutting_down(
        kafka: KafkaCluster) -> None:
    """A client whose first metadata of a topic came from a broker shutting down
    holds that topic with no partitions, and librdkafka answers every offset query
    from it, "Unknown partition", without asking the broker again (a restore after a
    broker restart failed so after 60 s). Clients made every 50 ms around a restart
    each ask once; afterwards ``watermarks`` and ``offsets_by_time`` answer on all
    of them, where the plain call still fails on some."""
    import threading

    from confluent_kafka import Consumer, KafkaError, KafkaException

    if kafka.local is None:
        pytest.skip("restarts the broker: only one tripwire started")
    name = f"shutdown-{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap, "", [TopicSpec(name, name, "test", partitions=4)])
    p = producer(kafka.bootstrap)
    for part in range(4):
        for i in range(part + 1):
            p.produce(name, f"v{i}".encode(), b"k", partition=part)
    assert p.flush(30) == 0
    tps = [TopicPartition(name, part) for part in range(4)]
    made: list[Consumer] = []

    def ask_once(c: Consumer) -> None:
        with contextlib.suppress(KafkaException):
            c.get_watermark_offsets(tps[0], timeout=2)

    def make(n: int) -> None:
        for _ in range(n):
            c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "unused",
                          "logger": kafka_clients.client_logger})
            made.append(c)
            threading.Thread(target=ask_once, args=(c,), daemon=True).start()
            time.sleep(0.05)

    maker = threading.Thread(target=make, args=(80,))
    maker.start()
    time.sleep(0.2)
    kafka.restart(down_s=2)
    maker.join()
    time.sleep(2)  # every first ask answered or given up
    try:
        stale = []
        for c in made:
            try:
                c.get_watermark_offsets(tps[0], timeout=2)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError._UNKNOWN_PARTITION:
                    stale.append(c)
        assert stale, "no client met the broker shutting down: the case was not made"
        since = [TopicPartition(name, part, 0) for part in range(4)]
        for c in stale[1::2]:  # every other stale client asks by time first
            assert [tp.offset for tp in kafka_clients.offsets_by_time(c, since, 20.0)] == \
                [0] * 4
        for c in made:
            assert [kafka_clients.watermarks(c, tp, within_s=20.0)[1] for tp in tps] == \
                [1, 2, 3, 4]
    finally:
        for c in made:
            c.close()
