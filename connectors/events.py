"""Publishing typed events and reading records back, for the SDK, demo and tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from confluent_kafka import KafkaError, Message

from tripwire.connectors.kafka import (
    consume_available,
    consumer,
    offsets_by_time,
    produce_waiting,
    producer,
    watermarks,
)
from tripwire.schemas.codec import AvroCodec

__all__ = ["DeliveryError", "EventProducer", "read_to_end", "read_topic", "scan"]


class DeliveryError(RuntimeError):
    """Kafka did not acknowledge some messages."""


class EventProducer:
    """Encode records with their Avro schema and publish them with delivery confirmation."""

    def __init__(self, bootstrap: str, codec: AvroCodec, **overrides: Any) -> None:
        self.codec = codec
        self._producer = producer(bootstrap, **overrides)
        self.delivered = 0
        self.failed: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed.append(str(err))

    def send(self, topic: str, schema: str, record: dict[str, Any], key: str | bytes | None,
             partition: int | None = None) -> None:
        self.send_raw(topic, self.codec.encode(schema, record), key, partition=partition)

    def send_raw(self, topic: str, value: bytes | None, key: str | bytes | None,
                 on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
                 partition: int | None = None, wait: bool = True) -> None:
        """Publish bytes; ``on_delivery`` is called (after the counts) when Kafka answers.
        ``wait`` False: raise ``BufferError`` at once when the local queue is full,
        instead of waiting for room (a caller that must answer in time)."""
        kb = key.encode() if isinstance(key, str) else key
        callback: Callable[[KafkaError | None, Message], None] = self._on_delivery
        if on_delivery is not None:
            def both(err: KafkaError | None, msg: Message) -> None:
                self._on_delivery(err, msg)
                on_delivery(err, msg)
            callback = both
        if wait:
            produce_waiting(self._producer, topic, value, kb, partition=partition,
                            on_delivery=callback)
        elif partition is None:
            self._producer.produce(topic, value, kb, on_delivery=callback)
        else:
            self._producer.produce(topic, value, kb, partition=partition, on_delivery=callback)
        self._producer.poll(0)

    def poll(self, timeout: float = 0) -> None:
        """Serve delivery reports."""
        self._producer.poll(timeout)

    def drain(self, timeout: float = 30.0) -> int:
        """Wait for acknowledgements; the number still unacknowledged (counted as failed)."""
        left = int(self._producer.flush(timeout))
        if left:
            self.failed.append(f"{left} messages not acknowledged within {timeout}s")
        return left

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every acknowledgement; raises :class:`DeliveryError` on any failure."""
        left = self._producer.flush(timeout)
        if left or self.failed:
            raise DeliveryError(f"{left} messages unacknowledged, {len(self.failed)} failed: "
                                f"{self.failed[:3]}")
        return self.delivered


def read_topic(bootstrap: str, topics: Iterable[str], count: int, timeout: float = 30.0,
               group_id: str | None = None) -> list[Message]:
    """Read ``count`` messages (from the beginning) or until ``timeout``; committed only."""
    c = consumer(bootstrap, group_id or f"tripwire-reader-{uuid.uuid4().hex[:8]}")
    c.subscribe(list(topics))
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in consume_available(c, min(500, count - len(out)), 0.2):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out


def read_to_end(bootstrap: str, name: str, timeout: float = 60.0,
                committed: bool = True) -> list[Message]:
    """Every committed message of ``name`` (``committed`` False: aborted ones too), in
    offset order per partition, read up to the end offsets as they were when called."""
    from confluent_kafka import TopicPartition

    c = consumer(bootstrap, f"tripwire-reader-{uuid.uuid4().hex[:8]}", **(
        {} if committed else {"isolation.level": "read_uncommitted"}))
    try:
        md = c.list_topics(name, timeout=10).topics[name]
        ends = {}
        for p in md.partitions:
            low, high = watermarks(c, TopicPartition(name, p))
            if high > low:
                ends[p] = high
        c.assign([TopicPartition(name, p, 0) for p in ends])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for m in consume_available(c, 1000, 0.2):
                if m.error() is not None:
                    continue
                out.append(m)
                if (m.offset() or 0) + 1 >= ends.get(m.partition() or 0, 0):
                    ends.pop(m.partition() or 0, None)
            if ends:  # transaction markers may end a partition: compare positions
                for tp in c.position([TopicPartition(name, p) for p in list(ends)]):
                    if tp.offset >= ends[tp.partition]:
                        ends.pop(tp.partition, None)
        return out
    finally:
        c.close()


def scan(bootstrap: str, name: str, *, since_ms: int | None = None,
         until_ms: int | None = None, from_offset: int | None = None,
         to_offset: int | None = None, follow: bool = False,
         stop: Callable[[], bool] = lambda: False, starts: dict[int, int] | None = None,
         ends_out: dict[int, int] | None = None) -> Iterator[Message]:
    """The committed messages of ``name``, per partition in offset order: from
    ``since_ms`` (record time) or ``from_offset`` (each partition's; the start
    otherwise) up to the end offsets as they are when called, or on and on with
    ``follow`` (until ``stop()``); ``until_ms`` and ``to_offset`` (exclusive) end
    a partition early. ``starts``: where given partitions start instead (a previous
    scan's ``ends_out``: each partition's end offset it read up to). Raises
    KeyError for a topic that does not exist."""
    from confluent_kafka import TopicPartition

    c = consumer(bootstrap, f"tripwire-scan-{uuid.uuid4().hex[:8]}")
    try:
        md = c.list_topics(name, timeout=10).topics.get(name)
        if md is None or md.error is not None:
            raise KeyError(name)
        parts = sorted(md.partitions)
        first = {p: max(0, from_offset or 0) for p in parts}
        if since_ms is not None:
            for tp in offsets_by_time(c, [TopicPartition(name, p, since_ms) for p in parts]):
                first[tp.partition] = tp.offset  # -1: nothing that recent
        first.update(starts or {})
        ends: dict[int, int] = {}
        for p in parts:
            low, high = watermarks(c, TopicPartition(name, p))
            end = high if to_offset is None else min(high, to_offset)
            if ends_out is not None:
                ends_out[p] = end
            if first[p] < 0:
                first[p] = high
            first[p] = max(first[p], low)
            if follow or first[p] < end:
                ends[p] = end
        c.assign([TopicPartition(name, p, first[p]) for p in ends])
        open_ = set(ends)
        while open_ and not stop():
            for m in consume_available(c, 1000, 0.2):
                p = m.partition() or 0
                if m.error() is not None or p not in open_:
                    continue
                late = until_ms is not None and m.timestamp()[1] > until_ms
                past = to_offset is not None and (m.offset() or 0) >= to_offset
                if late or past:
                    if not follow or past:
                        open_.discard(p)
                    continue
                yield m
                if not follow and (m.offset() or 0) + 1 >= ends[p]:
                    open_.discard(p)
            if not follow and open_:  # transaction markers may end a partition
                for tp in c.position([TopicPartition(name, p) for p in list(open_)]):
                    if tp.offset >= ends[tp.partition]:
                        open_.discard(tp.partition)
    finally:
        c.close()


def audit_tail(bootstrap: str, name: str, codec: AvroCodec, timeout: float = 10.0) -> str:
    """The hash of the audit trail's last record ("" when empty or unsealed): what a
    new record chains to (:mod:`tripwire.schemas.audit`). The last few offsets are
    read: a transaction's commit marker takes an offset too."""
    from confluent_kafka import TopicPartition

    c = consumer(bootstrap, f"tripwire-audit-tail-{uuid.uuid4().hex[:8]}",
                 **{"enable.partition.eof": True})
    try:
        low, high = watermarks(c, TopicPartition(name, 0), timeout)
        if high <= low:
            return ""
        c.assign([TopicPartition(name, 0, max(low, high - 50))])
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(100, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return last
                    continue
                if m.value() is not None:
                    last = str(codec.decode(m.value())[1].get("hash", ""))
        return last
    finally:
        c.close()
