"""Exact sliding windows against a brute-force oracle, including out-of-order
and late events."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import brute_force

from tripwire.features import window
from tripwire.features.engine import load_state, state_records
from tripwire.features.spec import FeatureSpec, parse_duration
from tripwire.features.window import Column, update
from tripwire.state.memory import MemoryStore

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
        col = state.get(s.state_key, Column())
        times = col.times
        assert len(times) == len(col.vals) and times == sorted(set(times))
        for tt in times:  # expired buckets wait to be removed in batches
            assert tt > newest - s.lateness_ms - s.window_ms - 2 * window.PAGE_MS or \
                len(times) < 4 * window._FORGET_AT


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


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hot-key machinery at the sizes of a test: cursors from 2 buckets on, two of
    them per column, pages from 8 entries on and records of 3, expired buckets
    removed in threes."""
    monkeypatch.setattr(window, "DIRECT", 1)
    monkeypatch.setattr(window, "MAX_CURSORS", 2)
    monkeypatch.setattr(window, "PAGED_AT", 8)
    monkeypatch.setattr(window, "PAGE_MS", 50_000)
    monkeypatch.setattr(window, "_FORGET_AT", 3)
    monkeypatch.setattr(window, "CHUNK", 3)


# a few hundred events on few milliseconds: buckets shared, cursors slid both ways
crowded = st.tuples(
    st.integers(0, 400_000).map(lambda t: t - t % 997),
    st.fixed_dictionaries({
        "response": st.sampled_from(["APPROVED", "DECLINED"]),
        "amount": st.integers(1, 100),
        "merchant": st.sampled_from(["m1", "m2", "m3", "m4", "m5", "m6"]),
    }),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # constants only
@given(st.lists(crowded, max_size=250), st.integers(0, 250))
def test_cursors_and_pages_equal_the_oracle(tiny: None, events: list, reload_at: int) -> None:
    """Every aggregate through cursors (several per column, late events among
    on-time ones), with the state written to a store as records and pages and read
    back part-way (a restart): the same values as the oracle."""
    store = MemoryStore()
    state: dict[str, Any] = {}
    got = []
    for i, (t, v) in enumerate(events):
        if i == reload_at:
            store.put_many(state_records(b"card|c", state))
            state = load_state(b"card|c", store.get(b"card|c"), store.items)
        got.append(update(state, SPECS, v, t)[0])
        store.put_many(state_records(b"card|c", state))
    assert got == oracle(events)
    assert load_state(b"card|c", store.get(b"card|c"), store.items) == state


def test_a_hot_key_is_exact_and_its_memory_bounded_by_the_window() -> None:
    """20 events per millisecond for 80 s of a 1-minute count (1.6 million events),
    2 % of them up to 3 s late: exact against counting directly, and never more
    buckets than milliseconds in the window and its lateness."""
    import random

    rng = random.Random(7)
    spec = FeatureSpec("n", "system", "count", "1m", allowed_lateness="5s")
    total = FeatureSpec("s", "system", "sum", "1m", field="amount", allowed_lateness="5s")
    state: dict[str, Any] = {}
    counts = [0] * 80_001  # per millisecond, on-time events only
    sums = [0] * 80_001
    newest = 0
    biggest = 0
    for ms in range(0, 80_000):
        for k in range(20):
            t = ms - rng.randrange(3000) if k == 0 and ms % 50 == 0 and ms > 3000 else ms
            amount = rng.randrange(1, 1000)
            got, notes = update(state, [spec, total], {"amount": amount}, t)
            assert not notes
            newest = max(newest, t)
            counts[t] += 1
            sums[t] += amount
            if (k == 19 and ms % 997 == 0) or t != ms:  # check a sample, and every late one
                lo = max(t - 60_000 + 1, 0)
                assert got["n"] == sum(counts[lo:t + 1])
                assert got["s"] == sum(sums[lo:t + 1])
        biggest = max(biggest, len(state["n@1"].times))
    assert biggest <= 65_000 + window._FORGET_AT
    assert len(state["n@1"].cursors) <= window.MAX_CURSORS


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 900_000), st.fixed_dictionaries({
    "event_type": st.sampled_from(["CardPayment", "LoginEvent", "FpsMessage"]),
    "kind": st.sampled_from(["AUTHORISATION", "TOPUP"]),
    "type": st.sampled_from(["LOGIN_FAILED", "LOGIN_SUCCEEDED"]),
    "amount": st.integers(1, 500)})), max_size=40))
def test_the_librarys_filter_by_event_type_changes_no_value(events: list) -> None:
    """``FeatureLibrary.compute`` tells ``update`` which specs an event's type rules
    out; the values and the state are those of every spec's own filter."""
    from tripwire.features.engine import FeatureLibrary

    specs = [FeatureSpec("auths", "card", "count", "1m", where={
                 "event_type": "CardPayment", "kind": "AUTHORISATION"}),
             FeatureSpec("logins", "card", "count", "1m", where={
                 "event_type": ["LoginEvent", "FpsMessage"], "type": "LOGIN_FAILED"}),
             FeatureSpec("amounts", "card", "sum", "1m", field="amount"),
             FeatureSpec("fps", "card", "max", "1m", field="amount",
                         where={"event_type": "FpsMessage"})]
    assert [s.matches_type("FpsMessage") for s in specs] == [False, True, True, True]
    lib = FeatureLibrary(specs)
    filtered: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for t, view in sorted(events, key=lambda e: e[0]):
        assert lib.compute("card", filtered, view, t) == update(plain, specs, view, t)
        assert [sorted(filtered)] == [sorted(plain)]
