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
from tripwire.streams.decider import DECISION_SCHEMA
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.records import InRecord
from tripwire.streams.state import StateManager

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
