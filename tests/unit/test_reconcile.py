"""The reconcile stage sets each stand-in's late decision beside it once, whichever
came first, against a brute-force oracle: live (both logs read as they are
written), catching up (one log read far ahead of the other, the clock long past
both) and through restarts (a new stage from the committed offsets and store)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.controls.standin import ANSWER_SCHEMA, StandInPolicy, decision_identity
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.streams.reconcile import ReconcileStage
from tripwire.streams.topics import topic

CODEC = AvroCodec(SchemaStore.default())
DECISIONS, ANSWERS = topic("decisions"), topic("decide_answers")
T0 = 1_790_000_000_000
HOLD = 5_000
JITTER = 200  # how far out of time order answers from several API workers are appended


def _decision(i: int, t: int, outcome: str) -> dict[str, Any]:
    return {"decision_id": f"d{i:030d}", "event_id": f"e{i}",
            "event_type": "tripwire.events.CardPayment", "entity_key": f"card-{i % 3}",
            "event_time": t, "decided_at": t, "outcome": outcome, "actions": [],
            "rule_hits": [], "features": {}, "feature_errors": {}, "feature_provenance": {},
            "control_errors": [], "control_versions": {}, "engine_version": "t",
            "latency_us": 1, "repeat": False, "subjects": {}, "typology": "",
            "attributes": {}}


def _stand_in(i: int, t: int, outcome: str) -> dict[str, Any]:
    return {"kind": "ANSWER", "reference": f"r{i}", "event_id": f"e{i}",
            "event_type": "tripwire.events.CardPayment", "entity_key": f"card-{i % 3}",
            "identity": f"e{i}", "outcome": outcome, "actions": [], "stand_in": True,
            "reason": "deadline", "decision_id": None, "stand_in_outcome": None, "agreed": None,
            "request_hash": "", "requested_at": t - 100, "answered_at": t, "deadline_ms": 100,
            "worker": "w1"}


class Run:
    """The stage over one partition of each topic, committed after every batch."""

    def __init__(self) -> None:
        self.stage = ReconcileStage(CODEC, hold_ms=HOLD)
        self.state = StateManager(self.stage.name, list(self.stage.stores))
        self.state.stores_by_topic = self.stage.stores_by_topic
        for tp in ((DECISIONS, 0), (ANSWERS, 0)):
            self.state.open_partition(tp)
        self.out: list[tuple[str, dict[str, Any]]] = []
        self.next = {DECISIONS: 0, ANSWERS: 0}

    def batch(self, records: list[InRecord], now: int, answers_at_end: bool) -> None:
        self.stage.at_end = {(ANSWERS, 0)} if answers_at_end else set()
        outs = self.stage.process(records, now, self.state) + self.stage.tick(now, self.state)
        self.out += [(o.topic_key, CODEC.decode(o.value)[1]) for o in outs]
        for r in records:
            self.next[r.topic] = r.offset + 1

    def restart(self) -> None:
        """A new worker: the committed offsets (held decisions read again), the store."""
        committed = self.stage.safe_offsets({(t, 0): o for t, o in self.next.items()})
        stage = ReconcileStage(CODEC, hold_ms=HOLD)
        self.stage, self.next = stage, {t: committed[(t, 0)] for t in self.next}


def _logs(draw: Any) -> tuple[list[InRecord], list[InRecord], Counter[tuple[str, str, str]]]:
    n = draw(st.integers(1, 30))
    decisions, answers, expected = [], [], Counter()
    outcomes = st.sampled_from(["ALLOW", "DENY"])
    for i in range(n):
        d_at = T0 + draw(st.integers(0, 60_000))
        decided = draw(st.booleans()) or draw(st.booleans())  # the pipeline may never
        stood_in = draw(st.booleans())
        d_out, s_out = draw(outcomes), draw(outcomes)
        if decided:
            decisions.append((d_at, _decision(i, d_at, d_out)))
        if stood_in:
            # written around the deadline: before the decision, or up to the hold after
            s_at = d_at + draw(st.integers(-3_000, HOLD - JITTER))
            answers.append((s_at, _stand_in(i, s_at, s_out)))
            if decided:
                expected[(f"r{i}", d_out, s_out)] += 1
    decisions.sort(key=lambda x: x[0])
    # appended nearly in time order (several workers: a little jitter)
    answers.sort(key=lambda x: x[0] + draw(st.integers(0, JITTER)))
    if draw(st.booleans()) and answers:  # someone's plain answer too: ignored
        t, rec = answers[0]
        answers.insert(0, (t, {**rec, "stand_in": False, "reference": "plain"}))
    drec = [InRecord(DECISIONS, 0, k, None, CODEC.encode(DECISION_SCHEMA, d), t)
            for k, (t, d) in enumerate(decisions)]
    arec = [InRecord(ANSWERS, 0, k, None, CODEC.encode(ANSWER_SCHEMA, a), t)
            for k, (t, a) in enumerate(answers)]
    return drec, arec, expected


def _late(run: Run) -> Counter[tuple[str, str, str]]:
    return Counter((r["reference"], r["outcome"], r["stand_in_outcome"])
                   for k, r in run.out if k == "decide_answers")


@st.composite
def _case(draw: Any) -> Any:
    return _logs(draw), draw(st.sampled_from(["live", "catch-up", "restarts"])), \
        draw(st.randoms(use_true_random=False))


@settings(max_examples=150, deadline=None)
@given(_case())
def test_each_stand_in_gets_its_late_decision_once(case: Any) -> None:
    (drec, arec, expected), regime, rnd = case
    logs = {DECISIONS: drec, ANSWERS: arec}
    run = Run()
    if regime == "live":  # read as written: by time; the clock is the record's
        for r in sorted(drec + arec, key=lambda r: r.timestamp_ms):
            run.batch([r], r.timestamp_ms, answers_at_end=True)
        end = max([r.timestamp_ms for r in drec + arec], default=T0) + HOLD + 1
        run.batch([], end, answers_at_end=True)
    else:  # a backlog: each log read at its own pace, the clock far ahead
        now = T0 + 10 * 3_600_000
        while any(run.next[t] < len(logs[t]) for t in logs):
            t = rnd.choice([t for t in logs if run.next[t] < len(logs[t])])
            take = logs[t][run.next[t]:run.next[t] + rnd.randint(1, 6)]
            run.batch(take, now, answers_at_end=run.next[ANSWERS] >= len(arec) and t != ANSWERS)
            if regime == "restarts" and rnd.random() < 0.3:
                run.restart()
        run.batch([], now, answers_at_end=True)
    assert _late(run) == expected
    alerts = [r for k, r in run.out if k == "ops_alerts"]
    assert Counter(a["alert_id"] for a in alerts) == Counter(
        f"stand-in:{ref}" for (ref, d, s), n in expected.items() if d != s for _ in range(n))
    assert run.stage.pending() == 0  # nothing held once the answers have passed


def test_a_decision_is_matched_by_its_events_identity() -> None:
    fps = {"event_type": "tripwire.events.FpsMessage", "event_id": "m2",
           "subjects": {"account": "a1", "transaction": "TX-1"}}
    assert decision_identity(fps) == "TX-1"  # a repeat message: the first's decision
    card = {"event_type": "tripwire.events.CardPayment", "event_id": "e1", "subjects": {}}
    assert decision_identity(card) == "e1"


def test_the_stand_in_is_the_more_severe_of_the_rule_and_the_tier0_controls() -> None:
    from tripwire.controls.engine import Control, ControlSet

    sanctions = Control.checked("sanctions", '''
TIER = 0
APPLIES_TO = ["CardPayment"]
def detect(event, features):
    if event.get("merchant_country") == "KP":
        return {"signal": "sanctioned", "score": 1.0, "reason": "KP"}
    return None
''')
    act = Control.checked("block", '''
def act(event, features, detections):
    if "sanctions" in detections:
        return {"outcome": "DENY", "actions": ["BLOCK_CARD"], "reason": "sanctioned"}
    return None
''')
    slow = Control.checked("velocity", '''
def detect(event, features):
    return {"signal": "always", "score": 1.0, "reason": "needs features"}
''')
    select = ControlSet.from_dir().selection
    policy = StandInPolicy.parse("CardPayment=ALLOW up to 1000 else MANUAL_REVIEW",
                                 ControlSet([sanctions, act, slow, select]))
    kp = policy.answer("CardPayment", {"merchant_country": "KP", "amount_minor": 10})
    assert (kp.outcome, kp.actions) == ("DENY", ("BLOCK_CARD",))
    big = policy.answer("CardPayment", {"merchant_country": "GB", "amount_minor": 5000})
    assert big.outcome == "MANUAL_REVIEW"  # the tier-1 detector does not run
    assert policy.answer("CardPayment", {"merchant_country": "GB",
                                         "amount_minor": 1000}).outcome == "ALLOW"
    for bad in ("CardPayment=MAYBE", "Wire=ALLOW", "CardPayment=DENY up to 5 else ALLOW"):
        try:
            StandInPolicy.parse(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
