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

import gc
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from tripwire.connectors.kafka import answer_producer, consume_available
from tripwire.connectors.kafka import consumer as make_consumer
from tripwire.connectors.kafka import producer as make_producer
from tripwire.schemas.records import TP, InRecord
from tripwire.state.manager import StateManager
from tripwire.streams.commits import Commits
from tripwire.streams.processor import Processor
from tripwire.streams.restore import Partitions, RestoreStopped
from tripwire.streams.tally import Tally
from tripwire.streams.topics import ANSWERS, topic
from tripwire.streams.txn import HOPS, TXN_RETRY, TXN_TIMEOUT_MS, _Chunk, _Committer

__all__ = ["BatchLoop", "LoopStats", "Processor", "tune_gc"]

logger = logging.getLogger(__name__)


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


def _to_record(msg: Message) -> InRecord:
    _, ts = msg.timestamp()
    return InRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(),
                    msg.value(), ts)


class BatchLoop(Partitions, Commits):
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
        session_timeout_ms: int | None = None,
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
        self.tally = Tally()  # what its outputs say, for the metrics endpoint
        self.lag: dict[TP, int] = {}  # per assigned input partition, every LAG_EVERY_S
        self._lag_at = 0.0
        self.commit_interval = commit_interval_ms / 1000
        self.eager_keys = frozenset(processor.eager) if eager else frozenset()
        # the committer holds back no more than this before the loop waits for it
        self.max_chunk_events = max(batch_size * 20, 10_000)
        self._chunk = _Chunk()
        self._inflight: Future[bool] | None = None
        self._committer = _Committer(f"{processor.name}-commit")
        self._inflight_since = 0.0
        self._inflight_chunk: _Chunk | None = None
        self._eager_error: KafkaError | None = None
        self._eager_sent = 0  # eager outputs handed to the producer (the loop's thread)
        self._eager_done = 0  # ... and acknowledged or failed (delivery reports)
        self._eager_lock = threading.Lock()  # reports are served by both threads
        self.state = StateManager(processor.name, list(processor.stores), namespace, state_dir)
        # a loop running several stages: each topic's stores are its stage's, and their
        # changelogs carry its stage's name (the same as when the stage runs alone)
        self.state.stores_by_topic = processor.stores_by_topic
        self.state.owners = dict(processor.owners)
        self.state.defer_decoded = True  # decoded state is written back once per commit
        self._topics: dict[str, str] = {}
        # changelog (topic, partition) -> (store, input tp), for delivery reports
        self._changelog_keys: dict[tuple[str | None, int | None],
                                   tuple[str, tuple[str, int]]] = {}
        # range assignment: docs/performance.md, "The loop's client settings"
        # session_timeout_ms: how long a worker that died keeps its partitions before
        # the group moves them (None: the client's 45 s); heartbeats 3 to a session
        session = {} if session_timeout_ms is None else {
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": min(3000, session_timeout_ms // 3)}
        self.consumer = make_consumer(bootstrap, group_id,
                                      **{"partition.assignment.strategy": "range",
                                         "enable.partition.eof": True, **session})
        # input partitions at the end of their log (no lag): a processor that orders
        # its inputs across partitions marks them idle (tripwire.streams.align)
        self.at_end: set[TP] = set()
        self._watched_topics: frozenset[str] = frozenset()
        # records linger until the commit; a transaction a dead worker left open is
        # aborted after TXN_TIMEOUT_MS (docs/performance.md, "The loop's client settings")
        self._txn_conf = {
            "transactional.id": transactional_id or f"{group_id}-{uuid.uuid4().hex[:12]}",
            "linger.ms": max(2, min(commit_interval_ms, 1000)),
            "transaction.timeout.ms": TXN_TIMEOUT_MS, **TXN_RETRY}
        self.producer = make_producer(bootstrap, **self._txn_conf)
        # answers and packed internal records go out through different producers, the
        # internal ones idempotent and never timing out (docs/performance.md, "The
        # loop's client settings")
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

    def _bind_routes(self) -> None:
        """Tell a processor that routes records itself how many partitions its
        output topics have (its ``routes``: topic keys)."""
        if self.processor.routes:
            self.processor.partitions = self._partition_counts(self.processor.routes, "output")

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
        watches = self.processor.watches
        if not watches:
            return
        watched = {self._topic(key): n
                   for key, n in self._partition_counts(watches, "input").items()}
        self.processor.watched = watched
        self.processor.at_end = self.at_end
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
        except RestoreStopped as exc:
            logger.warning("%s; the partition's next owner restores the rest", exc)
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

    # between batches a processor's tick runs at least this often
    TICK_S = 0.1

    # how often the loop measures its consumer lag (from cached watermarks: no request)
    LAG_EVERY_S = 5.0

    def _measure_lag(self) -> None:
        self._lag_at = time.monotonic()
        try:
            assigned = self.consumer.assignment()
            lag = {}
            for tp in self.consumer.position(assigned) if assigned else ():
                high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
                if tp.offset >= 0 and high >= 0:
                    lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)
            self.lag = lag
        except KafkaException as exc:  # a metric, never a reason to stop
            logger.debug("lag not measured: %s", exc)

    def _tick(self) -> None:
        self._ticked = time.monotonic()
        if self._ticked - self._lag_at > self.LAG_EVERY_S:
            self._measure_lag()
        self._take(self.processor.tick(int(time.time() * 1000), self.state), {}, 0)

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
        offsets = self.processor.safe_offsets(offsets)
        self._take(outputs, offsets, len(records))
        self.stats.consumed += len(records)
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()

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
            except RestoreStopped as exc:  # an assignment served while closing: not ours
                logger.warning("%s; the partition's next owner restores the rest", exc)
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
