"""Exact sliding-window aggregation over one entity key, as pure functions.

The state of one entity key is a dict: ``{"wm": newest event time seen,
<feature state_key>: [[t, ...], [v, ...]]}``: the matching events' times,
sorted, and their values, in two parallel lists (two objects per feature and
key however many events, so the garbage collector and the encoder have little
to walk). For an event at time t the value of a feature is its aggregate over
matching events in (t - window, t], the event itself included. Events older
than ``wm - allowed_lateness`` are late: they are reported and get a value, but
do not change the state. Entries that no future on-time event can see
(t <= wm - lateness - window) are dropped, and no key keeps more than
``max_entries`` per feature (the oldest go first, reported).

>>> from tripwire.features.spec import FeatureSpec
>>> f = FeatureSpec("n", "card", "count", "1m")
>>> state = {}
>>> update(state, [f], {"event_type": "CardPayment"}, 1000)[0]["n"]
1
>>> state
{'n@1': [[1000], [1]], 'wm': 1000}
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from tripwire.features.spec import FeatureSpec

__all__ = ["DEFAULT_MAX_ENTRIES", "EntityState", "update", "value_of"]

EntityState = dict[str, Any]
DEFAULT_MAX_ENTRIES = 20_000


def value_of(spec: FeatureSpec, times: Sequence[int], values: Sequence[Any], t: int,
             exclude_self: bool = False) -> Any:
    """The aggregate of the entries (sorted ``times``, their ``values``) in (t - window, t]."""
    hi = bisect.bisect_right(times, t)
    lo = bisect.bisect_right(times, t - spec.window_ms, 0, hi)
    aggregate = spec.aggregate
    if aggregate == "count":
        return hi - lo
    if aggregate == "since_last":
        if exclude_self:
            hi -= 1  # the event itself was just added: look before it
        return t - times[hi - 1] if hi > lo else None
    if aggregate == "sum":
        return sum(values[lo:hi])
    if aggregate == "distinct":
        return len(set(values[lo:hi]))
    if aggregate == "max":
        return max(values[lo:hi], default=None)
    raise ValueError(aggregate)


_EMPTY: dict[str, Any] = {"count": 0, "sum": 0, "distinct": 0, "max": None,
                          "since_last": None}


def _late_note(spec: FeatureSpec, late_by: int) -> str:
    return (f"{spec.name}: event {late_by} ms behind the newest (allowed "
            f"{spec.lateness_ms} ms): counted as late, state unchanged")


def update(state: EntityState, specs: Sequence[FeatureSpec], view: Mapping[str, Any], t: int,
           max_entries: int = DEFAULT_MAX_ENTRIES) -> tuple[dict[str, Any], list[str]]:
    """Add the event at time ``t`` to ``state`` (in place) and return
    (values per feature name, notes). Notes report lateness and truncation."""
    notes: list[str] = []
    wm = state.get("wm")
    late_by = (wm - t) if wm is not None else 0
    values: dict[str, Any] = {}
    new_wm = t if wm is None else max(wm, t)
    for spec in specs:
        late = late_by > spec.lateness_ms
        matched = not late and spec.matches(view)
        entries: list[list[Any]] | None = state.get(spec.state_key)
        if entries is None:
            if not matched:  # nothing kept, nothing to add: the empty aggregate
                values[spec.name] = _EMPTY[spec.aggregate]
                if late:
                    notes.append(_late_note(spec, late_by))
                continue
            entries = state[spec.state_key] = [[], []]
        times, vals = entries
        added = False
        if matched:
            item = 1 if spec.aggregate in ("count", "since_last") else view.get(spec.field or "")
            if item is not None:
                if not times or times[-1] <= t:  # in order: the usual case
                    times.append(t)
                    vals.append(item)
                else:
                    i = bisect.bisect_right(times, t)
                    times.insert(i, t)
                    vals.insert(i, item)
                added = True
        if late:
            notes.append(_late_note(spec, late_by))
        values[spec.name] = value_of(spec, times, vals, t, exclude_self=added)
        horizon = new_wm - spec.lateness_ms - spec.window_ms
        if times and times[0] <= horizon:
            cut = bisect.bisect_right(times, horizon)
            del times[:cut], vals[:cut]
        if len(times) > max_entries:
            cut = len(times) - max_entries
            del times[:cut], vals[:cut]
            notes.append(f"{spec.name}: more than {max_entries} events in the window; "
                         "oldest dropped, value is a lower bound")
        if not times:
            del state[spec.state_key]
    state["wm"] = new_wm
    return values, notes
