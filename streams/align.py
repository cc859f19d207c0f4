"""One order for a feature node's requests, whatever the interleaving of its sources.

A feature node partition takes requests from every input partition (a *source*),
sent by whichever intake worker owns it, interleaved as they happen to arrive.
Applied in arrival order, a key's windows would depend on that interleaving:
catching up a backlog, one source can run hours ahead of another, and every
event of the slower one would come "late". So a node applies its requests in
one order fixed by the input logs alone:

    (order time, topic, partition, offset)

where an event's *order time* is its record's timestamp, made non-decreasing
along its partition (the running maximum) and never later than the moment the
intake read it (a producer's clock ahead of ours cannot hold the others back).

A request is applied once no source can still send one that comes before it.
Each source's *progress* is the order time it has reached: every request
carries it, and the intake sends a progress marker for every source it read,
with every batch, to every node partition (most sources send a partition
nothing in a given batch). A source at the end of its log is *idle* and holds
nothing back (as Kafka Streams does for a partition known to have no lag): the
intake marks it idle when it reaches the end (and again every second, for a
node that restarted), and the next record it reads there is ordered at the
moment it is read, after everything the nodes may have applied meanwhile. So
when the pipeline keeps up, "before" is the order in which events reached the
pipeline; when it catches up a backlog, the order of their timestamps, however
far apart the workers and partitions run.

Pure: no Kafka here; :class:`~tripwire.streams.nodes.FeatureStage` feeds it.

>>> a = Aligner({"in:0", "in:1", "in:2"})
>>> a.hold("in:0", "card", 7, 1000, "x", 0)
True
>>> list(a.ready())  # in:1 and in:2 have said nothing: either could send an earlier event
[]
>>> a.advance("in:1", 1000)  # in:1 reached 1000 (ties go to the smaller source name)
>>> a.idle("in:2", 900)  # in:2 is at the end of its log
>>> list(a.ready())
[(1000, 'x')]
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from typing import Any, Protocol, TypeVar


class _Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


R = TypeVar("R", bound=_Record)

__all__ = ["IDLE", "PROGRESS", "Aligner", "log_order", "source_key"]

PROGRESS = "@p"  # a progress marker's first element: [PROGRESS, source, order time]
IDLE = "@i"  # an idle marker's: [IDLE, source, order time reached]


def source_key(source: str) -> tuple[str, int]:
    """``"topic:partition"`` → (topic, partition): how sources are ordered on a tie.

    >>> sorted(["t:10", "t:2"], key=source_key)
    ['t:2', 't:10']
    """
    topic, _, partition = source.rpartition(":")
    return topic, int(partition)


def log_order(records: Iterable[R]) -> list[R]:
    """Records of several partitions merged into the order the feature nodes apply
    them in (the backtest of topics uses it): by order time — the record timestamp,
    non-decreasing along its partition — then topic, partition and offset."""
    reached: dict[tuple[str, int], int] = {}
    keyed = []
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        tp = (r.topic, r.partition)
        reached[tp] = t = max(reached.get(tp, 0), r.timestamp_ms)
        keyed.append(((t, r.topic, r.partition, r.offset), r))
    keyed.sort(key=lambda kr: kr[0])
    return [r for _, r in keyed]


class Aligner:
    """Holds one node partition's requests until they can be applied in order.

    ``sources``: every source that can send this partition requests (all input
    partitions); empty: no alignment, every request is ready at once (one
    process, one log: a backtest, a unit test)."""

    def __init__(self, sources: Collection[str] = ()) -> None:
        self.sources = frozenset(sources)
        self.progress: dict[str, int] = {}
        self.idle_sources: set[str] = set()  # at the end of their log: they hold nothing back
        self._keys = {s: source_key(s) for s in self.sources}
        # (order time, source key, offset, entity, item, record offset, source): heap
        # order is the application order; an event's requests to several entities of
        # one partition share the first three and go in entity order
        self._heap: list[tuple[int, tuple[str, int], int, str, Any, int, str]] = []
        self._held: set[tuple[str, str, int]] = set()  # (source, entity, offset)
        self._records: Counter[int] = Counter()  # input record offsets still held
        self.clamped = 0  # requests ordered after their timestamp (see the docstring)
        # the key of the last request applied: one from a source that was idle
        # comes after it (_reached)
        self._last: tuple[int, tuple[str, int]] = (-1, ("", -1))

    def __len__(self) -> int:
        return len(self._heap)

    def _skey(self, source: str) -> tuple[str, int]:
        skey = self._keys.get(source)
        if skey is None:
            skey = self._keys[source] = source_key(source)
        return skey

    def _reached(self, source: str, order_ms: int) -> int:
        """How far ``source`` has got, at the least: a source that was idle wakes up
        after what was applied meanwhile (its partition may have moved to an intake
        that never marked it idle, and places its next record at its timestamp)."""
        reached = self.progress.get(source, -1)
        if source in self.idle_sources:
            self.idle_sources.discard(source)
            if (order_ms, self._skey(source)) <= self._last:
                reached = max(reached, self._last[0] + 1)
        return reached

    def advance(self, source: str, order_ms: int) -> None:
        """``source`` has sent everything before ``order_ms``."""
        self.progress[source] = max(order_ms, self._reached(source, order_ms))

    def idle(self, source: str, order_ms: int) -> None:
        """``source`` is at the end of its log: what it sends next comes after
        everything applied by then."""
        if order_ms > self.progress.get(source, -1):
            self.progress[source] = order_ms
        self.idle_sources.add(source)

    def hold(self, source: str, entity: str, offset: int, order_ms: int, item: Any,
             record_offset: int) -> bool:
        """Keep a request until its turn; False if it is held already (sent again)."""
        key = (source, entity, offset)
        if key in self._held:
            return False
        skey = self._skey(source)
        reached = self._reached(source, order_ms)
        if order_ms < reached:  # after an idle spell, or sent again by an intake that restarted
            order_ms = reached
            self.clamped += 1
        self.progress[source] = order_ms
        self._held.add(key)
        self._records[record_offset] += 1
        heapq.heappush(self._heap, (order_ms, skey, offset, entity, item, record_offset,
                                    source))
        return True

    def ready(self) -> Iterator[tuple[int, Any]]:
        """The held requests whose turn has come, in order (each once), with the
        order time each was applied at."""
        heap = self._heap
        if not heap:
            return
        Key = tuple[int, tuple[str, int]]
        bound: Key | None = None
        runner_up: Key | None = None
        if self.sources:  # the two least advanced busy sources (unknown: -1, before anything)
            idle, progress, keys = self.idle_sources, self.progress, self._keys
            least = heapq.nsmallest(2, ((progress.get(s, -1), keys[s]) for s in self.sources
                                        if s not in idle))
            bound = least[0] if least else None
            runner_up = least[1] if len(least) > 1 else None
        while heap:
            order_ms, skey, offset, entity, item, record_offset, source = heap[0]
            if bound is not None:
                # no other busy source may still send anything before (order_ms, source)
                limit = runner_up if bound[1] == skey else bound
                if limit is not None and (order_ms, skey) >= limit:
                    return
            heapq.heappop(heap)
            self._last = (order_ms, skey)
            self._held.discard((source, entity, offset))
            left = self._records[record_offset] - 1
            if left:
                self._records[record_offset] = left
            else:
                del self._records[record_offset]
            yield order_ms, item

    def oldest_record(self) -> int | None:
        """The offset of the oldest input record with a request still held."""
        return min(self._records) if self._records else None
