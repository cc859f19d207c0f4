"""How a loop's work leaves it: eager outputs at once, everything else (outputs
kept for the commit, changelog records, input offsets) in one Kafka transaction
per commit interval, run by a background thread (:class:`Commits`, a part of
:class:`~tripwire.streams.loop.BatchLoop`; the whole story is in that module's
docstring)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tripwire.connectors.kafka import produce_waiting
from tripwire.connectors.kafka import producer as make_producer
from tripwire.schemas.records import TP, OutRecord
from tripwire.state.manager import StateManager
from tripwire.streams.processor import Processor
from tripwire.streams.tally import Tally
from tripwire.streams.txn import (
    COMMIT_STUCK_S,
    OFFSETS_STUCK_S,
    TXN_CALL_S,
    _Chunk,
    _Committer,
    _resuming,
    send_outputs,
)

if TYPE_CHECKING:
    from tripwire.streams.loop import LoopStats

__all__ = ["Commits"]

logger = logging.getLogger(__name__)


class Commits:
    """The committing part of a loop: eager sends, the chunk of the open
    transaction, the committer thread, aborts and stuck commits."""

    # set by BatchLoop.__init__
    bootstrap: str
    processor: Processor
    state: StateManager
    stats: LoopStats
    consumer: Consumer
    producer: Any
    eager_keys: frozenset[str]
    eager_producers: list[Any]
    commit_interval: float
    max_chunk_events: int
    _chunk: _Chunk
    _inflight: Future[bool] | None
    _inflight_since: float
    _inflight_chunk: _Chunk | None
    _committer: _Committer
    _txn_conf: dict[str, Any]
    _eager_by_key: dict[str, Any]
    _eager_error: KafkaError | None
    _eager_sent: int
    _eager_done: int
    _eager_lock: threading.Lock
    _changelog_keys: dict[tuple[str | None, int | None], tuple[str, TP]]
    _stop_by: float | None
    _stop_event: threading.Event | None
    tally: Tally

    if TYPE_CHECKING:  # the loop's and its partitions' parts
        def _topic(self, key: str) -> str: ...
        def _recover(self, leaving: set[TP]) -> None: ...

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

    # input offsets alone (records that changed nothing and gave nothing: progress
    # marks, heartbeats) commit this seldom: a transaction costs the broker ~8 ms of
    # CPU, and reading those few records again after a crash changes nothing
    QUIET_COMMIT_S = 30.0

    def _take(self, outputs: list[OutRecord], offsets: dict[TP, int], events: int) -> None:
        """Send the eager outputs now; the rest, the state changes and the offsets go
        into the current transaction's chunk."""
        if outputs:
            self.tally.observe(outputs)
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
            self._produce_chunk(self.producer, chunk, early=True)
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
        self._inflight_chunk = chunk

    def _check_committer(self, wait: bool = False, leaving: set[TP] | None = None) -> bool:
        """Collect the background transaction's result; after an abort, go back to
        the last commit. False if it aborted."""
        f = self._inflight
        if f is None:
            return True
        started = time.monotonic()
        if not (wait or f.done()):
            if started < self._stuck_at():
                return True
            return self._unstick(leaving or set())
        try:
            # in slices, so that a stop that comes meanwhile (a rebalance callback waits
            # here too) gives up at its deadline, not at COMMIT_STUCK_S: a commit stuck
            # in librdkafka after a broker restart held a stopping worker 30 s
            while True:
                if f.done():
                    ok = f.result()  # a fatal error raises here, in the loop's thread
                    break
                now = time.monotonic()
                stop_by = self._stopping_by()
                stuck_at = self._stuck_at()
                limit = stuck_at if stop_by is None else \
                    min(stuck_at, max(stop_by, started + 0.1))  # past the stop: a glance
                if now >= limit:
                    return self._unstick(leaving or set())
                try:
                    ok = f.result(min(0.25, limit - now))
                    break
                except FutureTimeout:
                    continue
        finally:
            self.stats.wait_seconds += time.monotonic() - started
        self._inflight = self._inflight_chunk = None
        if not ok:
            if self._stopping_by() is None:
                self._recover(leaving or set())
            else:
                self._abandon()
        return ok

    def _stuck_at(self) -> float:
        """When the commit under way is given up (monotonic clock): COMMIT_STUCK_S
        after it started, or OFFSETS_STUCK_S after it began adding the input
        offsets. That call never takes seconds with the broker answering, and is
        where librdkafka hangs after a broker restart (a group coordinator it
        dropped while the broker was away is never looked up again: librdkafka
        #5511); a new producer looks it up afresh. Measured in the catch-up test:
        every broker restart left one or two loops there for the whole 30 s."""
        at = self._inflight_since + COMMIT_STUCK_S
        chunk = self._inflight_chunk
        if chunk is not None and chunk.offsets_since is not None:
            at = min(at, chunk.offsets_since + OFFSETS_STUCK_S)
        return at

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
        chunk, self._inflight, self._inflight_chunk = self._inflight_chunk, None, None
        if chunk is not None:
            chunk.given_up = True  # its thread gives up too, once librdkafka lets it go
        self._committer = _Committer(f"{self.processor.name}-commit")
        stopping = self._stopping_by() is not None
        logger.error("%s: a commit did not finish in %.0f s (the broker away, or a client "
                     "that lost its coordinator; it was %s): %s", self.processor.name,
                     time.monotonic() - self._inflight_since,
                     chunk.phase if chunk is not None else "not started",
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

        def until() -> float | None:  # a commit given up stops trying at its next return
            return 0.0 if chunk.given_up else self._stopping_by()
        try:
            chunk.phase = "waiting for the broker to acknowledge the answers sent before it"
            if not self._eager_acknowledged(chunk.eager_upto, self._wait(30)):
                if chunk.begun:  # records of the loop's are in it: they go
                    _resuming(lambda: producer.abort_transaction(self._wait(TXN_CALL_S)),
                              "aborting", until=until)
                return False
            t = time.monotonic()
            phases["acks"] += t - started
            if chunk.failed:
                raise KafkaException(KafkaError(
                    KafkaError._STATE, "producing the transaction's records failed",
                    txn_requires_abort=True))
            chunk.phase = "producing its records"
            if not chunk.begun:
                producer.begin_transaction()
                chunk.begun = True
            self._produce_chunk(producer, chunk)
            t2 = time.monotonic()
            phases["produce"] += t2 - t
            if chunk.offsets:
                chunk.phase = "adding the input offsets (send_offsets_to_transaction)"
                chunk.offsets_since = time.monotonic()
                offsets = [TopicPartition(tp, p, off) for (tp, p), off in chunk.offsets.items()]
                _resuming(lambda: producer.send_offsets_to_transaction(
                    offsets, chunk.group, self._wait(TXN_CALL_S)),
                    "sending offsets to the transaction", until=until)
            t3 = time.monotonic()
            phases["offsets"] += t3 - t2
            chunk.phase, chunk.offsets_since = "committing (commit_transaction)", None
            _resuming(lambda: producer.commit_transaction(self._wait(TXN_CALL_S)),
                      "committing", until=until)
            phases["commit"] += time.monotonic() - t3
            chunk.phase = "done"
            producer.poll(0)  # serve delivery reports: changelog offsets
        except KafkaException as exc:
            err = exc.args[0]
            if chunk.given_up:  # the loop went on without it (a new producer fenced this one)
                logger.info("a commit given up ended: %s", err)
                return False
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
                      until=until)
            return False
        finally:
            self.stats.commit_seconds += time.monotonic() - started
        self.stats.commits += 1
        self.stats.produced.update(chunk.produced)
        return True

    def _produce_chunk(self, producer: Any, chunk: _Chunk, early: bool = False) -> None:
        """Produce the chunk's outputs and changelog records not produced yet into
        its open transaction (from the loop's thread while the committer is idle,
        or from the committer's at hand-over: one at a time). ``early``: a key
        already produced into this transaction is kept back for the hand-over."""
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
