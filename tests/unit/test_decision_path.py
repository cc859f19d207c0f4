from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.streams.decision_path import DECISION_SCHEMA, DecisionPath
from tripwire.streams.records import InRecord

PATH = DecisionPath.default()
T0 = 1_790_000_000_000


def _rec(value: bytes | None, offset: int = 0) -> InRecord:
    return InRecord("payments.card.v1", 0, offset, b"k", value, T0)


def _decode(out):  # type: ignore[no-untyped-def]
    return PATH.codec.decode(out.value)[1]


def test_everyday_payment_is_allowed_with_its_features() -> None:
    ev = next(normal_card_payments(1, T0, 1))
    (out,) = PATH.process([_rec(PATH.codec.encode(CARD_SCHEMA, ev))], T0 + 3)
    d = _decode(out)
    assert out.topic_key == "decisions" and out.key == ev["card_token"].encode()
    assert d["outcome"] == "ALLOW" and d["actions"] == [] and d["rule_hits"] == []
    assert d["event_id"] == ev["event_id"] and d["latency_us"] == 3000
    assert d["features"]["domestic"] is True
    assert d["features"]["amount_gbp_minor"] == ev["amount_minor"]
    assert d["control_versions"] == PATH.controls.versions()


def test_magstripe_contactless_abroad_is_denied_with_reason() -> None:
    ev = next(magstripe_contactless_attack(2, T0, 1))
    (out,) = PATH.process([_rec(PATH.codec.encode(CARD_SCHEMA, ev))], T0)
    d = _decode(out)
    assert d["outcome"] == "DENY"
    assert d["actions"] == ["BLOCK_CARD", "CUSTOMER_ALERT"]
    assert d["rule_hits"][0]["control_id"] == "card_outliers"
    assert ev["merchant_country"] in d["rule_hits"][0]["reason"]


def test_same_event_same_decision_id() -> None:
    ev = next(normal_card_payments(5, T0, 1))
    a = _decode(PATH.process([_rec(PATH.codec.encode(CARD_SCHEMA, ev))], T0)[0])
    b = _decode(PATH.process([_rec(PATH.codec.encode(CARD_SCHEMA, ev), 9)], T0 + 50)[0])
    assert a["decision_id"] == b["decision_id"]


def test_every_input_gives_exactly_one_output() -> None:
    events = list(normal_card_payments(9, T0, 20))
    batch = [_rec(PATH.codec.encode(CARD_SCHEMA, e), i) for i, e in enumerate(events)]
    batch.insert(5, _rec(b"not avro at all", 99))
    # a decision is valid Avro but not an event to decide: refused, not dropped
    decision = _decode(PATH.process(batch[:1], T0)[0])
    batch.insert(7, _rec(PATH.codec.encode(DECISION_SCHEMA, decision), 100))
    outs = PATH.process(batch, T0)
    assert len(outs) == len(batch)
    q = [_decode(o) for o in outs if o.topic_key == "quarantine"]
    assert [r["reasons"][0]["code"] for r in q] == ["BAD_MAGIC", "UNEXPECTED_TYPE"]
    assert q[0]["original"] == b"not avro at all" and q[0]["source_offset"] == 99
