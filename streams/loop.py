"""The hot-path runner: a batched confluent-kafka consume → process → produce loop.

Each batch is one Kafka transaction: the outputs and the input offsets commit
together (exactly-once), or neither does and the batch is read again. The
processing itself is a pure function of the batch (see :mod:`records`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from tripwire.connectors.kafka import consumer as make_consumer
from tripwire.connectors.kafka import producer as make_producer
from tripwire.streams.records import InRecord, OutRecord
from tripwire.streams.topics import topic

__all__ = ["BatchLoop", "LoopStats", "Processor"]

logger = logging.getLogger(__name__)

Processor = Callable[[Sequence[InRecord], int], list[OutRecord]]


@dataclass
class LoopStats:
    consumed: int = 0
    batches: int = 0
    aborted: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    last_batch_at: float = 0.0


def _to_record(msg: Message) -> InRecord:
    _, ts = msg.timestamp()
    return InRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(),
                    msg.value(), ts)


class BatchLoop:
    """Run ``process`` over ``inputs`` in transactional batches until stopped."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        inputs: Sequence[str],
        process: Processor,
        *,
        namespace: str = "",
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        transactional_id: str | None = None,
    ) -> None:
        self.inputs = list(inputs)
        self.process = process
        self.namespace = namespace
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stats = LoopStats()
        self._topics: dict[str, str] = {}
        self.consumer = make_consumer(bootstrap, group_id)
        self.producer = make_producer(
            bootstrap,
            **{"transactional.id": transactional_id or f"{group_id}-{uuid.uuid4().hex[:12]}",
               "linger.ms": 2},
        )
        self.producer.init_transactions(30)
        self._assigned_at: float | None = None
        self.consumer.subscribe(self.inputs, on_assign=self._on_assign)

    def _on_assign(self, _consumer: object, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        logger.info("assigned %d partitions", len(partitions))

    def _topic(self, key: str) -> str:
        name = self._topics.get(key)
        if name is None:
            name = self._topics[key] = topic(key, self.namespace)
        return name

    def run(self, stop: threading.Event, idle_exit: float | None = None) -> LoopStats:
        """Process until ``stop`` is set, or (with ``idle_exit``) until nothing has
        arrived for that many seconds since partitions were assigned."""
        last_data = 0.0
        try:
            while not stop.is_set():
                msgs = self.consumer.consume(self.batch_size, self.poll_timeout)
                batch = [m for m in msgs if self._usable(m)]
                if not batch:
                    if idle_exit is not None and self._assigned_at is not None and \
                            time.monotonic() - max(last_data, self._assigned_at) > idle_exit:
                        break
                    continue
                last_data = time.monotonic()
                self._run_batch(batch)
        finally:
            self.close()
        return self.stats

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        if err.fatal():
            raise KafkaException(err)
        logger.warning("consumer error: %s", err)
        return False

    def _run_batch(self, msgs: list[Message]) -> None:
        records = [_to_record(m) for m in msgs]
        outputs = self.process(records, int(time.time() * 1000))
        offsets: dict[tuple[str, int], int] = {}
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
        try:
            self.producer.begin_transaction()
            for o in outputs:
                self.producer.produce(self._topic(o.topic_key), o.value, o.key)
                self.stats.produced[o.topic_key] += 1
            self.producer.send_offsets_to_transaction(
                [TopicPartition(t, p, off) for (t, p), off in offsets.items()],
                self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(30)
        except KafkaException as exc:
            err = exc.args[0]
            if not err.txn_requires_abort():
                raise
            logger.warning("transaction aborted, batch will be re-read: %s", err)
            self.producer.abort_transaction(30)
            self.stats.aborted += 1
            self._rewind(offsets)
            return
        self.stats.consumed += len(records)
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()

    def _rewind(self, offsets: dict[tuple[str, int], int]) -> None:
        committed = self.consumer.committed(
            [TopicPartition(t, p) for (t, p) in offsets], timeout=30)
        for tp in committed:
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.flush(10)
