"""The store interface and the in-memory store (tests, backtests, replays).

>>> mem = MemoryStore()
>>> mem.put(b"k", b"v"); mem.get(b"k")
b'v'
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

__all__ = ["KeyValueStore", "MemoryStore"]


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
