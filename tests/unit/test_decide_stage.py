"""The decide stage (pure, no broker): fragments whose event never comes hold the
input offset back, get a deadline, and are dropped after it — and an event that
does come in time is decided with them."""

from __future__ import annotations

import logging

import pytest

from tripwire.controls.engine import ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.streams.gather import DecisionStage
from tripwire.streams.hops import FEATURE_FRAGMENTS, Packer

CODEC = AvroCodec(SchemaStore.default())
T0 = 1_790_000_000_000
GATHER = ("tripwire.gather.v1", 0)


def _fragment(identity: str, offset: int) -> InRecord:
    (rec,) = Packer().pack(CODEC, FEATURE_FRAGMENTS, "gather", [
        (identity.encode(), [identity, "card", "tok-1", {"card_auths_1m": 1}, []])],
        as_json=True)
    return InRecord(*GATHER, offset, None, rec.value, T0)


def test_fragments_whose_event_never_comes_are_dropped_after_the_orphan_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    stage = DecisionStage(CODEC, ControlSet.from_dir())
    state = StateManager(stage.name, list(stage.stores))
    assert stage.process([_fragment("CardPayment:lost", 0)], T0, state) == []
    assert "CardPayment:lost" in stage.pending
    assert stage.safe_offsets({GATHER: 1}) == {GATHER: 0}  # held back while it waits

    stage.tick(T0 + stage.ORPHAN_MS - 1, state)  # its deadline (set as the batch ended) not due
    assert "CardPayment:lost" in stage.pending
    with caplog.at_level(logging.WARNING, logger="tripwire.streams.gather"):
        assert stage.tick(T0 + 2 * stage.ORPHAN_MS, state) == []
    assert stage.pending == {} and "its event never arrived" in caplog.text
    assert stage.safe_offsets({GATHER: 1}) == {GATHER: 1}  # nothing held back any more


def test_many_orphans_each_get_one_deadline() -> None:
    stage = DecisionStage(CODEC, ControlSet.from_dir())
    state = StateManager(stage.name, list(stage.stores))
    stage.process([_fragment(f"CardPayment:{i}", i) for i in range(50)], T0, state)
    assert len(stage._deadlines) == 50  # process() ticks at the end of the batch
    stage.tick(T0 + 1, state)
    assert len(stage._deadlines) == 50  # not pushed again
    stage.tick(T0 + stage.ORPHAN_MS + 1, state)
    assert stage.pending == {}
