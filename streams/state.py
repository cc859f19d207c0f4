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

>>> mem = MemoryStore()
>>> mem.put(b"k", b"v"); mem.get(b"k")
b'v'
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tripwire.streams.records import TP

__all__ = [
    "DecodedCache",
    "KeyValueStore",
    "MemoryStore",
    "OneLogState",
    "RocksStore",
    "StateManager",
    "StateView",
    "changelog_topic",
]

logger = logging.getLogger(__name__)


class KeyValueStore(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...
    def put_many(self, items: list[tuple[bytes, bytes | None]]) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A dict; for tests, backtests and small state."""

    def __init__(self) -> None:
        self._d: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._d.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._d[key] = value

    def delete(self, key: bytes) -> None:
        self._d.pop(key, None)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(self._d):
            if k.startswith(prefix):
                yield k, self._d[k]

    def put_many(self, items: list[tuple[bytes, bytes | None]]) -> None:
        for k, v in items:  # None: a delete
            if v is None:
                self._d.pop(k, None)
            else:
                self._d[k] = v

    def __len__(self) -> int:
        return len(self._d)

    def close(self) -> None:
        pass


class RocksStore:
    """A RocksDB store (rocksdict) in raw bytes mode.

    Writes are buffered and applied in one RocksDB WriteBatch by :meth:`flush`
    (the loop calls it once per commit; it also happens when the buffer is large,
    before a scan and on close); reads see the buffered writes.
    """

    MAX_BUFFERED = 20_000
    # Bloom filter bits per key in every table file (as Kafka Streams' stores have):
    # most lookups miss — a new event in the dedup store, a new identity in the
    # decision memory — and a miss then skips the files instead of reading a
    # block of each (`bench state`: ~0.4 against ~4 µs per miss in page cache,
    # a disk read each when not). 0: none.
    BLOOM_BITS = 10

    def __init__(self, path: Path, bloom_bits: int = BLOOM_BITS) -> None:
        from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        options = Options(raw_mode=True)
        if bloom_bits:
            table = BlockBasedOptions()
            table.set_bloom_filter(bloom_bits, False)  # full filters, not per block
            options.set_block_based_table_factory(table)
        self._db = Rdict(str(path), options)
        # No write-ahead log: the changelog topic is the durable log. A copy not
        # closed cleanly is wiped and restored from it; a clean close flushes first.
        no_wal = WriteOptions()
        no_wal.disable_wal = True  # type: ignore[method-assign,assignment]  # a property at run time
        self._db.set_write_options(no_wal)
        self._buffer: dict[bytes, bytes | None] = {}  # None: a delete

    @property
    def buffered(self) -> int:
        """Writes not applied yet."""
        return len(self._buffer)

    def get(self, key: bytes) -> bytes | None:
        if key in self._buffer:
            return self._buffer[key]
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._buffer[key] = value
        if len(self._buffer) >= self.MAX_BUFFERED:
            self.flush()

    def delete(self, key: bytes) -> None:
        self._buffer[key] = None
        if len(self._buffer) >= self.MAX_BUFFERED:
            self.flush()

    def put_many(self, items: list[tuple[bytes, bytes | None]]) -> None:
        self._buffer.update(items)
        if len(self._buffer) >= self.MAX_BUFFERED:
            self.flush()

    def flush(self) -> None:
        """Apply the buffered writes in one RocksDB write."""
        if not self._buffer:
            return
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for k, v in self._buffer.items():
            if v is None:
                batch.delete(k)
            else:
                batch.put(k, v)
        self._db.write(batch)
        self._buffer.clear()

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        self.flush()
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            yield k, it.value()
            it.next()

    def drop_buffer(self) -> None:
        """Forget writes not yet applied (their batch was aborted)."""
        self._buffer.clear()

    def close(self) -> None:
        self.flush()
        self._db.flush(True)  # memtables to disk: nothing lives only in memory
        self._db.close()


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


# (key, its stored value or None, a scan of the store by prefix) -> decoded value
Load = Callable[[bytes, bytes | None, Callable[[bytes], Iterator[tuple[bytes, bytes]]]], Any]
# (key, decoded value) -> the records to write (None: delete)
Records = Callable[[bytes, Any], list[tuple[bytes, bytes | None]]]


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
