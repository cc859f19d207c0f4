"""Exact sliding windows against a brute-force oracle, including out-of-order
and late events."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import brute_force

from tripwire.features.spec import FeatureSpec, parse_duration
from tripwire.features.window import update

SPECS = [
    FeatureSpec("n_1m", "card", "count", "1m", allowed_lateness="30s"),
    FeatureSpec("declines_5m", "card", "count", "5m", where={"response": "DECLINED"},
                allowed_lateness="30s"),
    FeatureSpec("amount_2m", "card", "sum", "2m", field="amount", allowed_lateness="30s"),
    FeatureSpec("merchants_3m", "card", "distinct", "3m", field="merchant",
                allowed_lateness="30s"),
    FeatureSpec("max_1m", "card", "max", "1m", field="amount", allowed_lateness="30s"),
    FeatureSpec("since_decline", "card", "since_last", "10m",
                where={"response": "DECLINED"}, allowed_lateness="30s"),
]


def oracle(events: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    return brute_force(SPECS, events)


event = st.tuples(
    st.integers(0, 900_000),  # ms within 15 minutes: windows of 1-10 min overlap a lot
    st.fixed_dictionaries({
        "response": st.sampled_from(["APPROVED", "DECLINED"]),
        "amount": st.integers(1, 10_000),
        "merchant": st.sampled_from(["m1", "m2", "m3", "m4"]),
    }),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=60))
def test_values_equal_the_oracle_in_any_arrival_order(events: list) -> None:
    state: dict[str, Any] = {}
    got = [update(state, SPECS, v, t)[0] for t, v in events]
    assert got == oracle(events)


@settings(max_examples=100, deadline=None)
@given(st.lists(event, min_size=1, max_size=60))
def test_in_order_events_are_never_late(events: list) -> None:
    events = sorted(events, key=lambda e: e[0])
    state: dict[str, Any] = {}
    for t, v in events:
        _, notes = update(state, SPECS, v, t)
        assert not notes
    # state is bounded by the window horizon
    newest = events[-1][0]
    for s in SPECS:
        times, values = state.get(s.state_key, ([], []))
        assert len(times) == len(values) and times == sorted(times)
        for tt in times:
            assert tt > newest - s.lateness_ms - s.window_ms


def test_window_is_half_open_and_includes_the_event() -> None:
    spec = FeatureSpec("n", "card", "count", "1m")
    state: dict[str, Any] = {}
    assert update(state, [spec], {}, 0)[0]["n"] == 1
    assert update(state, [spec], {}, 59_999)[0]["n"] == 2
    assert update(state, [spec], {}, 60_000)[0]["n"] == 2  # t=0 is outside (0, 60000]


def test_late_event_is_reported_and_leaves_state_unchanged() -> None:
    spec = FeatureSpec("n", "card", "count", "10m", allowed_lateness="1m")
    state: dict[str, Any] = {}
    update(state, [spec], {}, 600_000)
    before = copy.deepcopy(state)
    values, notes = update(state, [spec], {}, 500_000)  # 100 s behind, 60 s allowed
    assert values["n"] == 0 and "late" in notes[0]
    assert state == before


def test_entries_per_key_are_capped_and_reported() -> None:
    spec = FeatureSpec("n", "card", "count", "1h")
    state: dict[str, Any] = {}
    for t in range(10):
        values, notes = update(state, [spec], {}, t, max_entries=5)
    assert values["n"] == 6 and "lower bound" in notes[0]  # 5 kept + this event
    assert len(state["n@1"][0]) == len(state["n@1"][1]) == 5


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("30s", 30_000), ("10m", 600_000),
                                          ("1h", 3_600_000), ("7d", 604_800_000), (42, 42)])
def test_durations(text: str | int, ms: int) -> None:
    assert parse_duration(text) == ms


def test_bad_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown entity"):
        FeatureSpec("x", "planet", "count", "1m")
    with pytest.raises(ValueError, match="needs a field"):
        FeatureSpec("x", "card", "sum", "1m")
    with pytest.raises(ValueError, match="duration"):
        FeatureSpec("x", "card", "count", "ten minutes")
