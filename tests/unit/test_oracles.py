"""The fast oracle (used where keys have thousands of events) gives the brute-force
oracle's values, out-of-order and late events included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import brute_force, by_prefix_sums, by_time_index

from tripwire.features.spec import FeatureSpec

SPECS = [
    FeatureSpec("n", "card", "count", "10s", allowed_lateness="5s"),
    FeatureSpec("total", "card", "sum", "20s", field="amount", allowed_lateness="3s"),
    FeatureSpec("kinds", "card", "distinct", "15s", field="kind"),
    FeatureSpec("biggest", "card", "max", "8s", field="amount", where={"kind": "a"}),
    FeatureSpec("since", "card", "since_last", "30s", allowed_lateness="2s"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60_000), st.sampled_from(["a", "b"]),
                          st.integers(1, 9)), max_size=40))
def test_fast_oracle_equals_brute_force(raw: list[tuple[int, str, int]]) -> None:
    events = [(t, {"kind": k, "amount": a}) for t, k, a in raw]
    assert by_time_index(SPECS, events) == brute_force(SPECS, events)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60_000), st.sampled_from(["a", "b"]),
                          st.integers(1, 9)), max_size=40), st.sets(st.integers(0, 40)))
def test_prefix_sum_oracle_equals_brute_force(raw: list[tuple[int, str, int]],
                                              rows: set[int]) -> None:
    events = [(t, {"kind": k, "amount": a}) for t, k, a in raw]
    want = brute_force(SPECS, events)
    got = by_prefix_sums(SPECS, events, sorted(rows))
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g["n"] == w["n"] and g["total"] == w["total"]
        if i in rows:
            assert g == w
        else:
            assert g["kinds"] is g["biggest"] is g["since"] is None
