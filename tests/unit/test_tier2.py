"""Tier-2 controls run after the decision in a memory-capped process: a huge
allocation fails only its own control, decisions never wait for them, and the
emergency stop halts them."""

from __future__ import annotations

import time

from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.controls.deferred import DeferredRunner
from tripwire.controls.engine import Control, ControlSet
from tripwire.controls.sandbox import Sandbox
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath

HOG = Control.compile("hog", '''TIER = 2
ON_ERROR = "MANUAL_REVIEW"
def detect(event, features):
    if event["amount_minor"] == 7:
        return {"score": len([0] * 1000000000) / 1e9, "reason": "8 GB at once"}
    return None
''')
SEEN = Control.compile("seen", '''TIER = 2
def detect(event, features):
    return {"score": 0.5, "reason": "amount %d" % event["amount_minor"]}
''')


def test_a_huge_allocation_fails_only_its_own_control() -> None:
    box = Sandbox([HOG, SEEN], memory_mb=256)
    try:
        items = [("CardPayment", {"amount_minor": a}, {}, "acc") for a in (1, 7, 3)]
        results = box.run(items)
        assert [[r.control_id for r in rs] for rs in results] == [["hog", "seen"]] * 3
        killed = results[1][0]
        assert killed.error is not None and "memory limit of 256 MB" in killed.error
        assert killed.outcome == "MANUAL_REVIEW"  # its declared fail policy
        assert [r.reason for rs in results for r in rs if r.control_id == "seen"] == \
            ["amount 1", "amount 7", "amount 3"]  # the others all ran
        assert box.restarts >= 1
        (again,) = box.run([("CardPayment", {"amount_minor": 9}, {}, "acc")])  # still serving
        assert [r.error for r in again] == [None, None]
    finally:
        box.close()


def _path() -> DecisionPath:
    base = DecisionPath.default()
    return DecisionPath(base.codec, ControlSet([*base.controls.controls, SEEN]))


def _records(path: DecisionPath, events: list[dict]) -> list[InRecord]:
    return [InRecord("t", 0, i, b"k", path.codec.encode(CARD_SCHEMA, e), e["event_time"])
            for i, e in enumerate(events)]


def test_tier_two_runs_after_the_decision_and_the_emergency_stop_halts_it() -> None:
    path = _path()
    sent: list[OutRecord] = []
    runner = DeferredRunner(lambda: path.controls, path.decider.executions, sent.extend,
                            memory_mb=256)
    path.decider.deferred = runner
    state = StateManager(path.name, list(path.stores))
    now = int(time.time() * 1000)
    events = list(normal_card_payments(5, now - 60_000, 20))
    outs = path.process(_records(path, events[:10]), now, state)
    decided = [path.codec.decode(o.value)[1] for o in outs if o.topic_key == "decisions"]
    inline = [e for o in outs if o.topic_key == "control_executions"
              for e in path.codec.decode(o.value)[1]["executions"]]
    assert len(decided) == 10 and "seen" not in {e["control_id"] for e in inline}
    assert all("seen" not in {h["control_id"] for h in d["rule_hits"]} for d in decided)
    deadline = time.monotonic() + 30
    while runner.done < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    later = [path.codec.decode(o.value)[1] for o in sent]
    assert sorted(e["event_id"] for e in later) == sorted(e["event_id"] for e in events[:10])
    by_event = {d["event_id"]: d["decision_id"] for d in decided}
    assert all(e["decision_id"] == by_event[e["event_id"]] and
               [x["control_id"] for x in e["executions"]] == ["seen"] and
               e["executions"][0]["tier"] == 2 for e in later)

    path.controls.emergency_stop(tier=2)
    path.process(_records(path, events[10:]), now, state)
    runner.close()
    assert len(sent) == 10  # nothing more ran after the stop


def test_without_a_runner_tier_two_runs_in_line_for_replays() -> None:
    path = _path()
    state = StateManager(path.name, list(path.stores))
    now = int(time.time() * 1000)
    outs = path.process(_records(path, list(normal_card_payments(6, now - 60_000, 3))), now,
                        state)
    execs = [e for o in outs if o.topic_key == "control_executions"
             for e in path.codec.decode(o.value)[1]["executions"]]
    assert [e["control_id"] for e in execs].count("seen") == 3
