"""Values of a store compressed with a zstd dictionary kept in that same store.

The decision memory keeps every decision for days so that a repeat gets the same
answer with its features. Most of an encoded decision is the same on every
event: feature names, their provenance, control ids, the event type. A zstd
raw-content dictionary made of those compresses a 2.6 KB decision to ~520
bytes in ~7 µs at zstd's fast level -1 (level 3: ~490 bytes in ~17 µs;
docs/performance.md, 2026-11-29 and 2026-12-03), which is also ~80 % less
changelog, state and restore.

Stored values are ``b"Z" + <dictionary id, 8 bytes> + <zstd frame>``. The
dictionary itself is a value of the store (key ``z:<id>``), written through the
changelog the first time a partition's store uses it, so whoever restores the
partition — another worker, a later version whose dictionary differs — reads
every value back. A value that does not start with ``Z`` was stored before
compaction and is returned as it is (an encoded record starts with ``0xC3`` or
``0x00``).

>>> from tripwire.state.manager import StateManager
>>> m = StateManager("doc", ["s"])
>>> m.open_partition(("t", 0)) and None
>>> view = m.view("t", 0)
>>> c = Compactor("s", b"the quick brown fox jumps over the lazy dog" * 3)
>>> packed = c.pack(view, b"the lazy dog jumps over the quick brown fox")
>>> packed[:1], len(packed) < 43
(b'Z', True)
>>> c.unpack(view, packed)
b'the lazy dog jumps over the quick brown fox'
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from typing import Any

import zstandard

from tripwire.state.manager import StateView

__all__ = ["DICTIONARY_PREFIX", "MARK", "CompactionError", "Compactor"]

logger = logging.getLogger(__name__)

MARK = b"Z"
DICTIONARY_PREFIX = b"z:"
_ID = 8


class CompactionError(Exception):
    """A compacted value whose dictionary is not in the store."""


def _dictionary(raw: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


class Compactor:
    """Packs values of ``store`` with ``dictionary``; unpacks with whichever
    dictionary a value names (looked up in the store, then kept in memory)."""

    def __init__(self, store: str, dictionary: bytes, level: int = -1) -> None:
        self.store = store
        self.dictionary = dictionary
        self.dictionary_id = hashlib.blake2b(dictionary, digest_size=_ID).digest()
        self._compressor = zstandard.ZstdCompressor(
            level=level, dict_data=_dictionary(dictionary), write_checksum=False,
            write_dict_id=False, write_content_size=True)
        self._decompressors: dict[bytes, zstandard.ZstdDecompressor] = {
            self.dictionary_id: zstandard.ZstdDecompressor(dict_data=_dictionary(dictionary))}
        # the stores (one per open partition) known to hold this dictionary
        self._kept: weakref.WeakSet[Any] = weakref.WeakSet()

    def pack(self, view: StateView, value: bytes) -> bytes:
        """``value`` compressed; the dictionary is stored with the partition first."""
        s = view.manager.store(self.store, view.tp)
        if s not in self._kept:
            key = DICTIONARY_PREFIX + self.dictionary_id  # the id is the content's hash
            if view.get(self.store, key) is None:
                view.put(self.store, key, self.dictionary)
            self._kept.add(s)
        return MARK + self.dictionary_id + self._compressor.compress(value)

    def unpack(self, view: StateView, stored: bytes) -> bytes:
        """The value ``pack`` was given (values stored uncompressed come back as they are)."""
        if stored[:1] != MARK:
            return stored
        dictionary_id = stored[1:1 + _ID]
        d = self._decompressors.get(dictionary_id)
        if d is None:
            raw = view.get(self.store, DICTIONARY_PREFIX + dictionary_id)
            if raw is None:
                raise CompactionError(f"{self.store}: dictionary {dictionary_id.hex()} is not "
                                      f"in partition {view.tp}")
            d = self._decompressors[dictionary_id] = zstandard.ZstdDecompressor(
                dict_data=_dictionary(raw))
        return d.decompress(stored[1 + _ID:])
