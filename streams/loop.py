"""The hot-path runner: a batched confluent-kafka consume → process → produce loop.

Each batch is one Kafka transaction: the outputs, the state changes (changelog
records) and the input offsets commit together (exactly-once), or none do and
the batch is read again. The processing itself is a pure function of the batch
and the state (see :class:`Processor`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tripwire.connectors.kafka import consumer as make_consumer
from tripwire.connectors.kafka import create_topics
from tripwire.connectors.kafka import producer as make_producer
from tripwire.streams.records import InRecord, OutRecord
from tripwire.streams.state import StateManager
from tripwire.streams.topics import TopicSpec, topic

__all__ = ["BatchLoop", "LoopStats", "Processor", "tune_gc"]

logger = logging.getLogger(__name__)


class Processor(Protocol):
    """A pure stage: outputs (and state writes) from a batch, the time and the state.

    Optional hooks, used when present: ``tick(now_ms, state) -> outputs`` (called
    between batches, for timeouts), ``safe_offsets(offsets) -> offsets`` (commit
    no further than work still held in memory), ``drop(tps)`` (partitions
    revoked: forget in-memory work for them) and ``routes`` (topic keys the
    processor partitions itself: the loop sets ``processor.partitions`` to their
    partition counts before the first batch).
    """

    name: str
    stores: tuple[str, ...]

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]: ...


def tune_gc() -> None:
    """For a worker process, once set up: the objects alive now (modules, compiled
    controls, schemas) move out of the collector's way, and young collections run
    every 50,000 allocations instead of 700. A stream worker allocates many
    short-lived objects and almost no cycles; measured ~9 % less CPU per event on
    the decision path (bench/path.py)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


@dataclass
class LoopStats:
    consumed: int = 0
    batches: int = 0
    aborted: int = 0
    restored: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    last_batch_at: float = 0.0
    process_seconds: float = 0.0  # wall time in the processor
    commit_seconds: float = 0.0  # wall time producing and committing transactions


def _to_record(msg: Message) -> InRecord:
    _, ts = msg.timestamp()
    return InRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(),
                    msg.value(), ts)


class BatchLoop:
    """Run ``processor`` over ``inputs`` in transactional batches until stopped."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        inputs: Sequence[str],
        processor: Processor,
        *,
        namespace: str = "",
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        transactional_id: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.inputs = list(inputs)
        self.processor = processor
        self.namespace = namespace
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stats = LoopStats()
        self.state = StateManager(processor.name, list(processor.stores), namespace, state_dir)
        self._topics: dict[str, str] = {}
        # changelog (topic, partition) -> (store, input tp), for delivery reports
        self._changelog_keys: dict[tuple[str | None, int | None],
                                   tuple[str, tuple[str, int]]] = {}
        # range: each input topic's partitions spread evenly over the workers (inputs
        # differ in volume; a count-balancing assignor gave one worker two card
        # partitions and 47 % of the traffic). Revoked state is checkpointed, so
        # partitions coming back restore from there.
        self.consumer = make_consumer(bootstrap, group_id,
                                      **{"partition.assignment.strategy": "range"})
        self.producer = make_producer(
            bootstrap,
            **{"transactional.id": transactional_id or f"{group_id}-{uuid.uuid4().hex[:12]}",
               "linger.ms": 2},
        )
        self._create_changelogs()
        self._bind_routes()
        self.producer.init_transactions(30)
        self._assigned_at: float | None = None
        self.consumer.subscribe(self.inputs, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- state ------------------------------------------------------------------
    def _create_changelogs(self) -> None:
        if not self.state.store_names:
            return
        md = self.consumer.list_topics(timeout=30)
        specs = []
        for t in self.inputs:
            if t not in md.topics or md.topics[t].error is not None:
                raise KafkaException(f"input topic {t} does not exist; run `tripwire topics "
                                     "create` first")
            n = len(md.topics[t].partitions)
            specs += [TopicSpec(name, name, f"changelog of {s} for {t}", partitions=n,
                                cleanup="compact")
                      for s in self.state.store_names
                      if (name := self.state.changelog(s, t))]
        create_topics(self.bootstrap, "", specs)

    def _bind_routes(self) -> None:
        """Tell a processor that routes records itself how many partitions its
        output topics have (its ``routes``: topic keys)."""
        routes = getattr(self.processor, "routes", ())
        if not routes:
            return
        md = self.consumer.list_topics(timeout=30)
        counts = {}
        for key in routes:
            t = md.topics.get(self._topic(key))
            if t is None or t.error is not None:
                raise KafkaException(f"output topic {self._topic(key)} does not exist; run "
                                     "`tripwire topics create` first")
            counts[key] = len(t.partitions)
        self.processor.partitions = counts  # type: ignore[attr-defined]

    def _on_assign(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        self._restore([(tp.topic, tp.partition) for tp in partitions])
        self._assigned_at = time.monotonic()
        logger.info("assigned %d partitions", len(partitions))

    @property
    def assigned_at(self) -> float | None:
        """When partitions were last assigned (monotonic clock), None before that."""
        return self._assigned_at

    def _on_revoke(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        for tp in tps:
            self.state.close_partition(tp, clean=True)
        self._drop(tps)

    def _on_lost(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        for tp in tps:
            self.state.discard(tp)
        self._drop(tps)

    def _drop(self, tps: list[tuple[str, int]]) -> None:
        drop = getattr(self.processor, "drop", None)
        if drop is not None:
            drop(tps)

    def _restore(self, tps: list[tuple[str, int]]) -> None:
        if not self.state.store_names or not tps:
            return
        restorer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unused",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "enable.partition.eof": True,
                             "logger": logging.getLogger("tripwire.librdkafka")})
        try:
            for tp in tps:
                for store, start in self.state.open_partition(tp).items():
                    self.stats.restored += self._restore_one(restorer, store, tp, start)
        finally:
            restorer.close()

    @staticmethod
    def _end_offset(c: Consumer, ctp: TopicPartition, timeout: float = 60.0) -> int:
        """The changelog's end offset, retrying while leadership settles."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return int(c.get_watermark_offsets(ctp, timeout=10)[1])
            except KafkaException as exc:
                err = exc.args[0]
                if not (err.retriable() or err.code() in (
                        KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART)) or time.monotonic() > deadline:
                    raise
                logger.info("waiting for %s[%d]: %s", ctp.topic, ctp.partition, err)
                time.sleep(0.2)

    def _restore_one(self, c: Consumer, store: str, tp: tuple[str, int], start: int) -> int:
        ctp = TopicPartition(self.state.changelog(store, tp[0]), tp[1], start)
        high = self._end_offset(c, ctp)
        if high <= start:
            return 0
        c.assign([ctp])
        n = 0
        idle_since = time.monotonic()
        while True:
            msgs = c.consume(1000, 0.2)
            at_end = False
            for m in msgs:
                err = m.error()
                if err is None:
                    self.state.apply(store, tp, m.key() or b"", m.value(), m.offset() or 0)
                    n += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end = True
                else:
                    raise KafkaException(err)
            pos = c.position([ctp])[0].offset
            if at_end or pos >= high:
                break
            if msgs:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 10:
                logger.warning("restore of %s stalled at %d/%d (open transaction?)",
                               ctp.topic, pos, high)
                break
        c.unassign()
        logger.info("restored %d records of %s[%d]", n, ctp.topic, tp[1])
        return n

    # -- processing -------------------------------------------------------------
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
                    self._tick()
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

    def _on_changelog_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            key = self._changelog_keys.get((msg.topic(), msg.partition()))
            if key is not None:
                prev = self.state.offsets.get(key, -1)
                self.state.offsets[key] = max(prev, msg.offset() or 0)

    def _tick(self) -> None:
        tick = getattr(self.processor, "tick", None)
        if tick is None:
            return
        outputs = tick(int(time.time() * 1000), self.state)
        if outputs or self.state.pending:
            self._commit(outputs, {}, [])

    def _run_batch(self, msgs: list[Message]) -> None:
        records = [_to_record(m) for m in msgs]
        started = time.monotonic()
        outputs = self.processor.process(records, int(time.time() * 1000), self.state)
        self.stats.process_seconds += time.monotonic() - started
        offsets: dict[tuple[str, int], int] = {}
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
        touched = list(offsets)
        safe = getattr(self.processor, "safe_offsets", None)
        if safe is not None:
            offsets = safe(offsets)
        if self._commit(outputs, offsets, touched):
            self.stats.consumed += len(records)
            self.stats.batches += 1
            self.stats.last_batch_at = time.time()

    def _commit(self, outputs: list[OutRecord], offsets: dict[tuple[str, int], int],
                touched: list[tuple[str, int]]) -> bool:
        """One transaction: outputs, changelog records, input offsets. False if aborted
        (state of ``touched`` partitions is restored and the inputs are read again)."""
        pending, self.state.pending = self.state.pending, []
        self.state.flush_writes()
        started = time.monotonic()
        try:
            self.producer.begin_transaction()
            for o in outputs:
                if o.partition is None:
                    self.producer.produce(self._topic(o.topic_key), o.value, o.key)
                else:
                    self.producer.produce(self._topic(o.topic_key), o.value, o.key,
                                          partition=o.partition)
            last: dict[tuple[str, tuple[str, int]], int] = {}
            for i, (store, tp, _, _) in enumerate(pending):
                last[(store, tp)] = i  # the offset of a partition's last record is enough
            produce, changelog = self.producer.produce, self.state.changelog
            for i, (store, tp, key, value) in enumerate(pending):
                name = changelog(store, tp[0])
                if last[(store, tp)] == i:
                    self._changelog_keys[(name, tp[1])] = (store, tp)
                    produce(name, value, key, partition=tp[1],
                            on_delivery=self._on_changelog_delivery)
                else:
                    produce(name, value, key, partition=tp[1])
            if offsets:
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, off) for (t, p), off in offsets.items()],
                    self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(30)
            self.producer.poll(0)  # serve delivery reports: changelog offsets
            self.stats.commit_seconds += time.monotonic() - started
        except KafkaException as exc:
            err = exc.args[0]
            if not err.txn_requires_abort():
                raise
            logger.warning("transaction aborted, batch will be re-read: %s", err)
            self.producer.abort_transaction(30)
            self.stats.aborted += 1
            touched = sorted(set(touched) | {tp for _, tp, _, _ in pending})
            for tp in touched:
                self.state.discard(tp)
            self._drop(touched)
            self._restore(touched)
            self._rewind(touched)
            return False
        for o in outputs:
            self.stats.produced[o.topic_key] += 1
        return True

    def _rewind(self, tps: list[tuple[str, int]]) -> None:
        if not tps:
            return
        committed = self.consumer.committed(
            [TopicPartition(t, p) for (t, p) in tps], timeout=30)
        for tp in committed:
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    def close(self) -> None:
        try:
            self.consumer.close()  # revokes: stores are checkpointed and closed
        finally:
            self.producer.flush(10)
            self.state.close()
