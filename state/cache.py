"""Decoded values of a store, cached and written back once per batch."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tripwire.schemas.records import TP

if TYPE_CHECKING:
    from tripwire.state.manager import StateManager

__all__ = ["DecodedCache", "Load", "Records"]

# (key, its stored value or None, a scan of the store by prefix) -> decoded value
Load = Callable[[bytes, bytes | None, Callable[[bytes], Iterator[tuple[bytes, bytes]]]], Any]
# (key, decoded value) -> the records to write (None: delete)
Records = Callable[[bytes, Any], list[tuple[bytes, bytes | None]]]


class DecodedCache:
    """Decoded values of one store, cached per (partition, key) and written back
    once per batch (or per commit): a hot key is decoded once and encoded once per
    batch, not per event. Processors call :meth:`StateManager.batch_done` at the
    end of every batch; :meth:`drop` runs when partitions are revoked or a
    transaction aborts."""

    def __init__(self, store: str, decode: Callable[[bytes | None], Any],
                 encode: Callable[[Any], bytes], max_keys: int = 100_000,
                 load: Load | None = None, records: Records | None = None) -> None:
        self.store, self.decode, self.encode, self.max_keys = store, decode, encode, max_keys
        # a value kept in several records (a hot key's pages): how to read it from
        # the store, and which records to write for it
        self.load: Load = load or (lambda key, data, scan: decode(data))
        self.records: Records = records or (lambda key, value: [(key, encode(value))])
        self._cache: dict[tuple[TP, bytes], Any] = {}  # used longest ago first
        self._dirty: set[tuple[TP, bytes]] = set()
        # keys written back since the last full flush: changed again, they wait for it
        self._settled: set[tuple[TP, bytes]] = set()

    def __len__(self) -> int:
        """The keys held decoded."""
        return len(self._cache)

    def get(self, state: StateManager, tp: TP, key: bytes) -> Any:
        """The decoded value, marked dirty: the caller may change it in place."""
        k = (tp, key)
        cache = self._cache
        value = cache.pop(k, None)
        if value is not None:
            cache[k] = value  # used last: forgotten last (a hot key is never reloaded)
        else:
            store = state.store(self.store, tp)
            value = self._cache[k] = self.load(key, store.get(key), store.items)
        self._dirty.add(k)
        return value

    def flush(self, state: StateManager, full: bool = True) -> None:
        """Write changed values back. ``full`` False (after a batch, between commits):
        only keys not written back since the last full flush, so the work of a
        commit is spread over its batches while a hot key is still encoded about
        once per commit; the full flush (before a commit) writes the rest."""
        settled = self._settled
        keys = self._dirty if full else [k for k in self._dirty if k not in settled]
        by_tp: dict[TP, list[tuple[bytes, bytes | None]]] = {}
        cache, records = self._cache, self.records
        for k in keys:
            by_tp.setdefault(k[0], []).extend(records(k[1], cache[k]))
        for tp, items in by_tp.items():
            state.put_many(self.store, tp, items)
        if not full:
            settled.update(keys)
            self._dirty.difference_update(keys)
            return
        self._dirty.clear()
        settled.clear()
        excess = len(self._cache) - self.max_keys
        if excess > 0:  # forget the keys used longest ago (state is in the store)
            for k in list(itertools.islice(self._cache, excess)):
                del self._cache[k]

    def drop(self, tps: Iterable[TP]) -> None:
        gone = set(tps)
        for k in [k for k in self._cache if k[0] in gone]:
            del self._cache[k]
        self._dirty = {k for k in self._dirty if k[0] not in gone}
        self._settled = {k for k in self._settled if k[0] not in gone}
