"""The hot-path runner: a batched confluent-kafka consume → process → produce loop.

The processing is a pure function of the batch and the state (see
:class:`Processor`). What it gives goes out in one of two ways:

* **eager** outputs (the topic keys a processor lists in ``eager``: decisions,
  control executions, quarantine records — what people and downstream systems
  act on — and the live pipeline's messages between its stages) are sent at
  once, so an event's answer never waits for a commit;
* everything else — audit records, internal records of a processor that keeps
  them for its commit — together with the state changes (changelog records) and
  the input offsets, goes into one Kafka transaction every
  ``commit_interval_ms``, committed by a background thread while the loop goes
  on deciding. The work of a commit is spread over its batches: after each
  batch the loop writes changed state back, applies it to the stores and
  produces its records into the open transaction, so a commit is left with
  sending the offsets and committing (done all at once, it stopped the loop for
  40-60 ms every second at 1,500 events/s, most of the p99).

State therefore moves exactly once with the input offsets. Eager outputs are
delivered at least once: after a crash or an aborted transaction the inputs
since the last commit are read again against the state of that commit, and the
same outputs come again (a decision keeps its ``decision_id``; consumers keep
the first). A transaction commits only after every eager output of its inputs
was acknowledged, so none is lost. ``eager=False`` puts every output inside the
transaction (exactly once, visible to read-committed consumers only after the
commit).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from tripwire.connectors.kafka import answer_producer, consume_available, produce_waiting
from tripwire.connectors.kafka import consumer as make_consumer
from tripwire.connectors.kafka import producer as make_producer
from tripwire.streams.records import TP, InRecord, OutRecord
from tripwire.streams.state import StateManager
from tripwire.streams.topics import ANSWERS, TopicSpec, create_topics, topic

__all__ = ["HOPS", "BatchLoop", "LoopStats", "Processor", "send_outputs", "tune_gc"]

logger = logging.getLogger(__name__)


class Processor(Protocol):
    """A pure stage: outputs (and state writes) from a batch, the time and the state.

    ``eager`` (optional): topic keys whose records are sent at once, outside the
    state transaction (see the module docstring).

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


# A transaction begun just after the previous commit meets CONCURRENT_TRANSACTIONS
# until the broker has written the commit markers; librdkafka then waits its retry
# backoff, 100 ms by default. Measured (bench txn): back-to-back transactions
# p50 103 ms with the default, 10.5 ms with 5 ms.
TXN_RETRY = {"retry.backoff.ms": 5, "retry.backoff.max.ms": 100}
TXN_TIMEOUT_MS = 20_000  # see BatchLoop.__init__
# one try of a blocking transactional call: _resuming tries again (and logs why),
# and a loop told to stop notices within this long
TXN_CALL_S = 5.0
# a transaction not finished after this long is given up (BatchLoop._unstick): the
# coordinator aborts one older than TXN_TIMEOUT_MS anyway; a
# broker away for longer holds the loop in init_transactions until it is back
COMMIT_STUCK_S = 30.0
HOPS = {"linger.ms": 5, "message.timeout.ms": 0}  # internal records' producer: BatchLoop.__init__


def _resuming(call: Callable[[], object], what: str, patience: float = 600.0,
              until: Callable[[], float | None] = lambda: None) -> None:
    """Call a blocking transactional operation; when it times out with a retriable
    error (librdkafka: "retry call to resume", e.g. a broker busy or away), call
    it again rather than fail the worker — for up to ``patience`` seconds, or
    until the monotonic time ``until()`` gives (looked at before each try: a loop
    that is stopping gives up at its deadline). Errors that need an abort, fatal
    ones and others are raised."""
    deadline = time.monotonic() + patience
    while True:
        try:
            call()
            return
        except KafkaException as exc:
            err = exc.args[0]
            now = time.monotonic()
            stop_by = until()
            if not err.retriable() or err.txn_requires_abort() or err.fatal() or \
                    now > deadline or (stop_by is not None and now > stop_by):
                raise
            logger.warning("%s: %s; trying again", what, err)


def tune_gc() -> None:
    """For a worker process, once set up: the objects alive now (modules, compiled
    controls, schemas) move out of the collector's way, and automatic collection
    stops. A stream worker's garbage goes with reference counting: on the
    decision path at 2,000 events/s the young collections found no cycle at all
    (0 objects in 18 collections), yet each walked every container made since the
    one before — mostly decoded feature states, cached — for 25-107 ms with the
    loop's thread stopped: a pause every few seconds. Loops collect when idle
    instead (:attr:`BatchLoop.IDLE_COLLECT_S`)."""
    gc.freeze()
    gc.disable()


@dataclass
class LoopStats:
    consumed: int = 0
    batches: int = 0
    aborted: int = 0
    restored: int = 0
    produced: Counter[str] = field(default_factory=Counter)
    last_batch_at: float = 0.0
    commits: int = 0
    eager: int = 0  # outputs sent at once, outside the transaction
    process_seconds: float = 0.0  # wall time in the processor
    process_cpu_seconds: float = 0.0  # CPU time of the loop's thread in the processor
    thread_cpu_seconds: float = 0.0  # CPU time of the loop's thread in all, when it ended
    commit_seconds: float = 0.0  # wall time producing and committing transactions (background)
    wait_seconds: float = 0.0  # wall time the loop waited for the committer
    # where commit time goes: waiting for eager acknowledgements, begin + produce,
    # sending the offsets, commit_transaction (wall seconds, summed)
    commit_phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("acks", "produce", "offsets", "commit"), 0.0))
    gc_collected: int = 0  # objects in cycles freed by idle collections
    changelog_records: int = 0  # state changes written to changelogs
    changelog_bytes: int = 0


Pending = tuple[str, TP, bytes, "bytes | None"]


@dataclass
class _Chunk:
    """What one transaction carries: the work since the previous one.

    ``outputs`` and ``changes`` are what is not produced yet: the loop produces
    them into the open transaction after each batch while the committer is idle
    (``begun``), and the committer produces the rest at hand-over."""

    started: float = field(default_factory=time.monotonic)
    events: int = 0
    outputs: list[OutRecord] = field(default_factory=list)
    # changelog records, the last write of each (store, partition, key) since the
    # last time they were produced
    changes: dict[tuple[str, TP, bytes], bytes | None] = field(default_factory=dict)
    # keys produced early into the transaction: written again, they wait for the
    # hand-over (a key written every batch goes twice per commit, not every batch)
    sent: set[tuple[str, TP, bytes]] = field(default_factory=set)
    offsets: dict[TP, int] = field(default_factory=dict)
    group: Any = None  # the consumer group metadata at hand-over
    eager_upto: int = 0  # eager outputs sent before the hand-over: acknowledged first
    begun: bool = False  # its transaction is open, some of its records in it
    failed: bool = False  # producing early failed: the committer aborts it
    produced: Counter[str] = field(default_factory=Counter)  # outputs produced, by topic key

    def __bool__(self) -> bool:
        return bool(self.begun or self.outputs or self.changes or self.offsets)

    def busy(self) -> bool:
        """Anything but input offsets: records to produce, state changed, or its
        transaction open."""
        return bool(self.begun or self.outputs or self.changes)

    def add(self, outputs: list[OutRecord], pending: list[Pending],
            offsets: dict[TP, int], events: int) -> None:
        self.outputs += outputs
        changes = self.changes
        for store, tp, key, value in pending:
            changes[(store, tp, key)] = value
        self.offsets.update(offsets)
        self.events += events


class _Committer:
    """One daemon thread running the loop's transactions, one at a time. Not a
    ThreadPoolExecutor: its threads are joined at interpreter exit, and a
    librdkafka call that never returns (see BatchLoop._unstick) then kept a
    stopped worker alive for ever."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[bool], Callable[[_Chunk], bool],
                                             _Chunk] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[_Chunk], bool], chunk: _Chunk) -> Future[bool]:
        f: Future[bool] = Future()
        self._queue.put((f, fn, chunk))
        return f

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            f, fn, chunk = job
            if f.set_running_or_notify_cancel():
                try:
                    f.set_result(fn(chunk))
                except BaseException as exc:
                    f.set_exception(exc)

    def shutdown(self, timeout: float) -> None:
        """Finish the transaction under way, waiting ``timeout`` seconds at most."""
        self._queue.put(None)
        self._thread.join(timeout)


def send_outputs(producer: Any, outputs: Sequence[OutRecord], topic_of: Callable[[str], str],
                 on_delivery: Any = None) -> None:
    """Produce ``outputs`` (``topic_of``: topic key → topic name). When librdkafka's
    local queue is full — the broker slow or away — wait for deliveries instead
    of failing: the loop is held back and nothing is dropped."""
    produce = producer.produce
    for o in outputs:
        try:
            if o.partition is None:
                produce(topic_of(o.topic_key), o.value, o.key, on_delivery=on_delivery)
            else:
                produce(topic_of(o.topic_key), o.value, o.key, partition=o.partition,
                        on_delivery=on_delivery)
        except BufferError:
            produce_waiting(producer, topic_of(o.topic_key), o.value, o.key,
                            partition=o.partition, on_delivery=on_delivery)


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
        commit_interval_ms: int = 100,
        eager: bool = True,
        peer_groups: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        # groups of other layouts of the same stages (one loop per stage, or every
        # stage in one loop) that may have consumed these inputs before this group:
        # a partition starts from the furthest offset any of them committed
        self.peer_groups = [g for g in peer_groups if g != group_id]
        self._seeded: dict[TP, int] = {}  # partitions started from a peer group's offset
        self.inputs = list(inputs)
        self.processor = processor
        self.namespace = namespace
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stats = LoopStats()
        self.commit_interval = commit_interval_ms / 1000
        self.eager_keys = frozenset(getattr(processor, "eager", ())) if eager else frozenset()
        # the committer holds back no more than this before the loop waits for it
        self.max_chunk_events = max(batch_size * 20, 10_000)
        self._chunk = _Chunk()
        self._inflight: Future[bool] | None = None
        self._committer = _Committer(f"{processor.name}-commit")
        self._inflight_since = 0.0
        self._eager_error: KafkaError | None = None
        self._eager_sent = 0  # eager outputs handed to the producer (the loop's thread)
        self._eager_done = 0  # ... and acknowledged or failed (delivery reports)
        self._eager_lock = threading.Lock()  # reports are served by both threads
        self.state = StateManager(processor.name, list(processor.stores), namespace, state_dir)
        # a loop running several stages: each topic's stores are its stage's, and their
        # changelogs carry its stage's name (the same as when the stage runs alone)
        self.state.stores_by_topic = getattr(processor, "stores_by_topic", None)
        self.state.owners = dict(getattr(processor, "owners", {}))
        self.state.defer_decoded = True  # decoded state is written back once per commit
        self._topics: dict[str, str] = {}
        # changelog (topic, partition) -> (store, input tp), for delivery reports
        self._changelog_keys: dict[tuple[str | None, int | None],
                                   tuple[str, tuple[str, int]]] = {}
        # range: each input topic's partitions spread evenly over the workers (inputs
        # differ in volume; a count-balancing assignor gave one worker two card
        # partitions and 47 % of the traffic). Revoked state is checkpointed, so
        # partitions coming back restore from there.
        self.consumer = make_consumer(bootstrap, group_id,
                                      **{"partition.assignment.strategy": "range",
                                         "enable.partition.eof": True})
        # input partitions at the end of their log (no lag): a processor that orders
        # its inputs across partitions marks them idle (tripwire.streams.align)
        self.at_end: set[TP] = set()
        self._watched_topics: frozenset[str] = frozenset()
        # The loop produces a transaction's records as it goes (see _produce_early);
        # they linger until the commit sends them, so the broker still gets a few
        # large requests per commit instead of one or more per batch (measured: 20 %
        # more broker CPU at 1,000 events/s with the 2 ms linger this had before).
        # A transaction is therefore open almost all the time, and one left open by
        # a worker that died blocks read-committed readers of its partitions (a
        # restore, eager=False answers) until the coordinator aborts it: after 20 s
        # instead of librdkafka's default 60 (Kafka Streams uses 10 s).
        self._txn_conf = {
            "transactional.id": transactional_id or f"{group_id}-{uuid.uuid4().hex[:12]}",
            "linger.ms": max(2, min(commit_interval_ms, 1000)),
            "transaction.timeout.ms": TXN_TIMEOUT_MS, **TXN_RETRY}
        self.producer = make_producer(bootstrap, **self._txn_conf)
        # answers (one record per event) and packed internal records (one per
        # partition per batch) go out through different producers. Answers: see
        # connectors.kafka.answer_producer for why it is not idempotent. Internal
        # records keep the idempotent producer's order per partition, which the
        # feature nodes' position check relies on, without serialising every
        # partition behind one request in flight; they carry few messages per
        # request, and a 5 ms linger halves what librdkafka's threads spend on
        # them (the spin of answer_producer's note) at 1,000 events/s. They never
        # time out: a request given up after message.timeout.ms while a later one
        # to the same partition got through would be a gap the position check
        # cannot see (the later position applied, the earlier one skipped when
        # sent again); a broker away for that long holds the stage instead
        self._eager_by_key: dict[str, Any] = {}
        answers = internal = None
        for key in sorted(self.eager_keys):
            if key in ANSWERS:
                answers = answers or answer_producer(bootstrap)
                self._eager_by_key[key] = answers
            else:
                internal = internal or make_producer(bootstrap, **HOPS)
                self._eager_by_key[key] = internal
        self.eager_producers = [p for p in (answers, internal) if p is not None]
        self._create_changelogs()
        self._bind_routes()
        self._bind_watches()
        self.producer.init_transactions(30)
        self._assigned_at: float | None = None
        self._stop_by: float | None = None  # set when stopping: see STOP_S
        self._stop_event: threading.Event | None = None
        self._collected_at = time.monotonic()
        self._ticked = 0.0
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
                      for s in self.state.stores_of(t)
                      if (name := self.state.changelog(s, t))]
        create_topics(self.bootstrap, "", specs)

    def _bind_routes(self) -> None:
        """Tell a processor that routes records itself how many partitions its
        output topics have (its ``routes``: topic keys)."""
        routes = getattr(self.processor, "routes", ())
        if routes:
            self.processor.partitions = self._partition_counts(  # type: ignore[attr-defined]
                routes, "output")

    def _partition_counts(self, keys: Sequence[str], what: str) -> dict[str, int]:
        """Topic key → partition count, from the broker's metadata; a topic missing
        is an error that says what to run."""
        md = self.consumer.list_topics(timeout=30)
        counts = {}
        for key in keys:
            t = md.topics.get(self._topic(key))
            if t is None or t.error is not None:
                raise KafkaException(f"{what} topic {self._topic(key)} does not exist; run "
                                     "`tripwire topics create` first")
            counts[key] = len(t.partitions)
        return counts

    def _bind_watches(self) -> None:
        """Tell a processor that orders its inputs (its ``watches``: topic keys) the
        partition counts of those topics (``watched``) and which of the loop's
        input partitions are at the end of their log (``at_end``, kept up to date)."""
        watches = getattr(self.processor, "watches", ())
        if not watches:
            return
        watched = {self._topic(key): n
                   for key, n in self._partition_counts(watches, "input").items()}
        self.processor.watched = watched  # type: ignore[attr-defined]
        self.processor.at_end = self.at_end  # type: ignore[attr-defined]
        self._watched_topics = frozenset(watched)

    def _note_ends(self, records: list[InRecord]) -> None:
        """Watched input partitions whose last record here reached the high watermark
        the consumer last heard of are at the end of their log now, without waiting
        for librdkafka's end-of-partition event (it often comes a fetch later, and
        every feature node waits for those partitions meanwhile: 4.6 ms median at
        300 events/s); the others are not. A record appended since is read as
        arriving after the mark."""
        last: dict[TP, int] = {}
        watched = self._watched_topics
        for r in records:
            if r.topic in watched:
                last[(r.topic, r.partition)] = r.offset
        for (t, p), offset in last.items():
            high = self.consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)[1]
            if 0 <= high <= offset + 1:
                self.at_end.add((t, p))
            else:
                self.at_end.discard((t, p))

    def _on_assign(self, c: Consumer, partitions: list[TopicPartition]) -> None:
        self._restore([(tp.topic, tp.partition) for tp in partitions])
        starts = self._peer_starts(partitions)
        self._seeded.update(starts)
        if starts:
            c.assign([TopicPartition(tp.topic, tp.partition, starts.get(
                (tp.topic, tp.partition), OFFSET_STORED)) for tp in partitions])
        self._assigned_at = time.monotonic()
        logger.info("assigned %d partitions", len(partitions))

    def _peer_starts(self, partitions: list[TopicPartition]) -> dict[TP, int]:
        """Partitions where a peer group (another layout of these stages) committed
        further than this group: start there, not at this group's older position or
        at the beginning (which would decide every retained event again)."""
        if not self.peer_groups or not partitions:
            return {}
        asked = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        own = {(t.topic, t.partition): t.offset for t in self.consumer.committed(asked, 30)}
        starts: dict[TP, int] = {}
        for group in self.peer_groups:
            peer = make_consumer(self.bootstrap, group)  # reads offsets; never joins
            try:
                for c in peer.committed(asked, 30):
                    tp = (c.topic, c.partition)
                    if c.offset >= 0 and c.offset > max(own.get(tp, -1), starts.get(tp, -1)):
                        starts[tp] = c.offset
            finally:
                peer.close()
        for (name, p), offset in sorted(starts.items()):
            logger.info("%s[%d]: starting at offset %d, committed by another layout of "
                        "these stages (this group's: %d)", name, p, offset,
                        own.get((name, p), -1))
        return starts

    @property
    def assigned_at(self) -> float | None:
        """When partitions were last assigned (monotonic clock), None before that."""
        return self._assigned_at

    def _on_revoke(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        # everything read so far commits before the partitions go to another worker
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.at_end.difference_update(tps)
        committed = self._commit_all(leaving=set(tps))
        for tp in tps:
            self.state.close_partition(tp, clean=committed)
        self._drop(tps)

    def _on_lost(self, _c: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self.at_end.difference_update(tps)
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
                        KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                        KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                        KafkaError._TIMED_OUT)) or time.monotonic() > deadline:
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
        self._stop_event = stop
        try:
            while not stop.is_set():
                self._check_committer()
                msgs = consume_available(self.consumer, self.batch_size, self.poll_timeout)
                batch = [m for m in msgs if self._usable(m)]
                if batch:
                    last_data = time.monotonic()
                    self._run_batch(batch)
                    if last_data - self._ticked > self.TICK_S:
                        self._tick()  # timeouts, heartbeats and marks under load too
                else:
                    self._tick()
                    self._collect_if_idle(last_data)
                    if idle_exit is not None and self._assigned_at is not None and \
                            not self._chunk.busy() and self._inflight is None and \
                            time.monotonic() - max(last_data, self._assigned_at) > idle_exit:
                        break
                self._hand_over()
        finally:
            self.stats.thread_cpu_seconds = time.thread_time()
            self.close()
        return self.stats

    # after a batch, a store's buffered writes are applied once it holds this many
    # (one RocksDB write costs ~10-20 µs however few it carries)
    FLUSH_AT = 200
    # with automatic collection off (tune_gc): collect after this long without
    # input, at most once per IDLE_COLLECT_EVERY_S
    IDLE_COLLECT_S = 2.0
    IDLE_COLLECT_EVERY_S = 300.0

    def _collect_if_idle(self, last_data: float) -> None:
        """Collect cyclic garbage while nothing arrives (automatic collection off)."""
        if gc.isenabled() or self._assigned_at is None:
            return
        now = time.monotonic()
        if now - max(last_data, self._assigned_at) < self.IDLE_COLLECT_S or \
                now - self._collected_at < self.IDLE_COLLECT_EVERY_S:
            return
        self._collected_at = now
        found = gc.collect()
        self.stats.gc_collected += found
        if found:
            logger.info("idle: the garbage collector freed %d objects in cycles", found)

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            if msg.topic() in self._watched_topics:  # partitions with data: _note_ends
                self.at_end.add((msg.topic() or "", msg.partition() or 0))
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

    def _on_eager_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        with self._eager_lock:
            self._eager_done += 1
            if err is not None:  # the transaction of its inputs aborts: they are read again
                self._eager_error = err

    # between batches a processor's tick runs at least this often
    TICK_S = 0.1
    # input offsets alone (records that changed nothing and gave nothing: progress
    # marks, heartbeats) commit this seldom: a transaction costs the broker ~8 ms of
    # CPU, and reading those few records again after a crash changes nothing
    QUIET_COMMIT_S = 30.0

    def _tick(self) -> None:
        tick = getattr(self.processor, "tick", None)
        if tick is None:
            return
        self._ticked = time.monotonic()
        self._take(tick(int(time.time() * 1000), self.state), {}, 0)

    def _run_batch(self, msgs: list[Message]) -> None:
        records = [_to_record(m) for m in msgs]
        if self._watched_topics:
            self._note_ends(records)
        started, cpu = time.monotonic(), time.thread_time()
        outputs = self.processor.process(records, int(time.time() * 1000), self.state)
        # the commit's work, spread over its batches: values changed for the first
        # time since the last commit written back, and the stores' writes applied,
        # now rather than all at hand-over (40-60 ms of the loop's thread once a
        # second at 1,500 events/s: most of the p99)
        self.state.checkpoint(full=False)
        self.state.flush_writes(self.FLUSH_AT)
        self.stats.process_cpu_seconds += time.thread_time() - cpu
        self.stats.process_seconds += time.monotonic() - started
        offsets: dict[tuple[str, int], int] = {}
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
        safe = getattr(self.processor, "safe_offsets", None)
        if safe is not None:
            offsets = safe(offsets)
        self._take(outputs, offsets, len(records))
        self.stats.consumed += len(records)
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()

    def _take(self, outputs: list[OutRecord], offsets: dict[TP, int], events: int) -> None:
        """Send the eager outputs now; the rest, the state changes and the offsets go
        into the current transaction's chunk."""
        later = outputs
        if self.eager_keys and outputs:
            by_key = self._eager_by_key
            eager: dict[Any, list[OutRecord]] = {}  # producer → its records
            later = []
            for o in outputs:
                p = by_key.get(o.topic_key)
                if p is None:
                    later.append(o)
                else:
                    eager.setdefault(p, []).append(o)
            for p, sent in eager.items():
                self._send(p, sent, self._on_eager_delivery)
                p.poll(0)
                self._eager_sent += len(sent)
                self.stats.eager += len(sent)
                for o in sent:
                    self.stats.produced[o.topic_key] += 1
        pending, self.state.pending = self.state.pending, []
        if later or pending or offsets:
            self._chunk.add(later, pending, offsets, events)
            self._produce_early()

    def _produce_early(self) -> None:
        """While the committer is idle, produce the chunk's records into its
        transaction now (opening it first), so that a commit does not produce a
        second's worth of changelog records at once in the committer's thread —
        the loop's thread waited for the interpreter lock meanwhile. After an
        abortable error the committer aborts at hand-over."""
        chunk = self._chunk
        if self._inflight is not None or chunk.failed or not (chunk.outputs or chunk.changes):
            return
        try:
            if not chunk.begun:
                self.producer.begin_transaction()
                chunk.begun = True
            self._produce_chunk(chunk, early=True)
        except KafkaException as exc:
            if not exc.args[0].txn_requires_abort():
                raise
            chunk.failed = True

    def _send(self, producer: Any, outputs: list[OutRecord], on_delivery: Any = None) -> None:
        send_outputs(producer, outputs, self._topic, on_delivery)

    # -- committing ---------------------------------------------------------------
    def _hand_over(self) -> None:
        """Start the chunk's transaction in the background when the interval has
        passed and the committer is free; wait for it only when it falls behind."""
        chunk = self._chunk
        interval = self.commit_interval if chunk.busy() else self.QUIET_COMMIT_S
        if not chunk or time.monotonic() - chunk.started < interval:
            return
        if self._inflight is not None:
            if not self._inflight.done() and chunk.events < self.max_chunk_events:
                return  # keep deciding; this chunk goes with the next commit
            if not self._check_committer(wait=True):
                return  # aborted: back at the last commit, the chunk is gone
        self._submit()

    def _submit(self) -> None:
        self.state.checkpoint()  # decoded values changed again since written back
        self.state.flush_writes()
        self._take([], {}, 0)
        chunk, self._chunk = self._chunk, _Chunk()
        chunk.group = self.consumer.consumer_group_metadata() if chunk.offsets else None
        chunk.eager_upto = self._eager_sent
        self._inflight = self._committer.submit(self._transact, chunk)
        self._inflight_since = time.monotonic()

    def _check_committer(self, wait: bool = False, leaving: set[TP] | None = None) -> bool:
        """Collect the background transaction's result; after an abort, go back to
        the last commit. False if it aborted."""
        f = self._inflight
        if f is None:
            return True
        started = time.monotonic()
        stuck_at = self._inflight_since + COMMIT_STUCK_S
        if not (wait or f.done()):
            if started < stuck_at:
                return True
            return self._unstick(leaving or set())
        try:  # a fatal error raises here, in the loop's thread
            ok = f.result(self._wait(max(0.0, stuck_at - started)))
        except FutureTimeout:
            return self._unstick(leaving or set())
        finally:
            self.stats.wait_seconds += time.monotonic() - started
        self._inflight = None
        if not ok:
            if self._stopping_by() is None:
                self._recover(leaving or set())
            else:
                self._abandon()
        return ok

    def _abandon(self) -> None:
        """Stopping after a commit failed or was given up: nothing is read again
        here, the partitions' next owner does it."""
        self.stats.aborted += 1
        self._chunk = _Chunk()

    def _unstick(self, leaving: set[TP]) -> bool:
        """A commit that has not finished in COMMIT_STUCK_S (or by the stop's
        deadline) is given up: its thread and producer are left behind, a new
        producer with the same transactional id fences them (the coordinator aborts
        their transaction), and every partition goes back to its last commit.
        librdkafka's send_offsets_to_transaction can block for ever, whatever its
        timeout, once the group coordinator's broker went away and came back
        (librdkafka #5456, #5511): a worker then stopped committing after a broker
        restart and could not be stopped. Returns False (nothing committed)."""
        self._inflight = None
        self._committer = _Committer(f"{self.processor.name}-commit")
        stopping = self._stopping_by() is not None
        logger.error("a commit did not finish in %.0f s (the broker away, or a client that "
                     "lost its coordinator): %s", COMMIT_STUCK_S,
                     "abandoned - its inputs are read again by their next owner" if stopping
                     else "starting over from the last commit with a new producer")
        if stopping:
            self._abandon()
            return False
        self.producer = make_producer(self.bootstrap, **self._txn_conf)
        _resuming(lambda: self.producer.init_transactions(TXN_CALL_S), "starting transactions",
                  until=self._stopping_by)
        self._recover(leaving)
        return False

    def _commit_all(self, leaving: set[TP] | None = None) -> bool:
        """Commit everything read so far, now (rebalance, close). False if it aborted."""
        if not self._check_committer(wait=True, leaving=leaving):
            return False
        if self._chunk:
            self._submit()
            return self._check_committer(wait=True, leaving=leaving)
        return True

    def _transact(self, chunk: _Chunk) -> bool:
        """One transaction (in the committer thread): outputs, changelog records,
        input offsets. False if aborted."""
        started = time.monotonic()
        producer = self.producer
        phases = self.stats.commit_phases
        try:
            if not self._eager_acknowledged(chunk.eager_upto, self._wait(30)):
                if chunk.begun:  # records of the loop's are in it: they go
                    _resuming(lambda: producer.abort_transaction(self._wait(TXN_CALL_S)),
                              "aborting", until=self._stopping_by)
                return False
            t = time.monotonic()
            phases["acks"] += t - started
            if chunk.failed:
                raise KafkaException(KafkaError(
                    KafkaError._STATE, "producing the transaction's records failed",
                    txn_requires_abort=True))
            if not chunk.begun:
                producer.begin_transaction()
                chunk.begun = True
            self._produce_chunk(chunk)
            t2 = time.monotonic()
            phases["produce"] += t2 - t
            if chunk.offsets:
                offsets = [TopicPartition(tp, p, off) for (tp, p), off in chunk.offsets.items()]
                _resuming(lambda: producer.send_offsets_to_transaction(
                    offsets, chunk.group, self._wait(TXN_CALL_S)),
                    "sending offsets to the transaction", until=self._stopping_by)
            t3 = time.monotonic()
            phases["offsets"] += t3 - t2
            _resuming(lambda: producer.commit_transaction(self._wait(TXN_CALL_S)),
                      "committing", until=self._stopping_by)
            phases["commit"] += time.monotonic() - t3
            producer.poll(0)  # serve delivery reports: changelog offsets
        except KafkaException as exc:
            err = exc.args[0]
            if self._stopping_by() is not None and not err.fatal():
                logger.warning("stopping: the last commit could not be made in time (%s); "
                               "abandoned - its inputs are read again by their next owner",
                               err)
                with contextlib.suppress(KafkaException):
                    producer.abort_transaction(self._wait(2))
                return False
            if not err.txn_requires_abort():
                raise
            logger.warning("transaction aborted; reading again from the last commit: %s",
                           err)
            _resuming(lambda: producer.abort_transaction(self._wait(TXN_CALL_S)), "aborting",
                      until=self._stopping_by)
            return False
        finally:
            self.stats.commit_seconds += time.monotonic() - started
        self.stats.commits += 1
        self.stats.produced.update(chunk.produced)
        return True

    def _produce_chunk(self, chunk: _Chunk, early: bool = False) -> None:
        """Produce the chunk's outputs and changelog records not produced yet into
        its open transaction (from the loop's thread while the committer is idle,
        or from the committer's at hand-over: one at a time). ``early``: a key
        already produced into this transaction is kept back for the hand-over."""
        producer = self.producer
        outputs, chunk.outputs = chunk.outputs, []
        self._send(producer, outputs)
        chunk.produced.update(o.topic_key for o in outputs)
        changes, chunk.changes = chunk.changes, {}
        if early:
            sent = chunk.sent
            for k in [k for k in changes if k in sent]:
                chunk.changes[k] = changes.pop(k)
            sent.update(changes)
        last: dict[tuple[str, TP], tuple[str, TP, bytes]] = {}
        for k in changes:
            last[(k[0], k[1])] = k  # the offset of a partition's last record is enough
        last_keys = set(last.values())
        produce, changelog = producer.produce, self.state.changelog
        self.stats.changelog_records += len(changes)
        self.stats.changelog_bytes += sum(len(v) for v in changes.values() if v)
        for k, value in changes.items():
            store, tp, key = k
            name = changelog(store, tp[0])
            report = None
            if k in last_keys:
                self._changelog_keys[(name, tp[1])] = (store, tp)
                report = self._on_changelog_delivery
            try:
                produce(name, value, key, partition=tp[1], on_delivery=report)
            except BufferError:  # a large commit on a slow broker: wait, drop nothing
                produce_waiting(producer, name, value, key, partition=tp[1],
                                on_delivery=report)

    def _eager_acknowledged(self, upto: int, timeout: float = 30.0) -> bool:
        """Wait until the first ``upto`` eager outputs are acknowledged: inputs commit
        only after their answers. False if one failed or the broker did not answer in
        time (the inputs are then read again).

        Not ``flush()``: it waits for everything, including what the loop sends
        meanwhile, and sends without lingering while it waits — measured, it held
        an intake's commit for up to 2 s and multiplied librdkafka's CPU.
        """
        if not self.eager_producers:
            return True
        deadline = time.monotonic() + timeout
        *others, last = self.eager_producers
        while self._eager_done < upto and time.monotonic() < deadline:
            for p in others:
                p.poll(0)
            last.poll(0.01)
        with self._eager_lock:
            err, self._eager_error = self._eager_error, None
            left = upto - self._eager_done
        if err is not None:
            if err.fatal():  # the producer can send nothing more: fail the worker loudly
                raise KafkaException(err)
            logger.warning("an answer was not delivered (%s); reading again from the last "
                           "commit", err)
            return False
        if left > 0:
            logger.warning("%d answers not acknowledged by the broker within %.0f s; reading "
                           "again from the last commit", left, timeout)
            return False
        return True

    def _recover(self, leaving: set[TP]) -> None:
        """After an aborted transaction: every partition goes back to its last
        commit — state restored, in-memory work dropped, inputs read again. Eager
        outputs since then will be sent again, the same. Partitions ``leaving``
        (being revoked) are only dropped: their next owner restores them."""
        self.stats.aborted += 1
        self._chunk = _Chunk()
        self.state.pending = []
        tps = sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())
        for tp in tps:
            self.state.discard(tp)
        self._drop(tps)
        staying = [tp for tp in tps if tp not in leaving]
        self._restore(staying)
        self._rewind(staying)

    def _rewind(self, tps: list[tuple[str, int]]) -> None:
        if not tps:
            return
        committed = self.consumer.committed(
            [TopicPartition(t, p) for (t, p) in tps], timeout=30)
        for tp in committed:  # nothing committed yet: where the partition started
            start = tp.offset if tp.offset >= 0 else self._seeded.get((tp.topic, tp.partition), 0)
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, start))

    # once stopping, everything the loop waits for (the last commit, acknowledgements,
    # the consumer's goodbye) must be done within this many seconds, whatever the
    # broker is doing: what is not committed by then is read again by the next owner
    STOP_S = 5.0

    def _stopping_by(self) -> float | None:
        """The stop's deadline once the loop is told to stop (None before)."""
        if self._stop_by is None and self._stop_event is not None and \
                self._stop_event.is_set():
            self._stop_by = time.monotonic() + self.STOP_S
        return self._stop_by

    def _wait(self, seconds: float) -> float:
        """How long a blocking call may take: ``seconds``, or what is left of the stop."""
        stop_by = self._stopping_by()
        if stop_by is None:
            return seconds
        return max(0.1, min(seconds, stop_by - time.monotonic()))

    def close(self) -> None:
        if self._stop_by is None:  # also when run() ended on its own (idle_exit)
            self._stop_by = time.monotonic() + self.STOP_S
        try:
            self._close_consumer()  # revokes: everything commits, stores are checkpointed
        finally:
            self._committer.shutdown(self._wait(self.STOP_S))
            for p in self.eager_producers:
                p.flush(self._wait(10))
            self.producer.flush(self._wait(10))
            self.state.close()

    def _close_consumer(self) -> None:
        """Close the consumer, which commits what was read (the revoke callback); when
        the broker is away the commit gives up at the stop's deadline, and the
        consumer is closed in a thread of its own so that a group coordinator that
        never answers cannot hold the process."""
        done = threading.Event()
        failed: list[BaseException] = []

        def close() -> None:
            try:
                self.consumer.close()
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=close, name=f"{self.processor.name}-close", daemon=True).start()
        if not done.wait(self.STOP_S + 5):
            logger.warning("the consumer did not close within %.0f s (broker away?): leaving "
                           "it; whatever was not committed is read again by the next owner",
                           self.STOP_S + 5)
            return
        if failed:
            raise failed[0]
