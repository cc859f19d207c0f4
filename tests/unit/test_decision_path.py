import pytest

from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    FPS_SCHEMA,
    fps_messages,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.intake import DEDUP_STORE

PATH = DecisionPath.default()
T0 = 1_790_000_000_000


@pytest.fixture
def state() -> StateManager:
    return StateManager(PATH.name, list(PATH.stores))


def _rec(value: bytes | None, offset: int = 0, topic: str = "payments.card.v1") -> InRecord:
    return InRecord(topic, 0, offset, b"k", value, T0)


def _answers(batch: list[InRecord], now: int, state: StateManager) -> list[OutRecord]:
    """Decisions and quarantine records: one per input (control executions aside)."""
    return [o for o in PATH.process(batch, now, state) if o.topic_key != "control_executions"]


def _decode(out: OutRecord) -> dict:
    return PATH.codec.decode(out.value)[1]


def _card(ev: dict, offset: int = 0) -> InRecord:
    return _rec(PATH.codec.encode(CARD_SCHEMA, ev), offset)


def test_everyday_payment_is_allowed_with_its_features(state: StateManager) -> None:
    ev = next(normal_card_payments(1, T0, 1))
    (out,) = _answers([_card(ev)], T0 + 3, state)
    d = _decode(out)
    assert out.topic_key == "decisions" and out.key == ev["card_token"].encode()
    assert d["outcome"] == "ALLOW" and d["actions"] == [] and d["rule_hits"] == []
    assert d["event_id"] == ev["event_id"] and d["latency_us"] == 3000
    assert d["features"]["domestic"] is True
    assert d["features"]["amount_gbp_minor"] == ev["amount_minor"]
    assert d["control_versions"] == PATH.controls.versions()


def test_magstripe_contactless_abroad_is_denied_with_reason(state: StateManager) -> None:
    ev = next(magstripe_contactless_attack(2, T0, 1))
    (out,) = _answers([_card(ev)], T0, state)
    d = _decode(out)
    assert d["outcome"] == "DENY"
    assert d["actions"] == ["BLOCK_CARD", "CUSTOMER_ALERT"]
    assert d["rule_hits"][0]["control_id"] == "card_outliers"
    assert ev["merchant_country"] in d["rule_hits"][0]["reason"]


def test_repeat_gets_the_same_decision_and_conflict_is_quarantined(
        state: StateManager) -> None:
    ev = next(normal_card_payments(5, T0, 1))
    (first,) = _answers([_card(ev, 1)], T0, state)
    (again,) = _answers([_card(ev, 2)], T0 + 50, state)
    a, b = _decode(first), _decode(again)
    assert b["repeat"] is True
    assert {**b, "repeat": False} == a  # same decision, same time, same versions
    (conflict,) = _answers([_card({**ev, "amount_minor": ev["amount_minor"] + 1}, 3)],
                               T0 + 60, state)
    q = _decode(conflict)
    assert conflict.topic_key == "quarantine"
    assert q["reasons"][0]["code"] == "DUPLICATE_CONFLICT"
    assert q["reasons"][0]["field"] == "event_id"


def test_every_input_gives_exactly_one_output(state: StateManager) -> None:
    events = list(normal_card_payments(9, T0, 20))
    batch = [_card(e, i) for i, e in enumerate(events)]
    batch.insert(5, _rec(b"not avro at all", 99))
    decision = _decode(_answers(batch[:1], T0, StateManager(PATH.name, list(PATH.stores))
                                    )[0])
    batch.insert(7, _rec(PATH.codec.encode(DECISION_SCHEMA, decision), 100))
    batch.insert(9, _card({**events[3], "event_id": "not-a-uuid"}, 101))
    outs = _answers(batch, T0, state)
    assert len(outs) == len(batch)
    q = [_decode(o) for o in outs if o.topic_key == "quarantine"]
    assert [r["reasons"][0]["code"] for r in q] == ["BAD_MAGIC", "UNEXPECTED_TYPE",
                                                     "INVALID_ID"]
    assert q[0]["original"] == b"not avro at all" and q[0]["source_offset"] == 99
    assert q[2]["reasons"][0]["field"] == "event_id" and q[2]["stage"] == "validate"


def test_fps_response_needs_a_known_original(state: StateManager) -> None:
    req, resp = list(fps_messages(3, T0, 1))[:2]
    enc = PATH.codec.encode
    (orphan,) = _answers([_rec(enc(FPS_SCHEMA, resp), 1, "payments.fps.v1")], T0, state)
    assert _decode(orphan)["reasons"][0]["code"] == "UNKNOWN_ORIGINAL"
    outs = _answers([_rec(enc(FPS_SCHEMA, req), 2, "payments.fps.v1"),
                         _rec(enc(FPS_SCHEMA, resp), 3, "payments.fps.v1")], T0, state)
    assert [o.topic_key for o in outs] == ["decisions", "decisions"]
    # a scheme repeat: new message id and time, same transaction → same decision
    rep = {**req, "event_id": resp["event_id"][:-1] + "0", "event_time": req["event_time"] + 9,
           "is_repeat": True}
    (again,) = _answers([_rec(enc(FPS_SCHEMA, rep), 4, "payments.fps.v1")], T0, state)
    assert _decode(again)["repeat"] is True
    assert _decode(again)["decision_id"] == _decode(outs[0])["decision_id"]


def test_identities_expire_after_the_ttl_in_event_time() -> None:
    path = DecisionPath(PATH.codec, PATH.controls, dedup_ttl_ms=1000)
    st = StateManager(path.name, list(path.stores))
    a, b = list(normal_card_payments(4, T0, 2))
    b = {**b, "event_time": a["event_time"] + 5000}
    path.process([_card(a, 1)], T0, st)
    view = st.view("payments.card.v1", 0)
    assert len(list(view.items(DEDUP_STORE))) == 2  # the entry and its local index
    path.process([_card(b, 2)], T0, st)  # b is > 1 s of event time after a
    keys = [k for k, _ in view.items(DEDUP_STORE, b"d:")]
    assert keys == [f"CardPayment:{b['event_id']}".encode().join([b"d:", b""])]


def test_every_control_execution_is_recorded(state: StateManager) -> None:
    ev = next(magstripe_contactless_attack(3, T0, 1))
    outs = PATH.process([_card(ev)], T0, state)
    decision = _decode(next(o for o in outs if o.topic_key == "decisions"))
    (log,) = [_decode(o) for o in outs if o.topic_key == "control_executions"]
    assert log["event_id"] == ev["event_id"] and log["decision_id"] == decision["decision_id"]
    execs = log["executions"]  # one record per event: the network in run order
    controls = PATH.controls
    ran = [c.control_id for stage in ("DETECTOR", "ACTION")
           for c in controls.for_type("CardPayment", stage) if c.wanted(ev)] + ["select"]
    assert "stolen_card_topups" not in ran  # WHEN kind == TOPUP: not run, not recorded
    assert [e["control_id"] for e in execs] == ran  # the whole network, in order
    assert [e["stage"] for e in execs][-2:] == ["ACTION", "SELECTION"]
    (e,) = [x for x in execs if x["control_id"] == "card_outliers"]
    import json
    assert e["error"] is None and e["tier"] == 1
    assert e["control_version"] == decision["control_versions"]["card_outliers"]
    assert json.loads(e["output_json"])["signal"] == "magstripe_contactless_abroad"
    inputs = json.loads(e["inputs_json"])  # what it was given: the names it reads
    assert inputs["event"] == {"merchant_country": ev["merchant_country"],
                               "card_present": ev["card_present"],
                               "amount_minor": ev["amount_minor"],
                               "entry_mode": ev["entry_mode"]}
    assert inputs["features"]["entry_mode"] == decision["features"]["entry_mode"] \
        == "MAGSTRIPE_CONTACTLESS"
    assert "card_auths_1h" not in inputs["features"]
    (s,) = [x for x in execs if x["control_id"] == "select"]
    assert json.loads(s["output_json"])["outcome"] == decision["outcome"] == "DENY"
    assert e["duration_us"] >= 0


def test_expiry_index_is_rebuilt_from_the_changelog_alone() -> None:
    from tripwire.state.expiring import Expiring

    first = StateManager("p", ["s"])
    view = first.view("t", 0)
    store = Expiring("s")
    for i in range(5):
        store.put(view, f"k{i}".encode(), b"v", expiry=100 * i)
    logged = [(k, v) for (_, _, k, v) in first.pending]
    assert all(k.startswith(b"d:") for k, _ in logged)  # the index stays local
    again = StateManager("p", ["s"])  # a new worker restores the changelog only
    for k, v in logged:
        again.apply("s", ("t", 0), k, v, 0)
    fresh = Expiring("s")
    restored = again.view("t", 0)
    assert fresh.get(restored, b"k3") == b"v"
    assert fresh.expire(restored, 250) == 3  # k0, k1, k2
    assert [fresh.get(restored, f"k{i}".encode()) for i in range(5)] == [None] * 3 + [b"v"] * 2


def test_a_remembering_path_decides_as_one_that_calls_every_control() -> None:
    """Live workers remember each control's answers by their inputs: the decisions
    are byte for byte those of a path that calls every control, every execution is
    still recorded (a repeat marked remembered, with the first call's duration),
    and the tally counts remembered runs apart, with no time in the control."""
    from tripwire.controls.engine import REMEMBER, ControlSet
    from tripwire.streams.tally import Tally

    remembering = DecisionPath(PATH.codec, ControlSet.from_dir().remembering(REMEMBER))
    events = [*normal_card_payments(5, T0, 30), *magstripe_contactless_attack(6, T0, 10)]
    batch = [_card(ev, i) for i, ev in enumerate(sorted(events, key=lambda e: e["event_time"]))]
    outs = {}
    for path in (PATH, remembering):
        st = StateManager(path.name, list(path.stores))
        outs[path] = [o for i in range(0, len(batch), 8)
                      for o in path.process(batch[i:i + 8], T0 + 5, st)]
    plain, got = outs[PATH], outs[remembering]
    assert [(o.topic_key, o.key) for o in plain] == [(o.topic_key, o.key) for o in got]
    assert [o.value for o in plain if o.topic_key == "decisions"] == \
        [o.value for o in got if o.topic_key == "decisions"]
    first: dict[tuple[str, str], int] = {}  # (control, inputs) -> the first call's duration
    remembered = 0
    for p, g in zip(plain, got, strict=True):
        if p.topic_key != "control_executions":
            continue
        want, have = _decode(p)["executions"], _decode(g)["executions"]
        assert [{**e, "duration_us": 0} for e in want] == \
            [{**e, "duration_us": 0, "remembered": False} for e in have]
        for e in have:
            seen = (e["control_id"], e["inputs_json"])
            assert e["remembered"] == (seen in first)
            if e["remembered"]:
                remembered += 1
                assert e["duration_us"] == first[seen]
            else:
                first[seen] = e["duration_us"]
    assert remembered > len(events)  # most controls repeat a few inputs
    tally = Tally()
    tally.observe(got)
    assert sum(tally.control_remembered.values()) == remembered
    assert sum(tally.control_runs.values()) == remembered + len(first)
    assert sum(tally.control_seconds.values()) * 1e6 == pytest.approx(sum(first.values()))
