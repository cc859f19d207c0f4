"""A brute-force feature oracle, written independently of tripwire.features.window:
for each event, scan every earlier event of the same entity key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tripwire.features.spec import FeatureSpec


def brute_force(specs: Sequence[FeatureSpec],
                events: Sequence[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per event (in processing order) of ONE entity key: every spec's value.

    Semantics: window (t - W, t] including the event itself (since_last excludes
    it); an event more than the allowed lateness behind the newest earlier event
    is late: it does not count for anyone, and only events newer than
    (newest earlier event - lateness - W) are still known."""
    out = []
    for i, (t, view) in enumerate(events):
        before = events[:i]
        wm = max((tt for tt, _ in before), default=None)
        row: dict[str, Any] = {}
        for s in specs:
            w, lateness = s.window_ms, s.lateness_ms
            late = wm is not None and wm - t > lateness

            def on_time(j: int, lateness: int = lateness) -> bool:
                wj = max((tt for tt, _ in events[:j]), default=None)
                return wj is None or wj - events[j][0] <= lateness

            def counts(v: dict[str, Any], s: FeatureSpec = s) -> bool:
                if not s.matches(v):
                    return False
                return s.aggregate in ("count", "since_last") or v.get(s.field or "") is not None

            horizon = None if wm is None else wm - lateness - w
            pool = [(tt, v) for j, (tt, v) in enumerate(before)
                    if on_time(j) and counts(v) and (horizon is None or tt > horizon)]
            if not late and counts(view) and s.aggregate != "since_last":
                pool.append((t, view))
            inside = [(tt, v) for tt, v in pool if t - w < tt <= t]
            row[s.name] = _aggregate(s, t, inside)
        out.append(row)
    return out


def by_time_index(specs: Sequence[FeatureSpec],
                  events: Sequence[tuple[int, dict[str, Any]]],
                  rows: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """:func:`brute_force`'s values, for keys with thousands of events: the same
    rules, but each event looks only at the events whose time falls in its window
    (found by bisecting the times, sorted once), instead of at every earlier one.
    Only the events at ``rows`` when given (the others: ``None`` each).
    Checked against :func:`brute_force` in tests/unit/test_oracles.py."""
    import bisect

    n = len(events)
    wm: list[int | None] = []  # the newest time before each event (processing order)
    newest: int | None = None
    for t, _ in events:
        wm.append(newest)
        newest = t if newest is None else max(newest, t)
    order = sorted(range(n), key=lambda j: events[j][0])
    times = [events[j][0] for j in order]
    out: list[dict[str, Any]] = []
    wanted = None if rows is None else set(rows)

    def counts(v: dict[str, Any], s: FeatureSpec) -> bool:
        if not s.matches(v):
            return False
        return s.aggregate in ("count", "since_last") or v.get(s.field or "") is not None

    # per spec, per event: on time and counted (the same for every row that sees it)
    kept = {s.name: [(wm[j] is None or wm[j] - tj <= s.lateness_ms) and counts(vj, s)
                     for j, (tj, vj) in enumerate(events)] for s in specs}
    for i, (t, view) in enumerate(events):
        row: dict[str, Any] = {}
        if wanted is not None and i not in wanted:
            out.append(dict.fromkeys(s.name for s in specs))
            continue
        for s in specs:
            w, lateness = s.window_ms, s.lateness_ms
            wmi = wm[i]
            late = wmi is not None and wmi - t > lateness
            horizon = None if wmi is None else wmi - lateness - w
            ok = kept[s.name]
            lo, hi = bisect.bisect_right(times, t - w), bisect.bisect_right(times, t)
            floor = horizon if horizon is not None else t - w - 1
            inside = [events[j] for j in order[lo:hi]
                      if j < i and ok[j] and events[j][0] > floor]
            if not late and counts(view, s) and s.aggregate != "since_last":
                inside.append((t, view))
            row[s.name] = _aggregate(s, t, inside)
        out.append(row)
    return out


def by_prefix_sums(specs: Sequence[FeatureSpec],
                   events: Sequence[tuple[int, dict[str, Any]]],
                   rows: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """:func:`brute_force`'s values for keys with millions of events: count and sum
    from a Fenwick tree over the key's event times (each event on time is added at
    its time; a value is the tree's total over the window, above the horizon).
    Distinct, max and since_last, only for the events at ``rows`` (every one by
    default), from :func:`by_time_index`; ``None`` elsewhere.
    Checked against :func:`brute_force` in tests/unit/test_oracles.py."""
    import bisect

    stamps = sorted({t for t, _ in events})  # the tree's positions: the key's times
    size = len(stamps)
    trees = {s.name: [0] * (size + 1) for s in specs if s.aggregate in ("count", "sum")}

    def add(tree: list[int], t: int, v: int) -> None:
        i = bisect.bisect_left(stamps, t) + 1
        while i <= size:
            tree[i] += v
            i += i & -i

    def upto(tree: list[int], t: int) -> int:  # the total at or before t
        i, total = bisect.bisect_right(stamps, t), 0
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total

    others = [s for s in specs if s.name not in trees]
    sampled = by_time_index(others, events, rows) if others else None
    out: list[dict[str, Any]] = []
    wm: int | None = None
    for i, (t, view) in enumerate(events):
        row: dict[str, Any] = {}
        for s in specs:
            tree = trees.get(s.name)
            if tree is None:
                continue
            late = wm is not None and wm - t > s.lateness_ms
            if not late and s.matches(view):
                item = 1 if s.aggregate == "count" else view.get(s.field or "")
                if item is not None:
                    add(tree, t, item)
            lo = t - s.window_ms
            if wm is not None:
                lo = max(lo, wm - s.lateness_ms - s.window_ms)
            row[s.name] = upto(tree, t) - upto(tree, lo) if lo < t else 0
        if sampled is not None:
            row.update(sampled[i])
        out.append(row)
        wm = t if wm is None else max(wm, t)
    return out


def _aggregate(s: FeatureSpec, t: int, inside: list[tuple[int, dict[str, Any]]]) -> Any:
    """``s``'s value at time ``t`` over the events ``inside`` its window."""
    if s.aggregate == "count":
        return len(inside)
    if s.aggregate == "sum":
        return sum(v[s.field] for _, v in inside)
    if s.aggregate == "distinct":
        return len({v[s.field] for _, v in inside})
    if s.aggregate == "max":
        return max((v[s.field] for _, v in inside), default=None)
    return t - max(tt for tt, _ in inside) if inside else None
