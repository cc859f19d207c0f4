"""The loops take what has arrived as soon as anything has, against the real
broker: ``Consumer.consume(n, timeout)`` alone waits for ``n`` messages or the
whole timeout, which at low rates added the poll timeout to every hop."""

from __future__ import annotations

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
