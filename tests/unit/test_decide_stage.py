"""The decide stage (pure, no broker): fragments whose event never comes hold the
input offset back, get a deadline, and are dropped after it — and an event that
does come in time is decided with them; a node that falls silent is waited for
the node timeout, or the backlog's for an event that came late."""

from __future__ import annotations

import logging

import pytest

from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.controls.engine import ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.streams.gather import DecisionStage
from tripwire.streams.hops import ALIVE, DECISION_REQUESTS, FEATURE_FRAGMENTS, Packer

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


def _request(identity: str, event: bytes, arrived_ms: int, offset: int) -> InRecord:
    (rec,) = Packer().pack(CODEC, DECISION_REQUESTS, "gather", [
        (identity.encode(), {"identity": identity, "event": event, "nodes": ["card"],
                             "arrived_ms": arrived_ms, "repeat": False})])
    return InRecord(*GATHER, offset, None, rec.value, T0)


def _alive(entity: str, offset: int) -> InRecord:
    (rec,) = Packer().pack(CODEC, FEATURE_FRAGMENTS, "gather", [],
                           broadcast=[[ALIVE, entity, "", {}, []]], as_json=True)
    return InRecord(*GATHER, offset, None, rec.value, T0)


def test_a_backlog_s_event_waits_longer_for_a_silent_node_than_a_fresh_one() -> None:
    """A node that falls silent (its worker killed) costs a fresh event its features
    after the node timeout; an event that was in a backlog already (its request
    came long after it arrived) waits the backlog's timeout for it: time for the
    group to move the dead worker's partitions."""
    stage = DecisionStage(CODEC, ControlSet.from_dir(), node_timeout_ms=2_000,
                          backlog_timeout_ms=60_000)
    state = StateManager(stage.name, list(stage.stores))
    fresh, late = normal_card_payments(1, T0 - 60_000, 2)
    stage.process([_alive("card", 0)], T0, state)  # the card node, heard last now
    stage.process([_request(f"CardPayment:{e['event_id']}", CODEC.encode(CARD_SCHEMA, e),
                            arrived, n) for n, (e, arrived) in enumerate(
                                [(fresh, T0 - 50), (late, T0 - 30_000)], start=1)], T0, state)
    decided: dict[str, tuple[int, str]] = {}
    for n, t in enumerate(range(T0 + 250, T0 + 90_000, 250), start=3):
        # input flows on (another entity's node beats): the stage is not cut off
        for o in stage.process([_alive("device", n)], t, state):
            if o.topic_key == "decisions":
                d = CODEC.decode(o.value)[1]
                decided[d["event_id"]] = (t - T0, d["feature_errors"]["card"])
    assert decided == {
        fresh["event_id"]: (2_000, "no answer: the node was silent for more than 2000 ms"),
        late["event_id"]: (60_000, "no answer: the node was silent for more than 60000 ms")}
