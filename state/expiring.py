"""Entries of a store that expire at an event time: the dedup memory of intake and
the decision memory of the decide stage."""

from __future__ import annotations

import struct
import weakref
from typing import Any

from tripwire.state.manager import StateView

__all__ = ["NEVER", "Expiring"]

NEVER = 2**63 - 1  # an expiry that never comes


class Expiring:
    """Entries of one store that expire at an event time.

    ``d:<key>`` holds ``<expiry><value>`` and goes to the changelog; the index
    ``x:<expiry><key>`` that :meth:`expire` walks is local only (never in the
    changelog: one record per entry instead of two) and is rebuilt from the
    ``d:`` entries the first time a partition expires after being opened.
    """

    _X = struct.Struct(">q")

    def __init__(self, store: str) -> None:
        self.store = store
        # per opened store, once indexed: the earliest expiry it holds (none: NEVER)
        self._next_due: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def get(self, view: StateView, key: bytes) -> bytes | None:
        stored = view.get(self.store, b"d:" + key)
        return None if stored is None else stored[8:]

    def put(self, view: StateView, key: bytes, value: bytes, expiry: int) -> None:
        when = self._X.pack(expiry)
        view.put(self.store, b"d:" + key, when + value)
        view.put_local(self.store, b"x:" + when + key, b"")
        s = view.manager.store(self.store, view.tp)
        if expiry < self._next_due.get(s, expiry):  # indexed: keep the earliest
            self._next_due[s] = expiry

    def expire(self, view: StateView, watermark: int) -> int:
        """Forget entries whose expiry is at or before ``watermark`` (the index is
        read only once the earliest expiry is due)."""
        s = view.manager.store(self.store, view.tp)
        if s not in self._next_due:
            self._reindex(view)
        if watermark < self._next_due[s]:
            return 0
        done: list[bytes] = []
        next_due = NEVER
        for key, _ in view.items(self.store, b"x:"):
            when = self._X.unpack_from(key, 2)[0]
            if when > watermark:
                next_due = when
                break
            done.append(key)
        for key in done:
            view.delete_local(self.store, key)
            view.delete(self.store, b"d:" + key[10:])
        self._next_due[s] = next_due
        return len(done)

    def _reindex(self, view: StateView) -> None:
        """The index of entries restored from the changelog (idempotent)."""
        earliest = NEVER
        for key, stored in list(view.items(self.store, b"d:")):
            view.put_local(self.store, b"x:" + stored[:8] + key[2:], b"")
            earliest = min(earliest, self._X.unpack_from(stored)[0])
        self._next_due[view.manager.store(self.store, view.tp)] = earliest
