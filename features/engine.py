"""The feature library at work: which entities an event has, which fields each
entity node needs, and the pure per-entity computation.

>>> lib = FeatureLibrary()
>>> sorted(lib.entities_of({"event_type": "CardPayment", "card_token": "t",
...                         "account_id": "a", "merchant_id": "m"}))
['account', 'card', 'merchant', 'system']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from tripwire.features.kinds import EVENT_KINDS
from tripwire.features.library import DEFAULT_FEATURES
from tripwire.features.spec import ENTITIES, FeatureSpec
from tripwire.features.window import Column, EntityState, update

__all__ = ["FeatureLibrary", "decode_state", "encode_state", "load_state", "make_view",
           "page_prefix", "state_records"]


def make_view(event_type: str, event: Mapping[str, Any],
              jit: Mapping[str, Any]) -> dict[str, Any]:
    """What features and filters read: the event's fields, its just-in-time
    features and ``event_type`` (short name)."""
    return {**event, **jit, "event_type": event_type}


def _inline(obj: Any) -> Any:
    if isinstance(obj, Column):
        return [obj.times, obj.vals]
    raise TypeError(type(obj))


def _paged(obj: Any) -> Any:
    if isinstance(obj, Column):
        return {"paged": 1} if obj.paged else [obj.times, obj.vals]
    raise TypeError(type(obj))


def encode_state(state: EntityState) -> bytes:
    """One entity key's state as one value, every column in it."""
    return orjson.dumps(state, default=_inline)


def decode_state(data: bytes | None) -> EntityState:
    """The state :func:`encode_state` wrote (a paged column's pages are read by
    :func:`load_state`)."""
    if data is None:
        return {}
    state: EntityState = orjson.loads(data)
    for k, v in state.items():
        if k != "wm":
            state[k] = Column(paged=True) if isinstance(v, dict) else Column(v[0], v[1])
    return state


def page_prefix(key: bytes, state_key: str) -> bytes:
    """Where the pages of one column of the entity key stored at ``key`` are:
    never a prefix of another column's or key's (entity keys never start with
    a zero byte, and the key's length is in it)."""
    return b"\x00" + len(key).to_bytes(4, "big") + key + state_key.encode() + b"\x00"


def state_records(key: bytes, state: EntityState) -> list[tuple[bytes, bytes | None]]:
    """The store records to write for the entity state at ``key``: its value,
    and for each paged column (a hot key) the pages changed since the last
    call (None: a page now empty, deleted). The column's pages are then clean."""
    out: list[tuple[bytes, bytes | None]] = [(key, orjson.dumps(state, default=_paged))]
    for sk, col in state.items():
        if sk == "wm" or not col.paged or not col.dirty:
            continue
        prefix = page_prefix(key, sk)
        for number in sorted(col.dirty):
            records = col.page(number)
            for i, record in enumerate(records):
                out.append((_page_key(prefix, number, i), orjson.dumps(record)))
            for i in range(len(records), col.chunks.get(number, 1)):
                out.append((_page_key(prefix, number, i), None))  # gone: deleted
            if len(records) > 1:
                col.chunks[number] = len(records)
            else:
                col.chunks.pop(number, None)
        col.dirty.clear()
    return out


def _page_key(prefix: bytes, number: int, chunk: int) -> bytes:
    return prefix + (b"%d" % number if not chunk else b"%d.%d" % (number, chunk))


def load_state(key: bytes, data: bytes | None,
               scan: Callable[[bytes], Iterator[tuple[bytes, bytes]]]) -> EntityState:
    """The entity state at ``key``, its paged columns read with ``scan`` (the
    store's records under a prefix)."""
    state = decode_state(data)
    for sk, col in state.items():
        if sk == "wm" or not col.paged:
            continue
        prefix = page_prefix(key, sk)
        records: list[tuple[int, int, bytes]] = []
        for k, raw in scan(prefix):
            page, _, part = k[len(prefix):].partition(b".")
            records.append((int(page), int(part or 0), raw))
        for number, index, raw in sorted(records):
            col.load_page(number, *orjson.loads(raw))
            if index:
                col.chunks[number] = index + 1
    return state


class FeatureLibrary:
    """A set of feature specs, grouped by entity (one node per entity)."""

    def __init__(self, specs: Iterable[FeatureSpec] = DEFAULT_FEATURES) -> None:
        self.specs = tuple(specs)
        names = [s.name for s in self.specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature names defined twice: {sorted(dup)}")
        grouped: dict[str, list[FeatureSpec]] = defaultdict(list)
        for s in self.specs:
            grouped[s.entity].append(s)
        self.by_entity = dict(grouped)
        # (entity, event type) → per spec, whether an event of that type can match it
        self._may_match: dict[tuple[str, Any], tuple[bool, ...]] = {
            (e, kind.short): tuple(s.matches_type(kind.short) for s in specs)
            for e, specs in self.by_entity.items() for kind in EVENT_KINDS.values()}
        self._fields = {e: frozenset({"event_type"}.union(*(s.fields_read() for s in specs)))
                        for e, specs in self.by_entity.items()}

    def entities(self) -> list[str]:
        return sorted(self.by_entity)

    def entities_of(self, view: Mapping[str, Any]) -> dict[str, str]:
        """Entity → key for every entity of this event that has features."""
        out = {}
        for entity in self.by_entity:
            key = ENTITIES[entity](view)
            if key is not None:
                out[entity] = str(key)
        return out

    def fields_for(self, entity: str) -> frozenset[str]:
        return self._fields[entity]

    def compute(self, entity: str, state: EntityState, view: Mapping[str, Any], t: int) \
            -> tuple[dict[str, Any], list[str]]:
        """Update ``state`` of one entity key with the event; its feature values."""
        return update(state, self.by_entity[entity], view, t,
                      self._may_match.get((entity, view.get("event_type"))))

    def feature_meta(self) -> dict[str, str]:
        """Provenance: feature name → "entity/aggregate/window@version"."""
        return {s.name: f"{s.entity}/{s.aggregate}/{s.window}@{s.version}" for s in self.specs}
