"""The open-loop benchmark reads each decision's event id from its first bytes
(decoding 1.7 KB per decision took CPU from what it measures): the id it reads
is the one fastavro wrote, for any id and any length of the id before it."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.schemas.records import InRecord
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath

PATH = DecisionPath.default()
T0 = 1_790_000_000_000
TP = ("payments.card.v1", 0)


def _decision() -> dict:
    state = StateManager(PATH.name, list(PATH.stores))
    state.open_partition(TP)
    (ev,) = normal_card_payments(1, T0, 1)
    out = PATH.process([InRecord(TP[0], TP[1], 0, b"k", PATH.codec.encode(CARD_SCHEMA, ev),
                                 T0)], T0 + 5, state)
    (d,) = [o for o in out if o.topic_key == "decisions"]
    return PATH.codec.decode(d.value)[1]


DECISION = _decision()


@pytest.fixture(scope="module")
def reader() -> ModuleType:
    root = str(Path(__file__).resolve().parents[2])  # bench/ is not installed
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(root)
        return importlib.import_module("bench.path")


@settings(max_examples=200, deadline=None)
@given(decision_id=st.text(max_size=300), event_id=st.text(max_size=300))
def test_the_event_id_read_from_the_prefix_is_the_one_written(
        reader: ModuleType, decision_id: str, event_id: str) -> None:
    value = PATH.codec.encode(DECISION_SCHEMA, {**DECISION, "decision_id": decision_id,
                                                "event_id": event_id})
    assert reader._decision_event_id(value) == event_id
    reader._check_decision_prefix(PATH.codec)  # the schema still starts as it assumes


def test_a_relay_stand_in_answer_reads_as_its_events_id(reader: ModuleType) -> None:
    """The open loop's baseline (a bare relay chain) answers with the event itself,
    a decision_id spliced in front: the reader must find each event's id there,
    for every kind of event the benchmark offers."""
    events = reader._events(PATH.codec, 300, T0, 5)
    kinds = {PATH.codec.decode(value)[0].name for _, _, value, _ in events}
    assert kinds == {"tripwire.events.CardPayment", "tripwire.events.LoginEvent",
                     "tripwire.events.FpsMessage"}
    for _, _, value, event_id in events:
        assert reader._decision_event_id(reader.stand_in_decision(value)) == event_id


@settings(max_examples=100, deadline=None)
@given(event_id=st.text(min_size=1, max_size=300))
def test_a_stand_in_answer_carries_any_event_id(reader: ModuleType, event_id: str) -> None:
    (ev,) = normal_card_payments(2, T0, 1)
    value = PATH.codec.encode(CARD_SCHEMA, {**ev, "event_id": event_id})
    assert reader._decision_event_id(reader.stand_in_decision(value)) == event_id
