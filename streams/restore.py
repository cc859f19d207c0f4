"""A loop's partitions: changelogs created, state restored when partitions are
assigned, committed and closed when revoked, dropped when lost, and every
partition taken back to its last commit after an abort (:class:`Partitions`, a
part of :class:`~tripwire.streams.loop.BatchLoop`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from tripwire.connectors.kafka import consumer as make_consumer
from tripwire.connectors.kafka import settled, watermarks
from tripwire.schemas.records import TP
from tripwire.state.manager import StateManager
from tripwire.streams.processor import Processor
from tripwire.streams.topics import TopicSpec, create_topics
from tripwire.streams.txn import _Chunk

if TYPE_CHECKING:
    from tripwire.streams.loop import LoopStats

__all__ = ["Partitions", "RestoreStopped"]

logger = logging.getLogger(__name__)



# a restore that reads nothing for this long fails its loop, loudly (the broker
# away for ten minutes); until then it waits: a store short of its changelog would
# give wrong answers
RESTORE_PATIENCE_S = 600.0


class RestoreStopped(Exception):
    """A restore given up because its loop is stopping."""


class Partitions:
    """The partition part of a loop: restore on assign, commit on revoke, rewind."""

    # set by BatchLoop.__init__
    bootstrap: str
    inputs: list[str]
    processor: Processor
    state: StateManager
    stats: LoopStats
    consumer: Consumer
    peer_groups: list[str]
    at_end: set[TP]
    _seeded: dict[TP, int]
    _assigned_at: float | None
    _chunk: _Chunk

    if TYPE_CHECKING:  # the committing part's
        def _commit_all(self, leaving: set[TP] | None = None) -> bool: ...
        def _stopping_by(self) -> float | None: ...

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
        own = {(t.topic, t.partition): t.offset for t in self._committed(self.consumer, asked)}
        starts: dict[TP, int] = {}
        for group in self.peer_groups:
            peer = make_consumer(self.bootstrap, group)  # reads offsets; never joins
            try:
                for c in self._committed(peer, asked):
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
        self.processor.drop(tps)

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

    def _end_offset(self, c: Consumer, ctp: TopicPartition, timeout: float = 60.0) -> int:
        """The changelog's end offset, retrying while leadership settles (a broker
        just restarted) — but not past a stop."""
        what = f"{ctp.topic}[{ctp.partition}]"
        return watermarks(c, ctp, timeout, lambda: self._check_stop(what))[1]

    def _committed(self, c: Consumer, tps: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets of ``tps``, retrying while its coordinator
        settles (a broker just restarted: NOT_COORDINATOR) — but not past a stop."""
        what = "the committed offsets"
        got: list[TopicPartition] = settled(lambda: c.committed(tps, timeout=2), what,
                                            meanwhile=lambda: self._check_stop(what))
        return got

    def _check_stop(self, what: str) -> None:
        """A loop told to stop gives up a restore: what was applied is recorded with
        its offsets, so the next owner (or this worker, started again) goes on
        from there."""
        if self._stopping_by() is not None:
            raise RestoreStopped(f"stopped while restoring {what}")

    def _restore_one(self, c: Consumer, store: str, tp: tuple[str, int], start: int) -> int:
        ctp = TopicPartition(self.state.changelog(store, tp[0]), tp[1], start)
        high = self._end_offset(c, ctp)
        if high <= start:
            return 0
        c.assign([ctp])
        n = 0
        what = f"{ctp.topic}[{ctp.partition}]"
        moved = told = time.monotonic()
        while True:
            msgs = c.consume(1000, 0.2)
            at_end = False
            for m in msgs:
                err = m.error()
                if err is None:
                    self.state.apply(store, tp, m.key() or b"", m.value(), m.offset() or 0)
                    n += 1
                    moved = told = time.monotonic()
                elif err.code() == KafkaError._PARTITION_EOF:
                    # read committed: the end, like the end offset asked for above,
                    # is the last stable offset - a dead worker's open transaction
                    # ends a restore at its first record (checked against the broker)
                    at_end = True
                elif err.fatal():
                    raise KafkaException(err)
                else:  # the broker away, a leader moving: the client fetches again
                    logger.warning("restoring %s: %s; reading on", what, err)
            pos = c.position([ctp])[0].offset
            if at_end or pos >= high:
                break
            self._check_stop(what)
            # Nothing read is never taken for the end: the state would be short of
            # what was committed (a broker away for more than seconds did that).
            now = time.monotonic()
            if now - moved > RESTORE_PATIENCE_S:
                raise KafkaException(KafkaError(
                    KafkaError._TIMED_OUT, f"restoring {what}: nothing read for "
                    f"{RESTORE_PATIENCE_S:.0f} s, at {pos} of {high}"))
            if now - told > 10:
                told = now
                logger.warning("restoring %s: nothing read for %.0f s, at %d of %d (the "
                               "broker away?); waiting", what, now - moved, pos, high)
        c.unassign()
        logger.info("restored %d records of %s[%d]", n, ctp.topic, tp[1])
        return n

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
        committed = self._committed(self.consumer, [TopicPartition(t, p) for (t, p) in tps])
        for tp in committed:  # nothing committed yet: where the partition started
            start = tp.offset if tp.offset >= 0 else self._seeded.get((tp.topic, tp.partition), 0)
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, start))
