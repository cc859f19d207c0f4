"""Exact sliding-window aggregation over one entity key, as pure functions.

The state of one entity key is a dict: ``{"wm": newest event time seen,
<feature state_key>: Column}``. A :class:`Column` keeps one bucket per
millisecond in which a matching event happened: the bucket times, sorted, and
beside them what the aggregate needs of that millisecond (the number of events
for count and since_last, their total for sum, their largest value for max,
their distinct values for distinct). So a key's memory for a feature is
bounded by its window and allowed lateness at the timestamps' resolution, not
by its rate: a 10-minute count on the whole system at 5,000 events/s is at
most 900,000 buckets (10 minutes and 5 of lateness), not 3 million events.
Distinct also keeps each millisecond's distinct values.

For an event at time t the value of a feature is its aggregate over matching
events in (t - window, t], the event itself included. Events older than
``wm - allowed_lateness`` are late: they are reported and get a value, but do
not change the state. Buckets that no future event can see
(t <= wm - lateness - window) are forgotten.

Small ranges are aggregated directly. A range of more than ``DIRECT`` buckets
(a hot key) is answered by a :class:`Cursor`: the aggregate of one range, kept
up to date as buckets change and slid to the next query's range, so an event
that follows the previous one costs the few buckets between them, not the
window. A key keeps a few cursors (events on time, and each stream of late
ones). Each answer is exact.

>>> from tripwire.features.spec import FeatureSpec
>>> f = FeatureSpec("n", "card", "count", "1m")
>>> state = {}
>>> update(state, [f], {"event_type": "CardPayment"}, 1000)[0]["n"]
1
>>> update(state, [f], {"event_type": "CardPayment"}, 1000)[0]["n"]
2
>>> state["n@1"].times, state["n@1"].vals
([1000], [2])
"""

from __future__ import annotations

import heapq
import sys
from bisect import bisect_left, bisect_right
from collections import _count_elements  # type: ignore[attr-defined]  # Counter's, in C
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from tripwire.features.spec import FeatureSpec

__all__ = ["CHUNK", "DIRECT", "PAGED_AT", "PAGE_MS", "Column", "Cursor", "EntityState", "update"]

EntityState = dict[str, Any]

DIRECT = 64  # buckets aggregated directly; more: through a cursor
MAX_CURSORS = 4  # per column: events on time, and a few streams of late ones
# A column of more than PAGED_AT entries (buckets; distinct: values) is stored a
# page of PAGE_MS per record (pages of more than CHUNK entries in several), so a
# commit writes the pages it changed, and no record grows past Kafka's limit.
# Pages are numbered by time: changing PAGE_MS needs a new features store version.
PAGE_MS = 100
PAGED_AT = 2048
CHUNK = 4096
_FORGET_AT = 1024  # expired buckets are removed from the lists in batches of at least this


_NO_CURSORS: list[Cursor] = []
_CLEAN: set[int] = set()
_ONE_RECORD_EACH: dict[int, int] = {}


class Cursor:
    """The aggregate of the buckets ``[lo, hi)`` of a column: those in the range
    (low, at]. ``acc`` is a number (count, sum) or value -> buckets holding it
    (distinct, max; ``heap`` finds the largest)."""

    __slots__ = ("acc", "at", "heap", "hi", "lo", "low")

    def __init__(self, low: int, at: int, lo: int, hi: int, acc: Any) -> None:
        self.low, self.at, self.lo, self.hi, self.acc = low, at, lo, hi, acc
        self.heap: list[Any] = []


class Column:
    """The buckets of one feature of one entity key (see the module's doc).

    ``size``: its entries (buckets; for distinct, values). ``paged``: stored as
    records of :data:`PAGE_MS` of buckets (a hot key); ``dirty`` the pages
    changed since they were last written, ``chunks`` how many records the pages
    stored in more than one have."""

    __slots__ = ("chunks", "cursors", "dirty", "paged", "size", "times", "vals")

    def __init__(self, times: list[int] | None = None, vals: list[Any] | None = None,
                 paged: bool = False) -> None:
        if times is None or vals is None:
            self.times: list[int] = []
            self.vals: list[Any] = []
            self.size = 0
        else:
            self.times, self.vals, self.size = times, vals, _weight(vals)
        # most columns never page nor slide: they share these empty ones (never
        # changed: each is replaced by a column's own before its first use)
        self.cursors: list[Cursor] = _NO_CURSORS
        self.paged = paged
        self.dirty: set[int] = set() if paged else _CLEAN
        self.chunks: dict[int, int] = {} if paged else _ONE_RECORD_EACH

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Column) and (self.times, self.vals, self.paged) == (
            other.times, other.vals, other.paged)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Column({self.times!r}, {self.vals!r}{', paged=True' if self.paged else ''})"

    # -- pages -------------------------------------------------------------------
    def page(self, number: int) -> list[list[Any]]:
        """The records of one page (:data:`PAGE_MS` of time): each ``[times, vals]``
        with times in milliseconds into the page, at most :data:`CHUNK` entries
        (a millisecond with more distinct values is split over records); [] when
        the page is empty."""
        times, start = self.times, number * PAGE_MS
        lo = bisect_left(times, start)
        hi = bisect_left(times, start + PAGE_MS, lo)
        offsets = [x - start for x in times[lo:hi]]
        vals = self.vals[lo:hi]
        if not vals or not isinstance(vals[0], list) or _weight(vals) <= CHUNK:
            return [[offsets, vals]] if vals else []
        out: list[list[Any]] = []
        ts: list[int] = []
        vs: list[Any] = []
        room = CHUNK
        for x, bucket in zip(offsets, vals, strict=True):
            for i in range(0, len(bucket), CHUNK):
                piece = bucket[i:i + CHUNK]
                if len(piece) > room:
                    out.append([ts, vs])
                    ts, vs, room = [], [], CHUNK
                ts.append(x)
                vs.append(piece)
                room -= len(piece)
        out.append([ts, vs])
        return out

    def load_page(self, number: int, times: list[int], vals: list[Any]) -> None:
        """Add one record of a page :meth:`page` gave (records in order)."""
        start = number * PAGE_MS
        if times and self.times and self.times[-1] == start + times[0] and \
                isinstance(vals[0], list):
            self.vals[-1] = self.vals[-1] + vals[0]  # a millisecond split over records
            self.size += len(vals[0])
            times, vals = times[1:], vals[1:]
        self.times += [start + x for x in times]
        self.vals += vals
        self.size += _weight(vals)

    # -- changes ---------------------------------------------------------------
    def add(self, aggregate: str, t: int, item: Any) -> None:
        """Count one matching event (``item``: its field's value) at ``t``."""
        times, vals = self.times, self.vals
        n = len(times)
        if aggregate == "distinct":
            if type(item) is str:
                item = sys.intern(item)  # a card, IP or account seen again is kept once
            bucket: Any = [item]
        else:
            bucket = item
        if n and times[-1] >= t:
            i = bisect_left(times, t)
            if i < n and times[i] == t:
                self._merge(aggregate, i, t, item)
                return
            times.insert(i, t)
            vals.insert(i, bucket)
        else:  # in order: the usual case
            times.append(t)
            vals.append(bucket)
        self.size += 1
        for c in self.cursors:
            if t <= c.low:
                c.lo += 1
                c.hi += 1
            elif t <= c.at:
                c.hi += 1
                _take(aggregate, c, bucket)
        if self.paged or self.size > PAGED_AT:
            self._changed(t)

    def _changed(self, t: int) -> None:
        if self.paged:
            self.dirty.add(t // PAGE_MS)
        elif self.size > PAGED_AT:
            self.paged = True
            self.dirty = {x // PAGE_MS for x in self.times}
            self.chunks = {}

    def _merge(self, aggregate: str, i: int, t: int, item: Any) -> None:
        vals = self.vals
        inside = [c for c in self.cursors if c.low < t <= c.at]
        if aggregate == "distinct":
            if item in vals[i]:
                return
            vals[i].append(item)
            self.size += 1
            for c in inside:
                _take(aggregate, c, [item])
        elif aggregate == "max":
            old = vals[i]
            if item <= old:
                return
            vals[i] = item
            for c in inside:
                _drop(aggregate, c, old)
                _take(aggregate, c, item)
        else:  # count, since_last: 1; sum: the value
            vals[i] += item
            for c in inside:
                c.acc += item
        self._changed(t)

    def forget(self, horizon: int) -> None:
        """Buckets at or before ``horizon`` will never be seen again; remove them
        when there are enough of them (until then queries skip them)."""
        times = self.times
        if not times or times[0] > horizon:
            return
        cut = bisect_right(times, horizon)
        if cut < len(times) and cut < _FORGET_AT and cut * 4 < len(times):
            return
        if self.paged:
            self.dirty.update(range(times[0] // PAGE_MS, times[cut - 1] // PAGE_MS + 1))
        self.size -= _weight(self.vals[:cut])
        del times[:cut], self.vals[:cut]
        if self.cursors:  # those still inside keep their place; the others go
            kept = [c for c in self.cursors if c.lo >= cut]
            for c in kept:
                c.lo -= cut
                c.hi -= cut
            self.cursors = kept

    # -- queries ---------------------------------------------------------------
    def value(self, spec: FeatureSpec, t: int, head_time: int | None,
              exclude_self: bool) -> Any:
        """The aggregate over the buckets in (t - window, t] and after ``head_time``
        (the horizon: older buckets are forgotten)."""
        times, vals = self.times, self.vals
        hi = bisect_right(times, t)
        lo_time = t - spec.window_ms
        if head_time is not None and head_time > lo_time:
            lo_time = head_time
        aggregate = spec.aggregate
        if aggregate == "since_last":
            j = hi - 1
            if exclude_self and j >= 0 and times[j] == t and vals[j] == 1:
                j -= 1  # the event itself was the only one in its millisecond
            return t - times[j] if j >= 0 and times[j] > lo_time else None
        lo = bisect_right(times, lo_time, 0, hi)
        if hi - lo <= DIRECT:
            if aggregate == "distinct":
                return len(set(chain.from_iterable(vals[lo:hi])))
            if aggregate == "max":
                return max(vals[lo:hi], default=None)
            return sum(vals[lo:hi])
        return self._slide(aggregate, lo_time, t, lo, hi)

    def _slide(self, aggregate: str, low: int, t: int, lo: int, hi: int) -> Any:
        best, cost = None, hi - lo  # a new cursor costs the whole range
        for c in self.cursors:
            k = abs(hi - c.hi) + abs(lo - c.lo)
            if k < cost:
                best, cost = c, k
        cursors = self.cursors
        if cursors is _NO_CURSORS:
            cursors = self.cursors = []
        if best is None:
            best = Cursor(low, t, lo, hi, 0 if aggregate in ("count", "sum") else {})
            _span(aggregate, best, self.vals, lo, hi, _take)
            if len(cursors) >= MAX_CURSORS:
                cursors.pop()  # the one used longest ago
        else:
            cursors.remove(best)
            vals = self.vals
            if hi > best.hi:
                _span(aggregate, best, vals, best.hi, hi, _take)
            if lo < best.lo:
                _span(aggregate, best, vals, lo, best.lo, _take)
            if hi < best.hi:
                _span(aggregate, best, vals, hi, best.hi, _drop)
            if lo > best.lo:
                _span(aggregate, best, vals, best.lo, lo, _drop)
            best.low, best.at, best.lo, best.hi = low, t, lo, hi
        cursors.insert(0, best)
        if aggregate == "distinct":
            return len(best.acc)
        if aggregate == "max":
            heap, acc = best.heap, best.acc
            while heap and -heap[0] not in acc:
                heapq.heappop(heap)
            return -heap[0] if heap else None
        return best.acc


def _weight(vals: list[Any]) -> int:
    """Entries of some buckets: one each, or their values (distinct)."""
    return sum(map(len, vals)) if vals and isinstance(vals[0], list) else len(vals)


def _take(aggregate: str, c: Cursor, bucket: Any) -> None:
    """Add one bucket's aggregate (a distinct bucket: its new values) to ``c``."""
    if aggregate == "distinct":
        acc = c.acc
        for v in bucket:
            acc[v] = acc.get(v, 0) + 1
    elif aggregate == "max":
        n = c.acc.get(bucket, 0)
        c.acc[bucket] = n + 1
        if not n:
            heapq.heappush(c.heap, -bucket)
    else:
        c.acc += bucket


def _drop(aggregate: str, c: Cursor, bucket: Any) -> None:
    if aggregate in ("distinct", "max"):
        _uncount(c.acc, bucket if aggregate == "distinct" else (bucket,))
    else:
        c.acc -= bucket


def _uncount(acc: dict[Any, int], values: Iterable[Any]) -> None:
    for v in values:
        n = acc[v] - 1
        if n:
            acc[v] = n
        else:
            del acc[v]


def _span(aggregate: str, c: Cursor, vals: list[Any], lo: int, hi: int, op: Any) -> None:
    """Add (``op`` :func:`_take`) or remove (:func:`_drop`) the buckets ``[lo, hi)``."""
    if aggregate in ("count", "sum", "since_last"):
        total = sum(vals[lo:hi])
        c.acc += total if op is _take else -total
    elif aggregate == "distinct":
        acc = c.acc
        if op is _take:
            _count_elements(acc, chain.from_iterable(vals[lo:hi]))  # in C
            return
        _uncount(acc, chain.from_iterable(vals[lo:hi]))
    else:
        for bucket in vals[lo:hi]:
            op(aggregate, c, bucket)


_EMPTY: dict[str, Any] = {"count": 0, "sum": 0, "distinct": 0, "max": None,
                          "since_last": None}


def _late_note(spec: FeatureSpec, late_by: int) -> str:
    return (f"{spec.name}: event {late_by} ms behind the newest (allowed "
            f"{spec.lateness_ms} ms): counted as late, state unchanged")


def update(state: EntityState, specs: Sequence[FeatureSpec], view: Mapping[str, Any],
           t: int, may_match: Sequence[bool] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Add the event at time ``t`` to ``state`` (in place) and return
    (values per feature name, notes). Notes report lateness. ``may_match``: per
    spec, False where the event cannot match it (its type is not the spec's),
    known beforehand; None: each spec's filter decides."""
    notes: list[str] = []
    wm = state.get("wm")
    late_by = (wm - t) if wm is not None else 0
    values: dict[str, Any] = {}
    new_wm = t if wm is None else max(wm, t)
    for i, spec in enumerate(specs):
        name, state_key, lateness, window, aggregate, field = spec.hot
        late = late_by > lateness
        column: Column | None = state.get(state_key)
        item = None
        if not late and (may_match is None or may_match[i]) and spec.matches(view):
            item = 1 if aggregate == "count" or aggregate == "since_last" else view.get(field)
        if column is None:
            if item is None:  # nothing kept, nothing to add: the empty aggregate
                values[name] = _EMPTY[aggregate]
                if late:
                    notes.append(_late_note(spec, late_by))
                continue
            column = state[state_key] = Column()
        if item is not None:
            times = column.times
            if (times and times[-1] >= t) or column.cursors or column.paged \
                    or column.size >= PAGED_AT or aggregate == "distinct":
                column.add(aggregate, t, item)
            else:  # a new millisecond after the others, nothing else to update
                times.append(t)
                column.vals.append(item)
                column.size += 1
        if late:
            notes.append(_late_note(spec, late_by))
        kept = lateness + window  # how far behind the newest event a bucket counts
        values[name] = column.value(spec, t, None if wm is None else wm - kept,
                                    item is not None)
        times = column.times
        if times and times[0] <= new_wm - kept:
            column.forget(new_wm - kept)
        if not times and not column.paged:
            del state[state_key]
    state["wm"] = new_wm
    return values, notes
