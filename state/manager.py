"""Per-partition key-value state, backed by compacted changelog topics.

A processor sees a :class:`StateView`: ``get``/``put``/``delete`` on named stores
for the input partition it is processing. The loop that runs it records every
write and produces it to the store's changelog topic inside the same Kafka
transaction as the outputs and input offsets, so state, outputs and progress
move together. When a partition is assigned, its store is restored from the
changelog (from a checkpoint when the local copy was closed cleanly, from the
beginning otherwise), so a restart, a rebalance or a wiped disk give the same
state.

Store and changelog names are explicit and versioned (``dedup.v1``), never
derived from parameters:

    changelog topic = <namespace>tripwire.<processor>.<store>.<input topic>.changelog

"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tripwire.schemas.records import TP
from tripwire.state.cache import DecodedCache, Load, Records
from tripwire.state.memory import KeyValueStore, MemoryStore
from tripwire.state.rocks import RocksStore

__all__ = ["OneLogState", "StateManager", "StateView", "changelog_topic"]

logger = logging.getLogger(__name__)


def changelog_topic(namespace: str, processor: str, store: str, input_topic: str) -> str:
    """The explicit changelog topic name of one store for one input topic."""
    base = input_topic[len(namespace):] if namespace and input_topic.startswith(namespace) \
        else input_topic
    return f"{namespace}tripwire.{processor}.{store}.{base}.changelog"


class StateView:
    """What a processor sees while it handles one input partition."""

    def __init__(self, manager: StateManager, topic: str, partition: int) -> None:
        self._m = manager
        self._tp = (topic, partition)

    @property
    def manager(self) -> StateManager:
        return self._m

    @property
    def tp(self) -> tuple[str, int]:
        return self._tp

    def put_local(self, store: str, key: bytes, value: bytes) -> None:
        """A write kept on this worker only (an index it can rebuild), not changelogged."""
        self._m.store(store, self._tp).put(key, value)

    def delete_local(self, store: str, key: bytes) -> None:
        self._m.store(store, self._tp).delete(key)

    def get(self, store: str, key: bytes) -> bytes | None:
        return self._m.store(store, self._tp).get(key)

    def put(self, store: str, key: bytes, value: bytes) -> None:
        self._m.store(store, self._tp).put(key, value)
        self._m.pending.append((store, self._tp, key, value))

    def delete(self, store: str, key: bytes) -> None:
        self._m.store(store, self._tp).delete(key)
        self._m.pending.append((store, self._tp, key, None))

    def items(self, store: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._m.store(store, self._tp).items(prefix)


class StateManager:
    """Owns the stores of one processor: open, restore, record writes, checkpoint.

    ``root`` None keeps state in memory (restored from the changelog all the same).
    """

    def __init__(self, processor: str, stores: list[str], namespace: str = "",
                 root: Path | None = None) -> None:
        self.processor = processor
        self.store_names = list(stores)
        # input topic -> the stores its partitions have (None: every store)
        self.stores_by_topic: dict[str, list[str]] | None = None
        # input topic -> the processor whose name its changelogs carry (default: this
        # one); a loop running several stages names each topic's after its stage, so
        # every layout of the stages writes and restores the same changelogs
        self.owners: dict[str, str] = {}
        self.namespace = namespace
        self.root = root
        self._stores: dict[tuple[str, TP], KeyValueStore] = {}
        self.pending: list[tuple[str, TP, bytes, bytes | None]] = []
        # highest changelog offset applied or written, per (store, tp)
        self.offsets: dict[tuple[str, TP], int] = {}
        self._changelogs: dict[tuple[str, str], str] = {}
        self._decoded: dict[str, DecodedCache] = {}
        # False: processors write decoded values back after every batch (tests,
        # backtests); True: the loop does it with :meth:`checkpoint` before each commit
        self.defer_decoded = False

    def decoded(self, store: str, decode: Callable[[bytes | None], Any],
                encode: Callable[[Any], bytes], max_keys: int = 100_000,
                load: Load | None = None, records: Records | None = None) -> DecodedCache:
        """The decoded-value cache of ``store`` (one per manager, dropped with its
        partitions on revoke, loss or abort)."""
        cache = self._decoded.get(store)
        if cache is None:
            cache = self._decoded[store] = DecodedCache(store, decode, encode, max_keys,
                                                        load, records)
        return cache

    def batch_done(self) -> None:
        """A processor's batch is over: write decoded values back, unless the loop
        defers that to its next commit (a hot key is then encoded once per commit)."""
        if not self.defer_decoded:
            self.checkpoint()

    def checkpoint(self, full: bool = True) -> None:
        """Write every changed decoded value back to its store (and changelog);
        ``full`` False: only those not written back since the last full checkpoint
        (see :meth:`DecodedCache.flush`)."""
        for cache in self._decoded.values():
            cache.flush(self, full)

    def view(self, topic: str, partition: int) -> StateView:
        return StateView(self, topic, partition)

    def stores_of(self, topic: str) -> list[str]:
        """The stores the partitions of input ``topic`` have."""
        if self.stores_by_topic is None:
            return self.store_names
        return self.stores_by_topic.get(topic, self.store_names)

    def changelog(self, store: str, topic: str) -> str:
        name = self._changelogs.get((store, topic))
        if name is None:
            name = self._changelogs[(store, topic)] = changelog_topic(
                self.namespace, self.owners.get(topic, self.processor), store, topic)
        return name

    def _dir(self, store: str, tp: TP) -> Path:
        assert self.root is not None
        return self.root / self.processor / store / f"{tp[0]}-{tp[1]}"

    def store(self, name: str, tp: TP) -> KeyValueStore:
        s = self._stores.get((name, tp))
        if s is None:
            if name not in self.store_names:
                raise KeyError(f"{self.processor} declares no store {name!r}")
            s = self._open(name, tp)
        return s

    def _open(self, name: str, tp: TP) -> KeyValueStore:
        s: KeyValueStore = MemoryStore() if self.root is None else \
            RocksStore(self._dir(name, tp) / "db")
        self._stores[(name, tp)] = s
        return s

    # -- lifecycle driven by the loop -------------------------------------------
    def open_partition(self, tp: TP) -> dict[str, int]:
        """Open the stores of ``tp``; returns, per store, the changelog offset to
        restore from (a clean checkpoint, or 0 after wiping an unclean copy)."""
        start: dict[str, int] = {}
        for name in self.stores_of(tp[0]):
            checkpoint = None
            if self.root is not None:
                d = self._dir(name, tp)
                marker = d / "checkpoint.json"
                if marker.exists():
                    with contextlib.suppress(ValueError, OSError):
                        checkpoint = int(json.loads(marker.read_text())["next_offset"])
                    marker.unlink()  # from now on the copy is dirty until closed cleanly
                if checkpoint is None and d.exists():
                    shutil.rmtree(d)  # unclean: rebuild from the changelog
            self._open(name, tp)
            start[name] = checkpoint or 0
            self.offsets[(name, tp)] = (checkpoint or 0) - 1
        return start

    def apply(self, name: str, tp: TP, key: bytes, value: bytes | None, offset: int) -> None:
        """Apply one changelog record during restore."""
        s = self.store(name, tp)
        if value is None:
            s.delete(key)
        else:
            s.put(key, value)
        self.offsets[(name, tp)] = offset

    def close_partition(self, tp: TP, clean: bool = True) -> None:
        for cache in self._decoded.values():
            cache.drop([tp])
        for name in self.store_names:
            s = self._stores.pop((name, tp), None)
            if s is None:
                continue
            if not clean and isinstance(s, RocksStore):
                s.drop_buffer()
            s.close()
            off = self.offsets.pop((name, tp), None)
            if self.root is not None and clean and off is not None:
                (self._dir(name, tp) / "checkpoint.json").write_text(
                    json.dumps({"next_offset": off + 1}))

    def put_many(self, name: str, tp: TP, items: list[tuple[bytes, bytes | None]]) -> None:
        """Many puts (None: a delete) into one store of ``tp`` at once (recorded for
        the changelog)."""
        self.store(name, tp).put_many(items)
        self.pending.extend((name, tp, k, v) for k, v in items)

    def flush_writes(self, at_least: int = 1) -> None:
        """Apply the buffered writes of every store holding ``at_least`` of them (the
        loop: after each batch the stores with many, so that a commit is not left
        with a second's worth; before each commit all of them)."""
        for s in self._stores.values():
            if isinstance(s, RocksStore) and s.buffered >= at_least:
                s.flush()

    def discard(self, tp: TP) -> None:
        """Drop local state of ``tp`` (after an aborted transaction); it is restored again."""
        self.close_partition(tp, clean=False)

    def partitions(self) -> set[TP]:
        return {tp for (_, tp) in self._stores}

    def close(self) -> None:
        for tp in self.partitions():
            self.close_partition(tp)


class OneLogState(StateManager):
    """In-memory state with every input partition's view on one partition: a replay
    of several topics merged into one ordered log (a backtest) keeps one window
    per entity key across topics, as the live pipeline's feature nodes do."""

    LOG: TP = ("replay", 0)

    def __init__(self, processor: str, stores: list[str]) -> None:
        super().__init__(processor, stores)

    def view(self, topic: str, partition: int) -> StateView:
        return StateView(self, *self.LOG)

    def batch_done(self) -> None:
        """No changelog (the writes are not kept). Decoded values are written back
        only when a cache holds more keys than it keeps, and then those used longest
        ago are forgotten: a replay's state lives in memory, and writing a value
        back costs an encode of each changed key (a tenth of a replay's feature
        work when done every batch)."""
        if any(len(c) > c.max_keys for c in self._decoded.values()):
            self.checkpoint()
        self.pending.clear()
