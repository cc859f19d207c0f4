"""A feature node applies its requests in one order fixed by the input logs,
whatever the interleaving in which the intakes' records reach it: the order of
(order time, source, offset), each request once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.streams.align import Aligner, source_key

SOURCES = [f"in:{i}" for i in range(4)]


def items(a: Aligner) -> list:
    return [item for _, item in a.ready()]


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, int, int]], list[tuple]]:
    """Each source's requests (non-decreasing order times), and one interleaving of
    them with progress markers, idle markers and requests sent again."""
    logs: dict[str, list[int]] = {}
    for s in SOURCES:
        times = sorted(draw(st.lists(st.integers(0, 50), max_size=12)))
        logs[s] = times
    cursor = dict.fromkeys(SOURCES, 0)
    steps: list[tuple] = []
    while any(cursor[s] < len(logs[s]) for s in SOURCES):
        s = draw(st.sampled_from([s for s in SOURCES if cursor[s] < len(logs[s])]))
        i = cursor[s]
        steps.append(("hold", s, i, logs[s][i]))
        cursor[s] += 1
        what = draw(st.sampled_from(["none", "none", "progress", "again"]))
        if what == "progress":
            steps.append(("advance", s, logs[s][i]))
        elif what == "again":  # an intake that restarted sends an earlier request again
            j = draw(st.integers(0, i))
            steps.append(("hold", s, j, logs[s][j]))
    for s in SOURCES:  # at the end of their logs
        steps.append(("idle", s, logs[s][-1] if logs[s] else 0))
    requests = [(t, s, i) for s in SOURCES for i, t in enumerate(logs[s])]
    return requests, steps


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_any_interleaving_applies_the_same_order(case: tuple) -> None:
    requests, steps = case
    a = Aligner(SOURCES)
    applied: list[tuple[int, str, int]] = []
    highest: dict[str, int] = {}  # the node's applied positions (FeatureStage.applied)
    for step in steps:
        if step[0] == "hold":
            _, s, i, t = step
            if i > highest.get(s, -1):  # one applied before is skipped by the node
                a.hold(s, "card", i, t, (t, s, i), record_offset=len(applied))
        elif step[0] == "advance":
            a.advance(step[1], step[2])
        else:
            a.idle(step[1], step[2])
        for _, (t, s, i) in a.ready():
            highest[s] = i
            applied.append((t, s, i))
    assert applied == sorted(requests)  # every request once, in (time, source, offset) order
    assert len(a) == 0 and a.oldest_record() is None


def test_a_silent_source_holds_everything_back_until_it_speaks() -> None:
    a = Aligner(SOURCES)
    for n, s in enumerate(SOURCES[:3]):
        a.hold(s, "card", 0, 100 + n, s, record_offset=n)
    assert items(a) == []  # in:3 said nothing: it may still send an earlier request
    assert a.oldest_record() == 0  # so the node commits no input past what it holds
    a.advance("in:3", 101)
    assert items(a) == ["in:0"]  # in:3 reached 101: only what is before it
    a.idle("in:3", 101)
    assert items(a) == []  # in:0 reached only 100: it may still send one at 100
    a.idle("in:0", 100)
    assert items(a) == ["in:1"]  # in:2 may not: it is at 102 already
    a.idle("in:1", 101)
    assert items(a) == ["in:2"]
    assert a.oldest_record() is None


def test_after_an_idle_mark_a_request_is_never_applied_before_an_earlier_one() -> None:
    """A source marked idle holds nothing back; what it sends next comes at the
    time it is read (the intake's order time), after what was applied meanwhile."""
    a = Aligner(["in:0", "in:1"])
    a.idle("in:1", 50)
    a.hold("in:0", "card", 0, 80, "first", 0)
    assert items(a) == ["first"]
    a.hold("in:1", "card", 0, 90, "second", 1)  # in:1 busy again: in:0 may be behind it
    assert items(a) == []
    a.advance("in:0", 95)
    assert items(a) == ["second"]


def test_without_sources_every_request_is_ready_at_once() -> None:
    a = Aligner()
    a.hold("in:0", "card", 5, 10, "x", 0)
    assert items(a) == ["x"]


def test_a_request_from_a_source_that_was_idle_comes_after_what_was_applied() -> None:
    """in:1 was marked idle by one intake and moved to another, which places its
    next record at the record's timestamp: the node puts it after what it applied
    meanwhile, never before."""
    a = Aligner(["in:0", "in:1"])
    a.idle("in:1", 100)
    a.hold("in:0", "card", 0, 150, "applied", 0)
    assert list(a.ready()) == [(150, "applied")]
    a.hold("in:1", "card", 0, 120, "late", 1)  # an earlier timestamp, read later
    a.advance("in:0", 200)
    assert list(a.ready()) == [(151, "late")] and a.clamped == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SOURCES), st.integers(0, 30),
                          st.sampled_from(["hold", "hold", "advance", "idle"])), max_size=60))
def test_whatever_arrives_the_applied_order_never_goes_back(steps: list) -> None:
    """Idle marks anywhere, timestamps going back: each request is applied once and
    the order it is applied in is the order of the keys the node gives it."""
    a = Aligner(SOURCES)
    offsets = dict.fromkeys(SOURCES, 0)
    keys = []
    held = 0
    for s, t, what in steps:
        if what == "hold":
            a.hold(s, "card", offsets[s], t, (s, offsets[s]), record_offset=0)
            offsets[s] += 1
            held += 1
        elif what == "advance":
            a.advance(s, t)
        else:
            a.idle(s, t)
        keys += [(order_ms, source_key(src), off) for order_ms, (src, off) in a.ready()]
    for s in SOURCES:
        a.idle(s, 10**6)
    keys += [(order_ms, source_key(src), off) for order_ms, (src, off) in a.ready()]
    assert keys == sorted(keys) and len(keys) == len(set(keys)) == held
