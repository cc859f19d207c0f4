"""A full local producer queue (the broker slower than the loop) holds the loop
back; it never fails it and never drops an answer. Real broker, real librdkafka
queue: a producer whose queue holds 5 messages is given hundreds."""

from __future__ import annotations

from collections import defaultdict

import pytest
from confluent_kafka import KafkaError, Message, Producer

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import read_topic
from tripwire.connectors.kafka import produce_waiting, producer
from tripwire.schemas.records import OutRecord
from tripwire.streams.topics import TopicSpec, create_topics
from tripwire.streams.txn import send_outputs

pytestmark = pytest.mark.kafka

N = 400


def _tiny(kafka: KafkaCluster) -> Producer:
    # a queue of 5 and a 20 ms linger: almost every produce meets "queue full"
    return producer(kafka.bootstrap, **{"queue.buffering.max.messages": 5, "linger.ms": 20})


def test_the_loops_sends_wait_for_room_and_deliver_everything_in_order(
        kafka: KafkaCluster, namespace: str) -> None:
    name = f"{namespace}answers"
    probe = f"{namespace}probe"
    create_topics(kafka.bootstrap, "", [TopicSpec(t, t, "test", partitions=2)
                                        for t in (name, probe)])
    p = _tiny(kafka)
    delivered: list[tuple[int, bytes]] = []

    def report(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        delivered.append((msg.partition() or 0, msg.value() or b""))

    outputs = [OutRecord("answers", f"k{i % 7}".encode(), f"{i}".encode(),
                         None if i % 2 else i % 2)  # keyed, and explicit partitions too
               for i in range(N)]
    with pytest.raises(BufferError):  # what the loop met before: the queue really fills
        for o in outputs:
            p.produce(probe, o.value, o.key)
    p.flush(30)
    send_outputs(p, outputs, lambda key: name, report)
    assert p.flush(30) == 0
    assert len(delivered) == N
    # read back: every answer there, each key's answers in the order they were sent
    sent_by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for o in outputs:
        if o.partition is None:
            sent_by_key[o.key or b""].append(o.value or b"")
    got_by_key: dict[bytes, list[bytes]] = defaultdict(list)
    records = read_topic(kafka.bootstrap, [name], N, timeout=30)
    assert sorted(r.value() for r in records) == sorted(o.value for o in outputs)
    for r in records:
        if int(r.value()) % 2:  # the keyed ones
            got_by_key[r.key()].append(r.value())
    assert got_by_key == sent_by_key


def test_produce_waiting_holds_the_caller_back_instead_of_failing(
        kafka: KafkaCluster, namespace: str) -> None:
    name = f"{namespace}changelog"
    create_topics(kafka.bootstrap, "", [TopicSpec(name, name, "test", partitions=1,
                                                  cleanup="compact")])
    p = _tiny(kafka)
    for i in range(N):
        produce_waiting(p, name, b"v%d" % i, b"key%d" % (i % 11), partition=0)
    assert p.flush(30) == 0
    assert len(read_topic(kafka.bootstrap, [name], N, timeout=30)) == N
