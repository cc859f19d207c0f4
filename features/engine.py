"""The feature library at work: which entities an event has, which fields each
entity node needs, and the pure per-entity computation.

>>> lib = FeatureLibrary()
>>> sorted(lib.entities_of({"event_type": "CardPayment", "card_token": "t",
...                         "account_id": "a", "merchant_id": "m"}))
['account', 'card', 'merchant', 'system']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from tripwire.features.library import DEFAULT_FEATURES
from tripwire.features.spec import ENTITIES, FeatureSpec
from tripwire.features.window import DEFAULT_MAX_ENTRIES, EntityState, update

__all__ = ["FeatureLibrary", "decode_state", "encode_state", "make_view"]


def make_view(event_type: str, event: Mapping[str, Any],
              jit: Mapping[str, Any]) -> dict[str, Any]:
    """What features and filters read: the event's fields, its just-in-time
    features and ``event_type`` (short name)."""
    return {**event, **jit, "event_type": event_type}


def encode_state(state: EntityState) -> bytes:
    return orjson.dumps(state)


def decode_state(data: bytes | None) -> EntityState:
    return {} if data is None else orjson.loads(data)


class FeatureLibrary:
    """A set of feature specs, grouped by entity (one node per entity)."""

    def __init__(self, specs: Iterable[FeatureSpec] = DEFAULT_FEATURES,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.specs = tuple(specs)
        names = [s.name for s in self.specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature names defined twice: {sorted(dup)}")
        self.max_entries = max_entries
        grouped: dict[str, list[FeatureSpec]] = defaultdict(list)
        for s in self.specs:
            grouped[s.entity].append(s)
        self.by_entity = dict(grouped)
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
        return update(state, self.by_entity[entity], view, t, self.max_entries)

    def feature_meta(self) -> dict[str, str]:
        """Provenance: feature name → "entity/aggregate/window@version"."""
        return {s.name: f"{s.entity}/{s.aggregate}/{s.window}@{s.version}" for s in self.specs}
