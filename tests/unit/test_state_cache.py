"""The decoded-state cache spreads a commit's write-back over its batches: after a
batch it writes back the values changed for the first time since the last
commit; a value changed again waits for the full write-back before the commit.
Whatever the batches, what a commit leaves in the store and in the changelog is
every value as it is at the commit."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.state.manager import StateManager

TP = ("t", 0)
STORE = "counts"


def _manager() -> tuple[StateManager, Any]:
    state = StateManager("test", [STORE])
    state.open_partition(TP)
    cache = state.decoded(STORE, lambda b: {"n": 0} if b is None else json.loads(b),
                          lambda v: json.dumps(v, sort_keys=True).encode())
    return state, cache


def _touch(state: StateManager, cache: Any, key: bytes, by: int = 1) -> None:
    cache.get(state, TP, key)["n"] += by


def _written(state: StateManager) -> dict[bytes, int]:
    """The changelog records produced so far, the last one per key (and cleared)."""
    out = {k: json.loads(v)["n"] for _, _, k, v in state.pending if v is not None}
    state.pending = []
    return out


def test_a_batch_writes_back_first_changes_and_the_commit_the_rest() -> None:
    state, cache = _manager()
    _touch(state, cache, b"a")
    _touch(state, cache, b"b")
    state.checkpoint(full=False)  # after batch 1
    assert _written(state) == {b"a": 1, b"b": 1}
    _touch(state, cache, b"a")  # changed again: waits for the commit
    _touch(state, cache, b"c")
    state.checkpoint(full=False)  # after batch 2
    assert _written(state) == {b"c": 1}
    assert json.loads(state.store(STORE, TP).get(b"a") or b"{}") == {"n": 1}
    state.checkpoint()  # before the commit
    assert _written(state) == {b"a": 2}
    assert json.loads(state.store(STORE, TP).get(b"a") or b"{}") == {"n": 2}
    _touch(state, cache, b"a")  # a new commit: its first change goes after the batch
    state.checkpoint(full=False)
    assert _written(state) == {b"a": 3}


def test_dropped_partitions_forget_what_was_written_back() -> None:
    state, cache = _manager()
    _touch(state, cache, b"a")
    state.checkpoint(full=False)
    cache.drop([TP])  # revoked or rolled back: restored again from the changelog
    _written(state)
    _touch(state, cache, b"a")
    state.checkpoint(full=False)
    assert _written(state) == {b"a": 2}  # read back from the store, written at once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]),
                                   st.integers(1, 5)), max_size=6)
                .map(lambda b: (b, False)) | st.just(([], True)), max_size=30))
def test_every_commit_leaves_every_value_as_it_is(
        steps: list[tuple[list[tuple[bytes, int]], bool]]) -> None:
    """Batches of changes, with commits (full write-backs) anywhere between them:
    at every commit the store and the last changelog record of every key hold its
    value at that moment."""
    state, cache = _manager()
    truth: dict[bytes, int] = {}
    log: dict[bytes, int] = {}
    for batch, commit in [*steps, ([], True)]:
        for key, by in batch:
            _touch(state, cache, key, by)
            truth[key] = truth.get(key, 0) + by
        state.checkpoint(full=not batch and commit)
        log.update(_written(state))
        if commit:
            assert log == truth
            store = state.store(STORE, TP)
            assert {k: json.loads(store.get(k) or b"{}")["n"] for k in truth} == truth


def test_the_keys_used_longest_ago_are_forgotten_first() -> None:
    """A key in use all along (a hot key) stays decoded however many other keys
    come and go; the others are read back from the store as they were."""
    state = StateManager("test", [STORE])
    state.open_partition(TP)
    loads: list[bytes] = []

    def decode(b: bytes | None) -> dict[str, int]:
        loads.append(b or b"")
        return {"n": 0} if b is None else json.loads(b)

    cache = state.decoded(STORE, decode, lambda v: json.dumps(v).encode(), max_keys=3)
    for i in range(20):
        _touch(state, cache, b"hot")
        _touch(state, cache, f"cold-{i}".encode())
        state.checkpoint()
    assert len(loads) == 21  # each key read once: the hot one never again
    assert cache.get(state, TP, b"hot") == {"n": 20}
    assert cache.get(state, TP, b"cold-0") == {"n": 1}  # forgotten, read back
