"""The decision memory kept compressed with a dictionary stored beside it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.controls.decider import DECISIONS_STORE, Decider
from tripwire.features.engine import FeatureLibrary
from tripwire.features.kinds import EVENT_KINDS
from tripwire.features.library import DEFAULT_FEATURES
from tripwire.schemas.records import InRecord
from tripwire.state.compact import DICTIONARY_PREFIX, CompactionError, Compactor
from tripwire.state.manager import StateManager, StateView
from tripwire.streams.decision_path import DecisionPath

PATH = DecisionPath.default()
T0 = 1_790_000_000_000
TP = ("payments.card.v1", 0)
CARD_KIND = EVENT_KINDS[CARD_SCHEMA]


def _decide(state: StateManager, events: list[dict]) -> list[bytes]:
    """The encoded decisions of ``events`` (remembered in ``state``)."""
    batch = [InRecord(TP[0], TP[1], i, b"k", PATH.codec.encode(CARD_SCHEMA, ev), T0)
             for i, ev in enumerate(events)]
    return [o.value for o in PATH.process(batch, T0 + 5, state) if o.topic_key == "decisions"]


def _state() -> StateManager:
    state = StateManager(PATH.name, list(PATH.stores))
    state.open_partition(TP)
    return state


def _identity(ev: dict) -> str:
    return f"{CARD_KIND.short}:{ev['event_id']}"


def _events() -> list[dict]:
    return [*normal_card_payments(3, T0, 20), *magstripe_contactless_attack(4, T0, 5)]


def test_remembered_decisions_are_small_and_come_back_whole() -> None:
    state, events = _state(), _events()
    decisions = _decide(state, events)
    view = state.view(*TP)
    decider = PATH.decider
    for ev, encoded in zip(events, decisions, strict=True):
        stored = decider.memory.get(view, _identity(ev).encode())
        assert stored is not None and stored[:1] == b"Z"
        assert len(stored) < len(encoded) * 0.3  # ~1.7 KB → a few hundred bytes
        again = decider.recall(_identity(ev), view)
        assert again is not None
        original = PATH.codec.decode(encoded)[1]
        assert PATH.codec.decode(again.value)[1] == {**original, "repeat": True}


def test_the_dictionary_goes_to_the_changelog_once_and_a_restore_reads_everything() -> None:
    state, events = _state(), _events()
    _decide(state, events)
    changes = [(key, value) for store, _, key, value in state.pending if store == DECISIONS_STORE]
    dict_writes = [k for k, _ in changes if k.startswith(DICTIONARY_PREFIX)]
    assert len(dict_writes) == 1
    # another worker (another library version, so another dictionary) restores the
    # partition from the changelog alone and answers every repeat
    restored = _state()
    for offset, (key, value) in enumerate(changes):
        restored.apply(DECISIONS_STORE, TP, key, value, offset)
    other = Decider(PATH.codec, PATH.controls,
                    provenance=FeatureLibrary(DEFAULT_FEATURES[:3]).feature_meta())
    assert other.compactor.dictionary_id != PATH.decider.compactor.dictionary_id
    view = restored.view(*TP)
    for ev in events:
        again = other.recall(_identity(ev), view)
        assert again is not None and PATH.codec.decode(again.value)[1]["event_id"] == \
            ev["event_id"]


def test_decisions_remembered_before_compaction_are_still_read() -> None:
    state = _state()
    view = state.view(*TP)
    (ev,) = list(normal_card_payments(5, T0, 1))
    (encoded,) = _decide(_state(), [ev])
    PATH.decider.memory.put(view, b"old", encoded, T0 + 10**9)  # stored as it was
    again = PATH.decider.recall("old", view)
    assert again is not None
    assert PATH.codec.decode(again.value)[1]["event_id"] == ev["event_id"]


def _store_view() -> StateView:
    state = StateManager("p", ["s"])
    state.open_partition(TP)
    return state.view(*TP)


def test_a_value_whose_dictionary_is_missing_is_a_clear_error() -> None:
    packed = Compactor("s", b"dictionary one " * 20).pack(_store_view(), b"dictionary one and two")
    with pytest.raises(CompactionError, match="not in partition"):
        Compactor("s", b"another dictionary " * 20).unpack(_store_view(), packed)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000), st.binary(min_size=1, max_size=2000))
def test_pack_unpack_round_trip(value: bytes, dictionary: bytes) -> None:
    view = _store_view()
    c = Compactor("s", dictionary)
    assert c.unpack(view, c.pack(view, value)) == value
    assert Compactor("s", b"x" * 64).unpack(view, c.pack(view, value)) == value  # by id
