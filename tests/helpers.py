"""Small helpers the broker tests share: publishing events to their input topics
and reading what a group has committed on one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import TopicPartition

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer
from tripwire.connectors.kafka import consumer
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.models import EVENT_MODELS
from tripwire.streams.topics import topic


def send_event(prod: EventProducer, ns: str, kind: str, ev: dict[str, Any]) -> None:
    """One event of ``kind`` (``CardPayment``, ...) to its input topic, keyed as
    upstream does (the event models' topic and key field)."""
    model = EVENT_MODELS[f"tripwire.events.{kind}"]
    prod.send(topic(model.topic_key, ns), model.schema_name, ev, ev[model.key_field])


def publish(kafka: KafkaCluster, ns: str, codec: AvroCodec,
            events: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Send (kind, event) pairs to their input topics, keyed as upstream does."""
    prod = EventProducer(kafka.bootstrap, codec)
    for kind, ev in events:
        send_event(prod, ns, kind, ev)
    prod.flush()


def committed_inputs(kafka: KafkaCluster, group: str, ns: str, key: str = "card_payments",
                     partitions: int = 3) -> int:
    """How many messages of input topic ``key`` the group has committed (all partitions)."""
    c = consumer(kafka.bootstrap, group)
    try:
        got = c.committed([TopicPartition(topic(key, ns), p) for p in range(partitions)],
                          timeout=10)
        return sum(max(tp.offset, 0) for tp in got)
    finally:
        c.close()
