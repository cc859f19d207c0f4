"""Property tests: whatever arrives, the decision path answers exactly once —
a decision for a valid event, a quarantine record with reasons for anything else."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    FPS_SCHEMA,
    LOGIN_SCHEMA,
    fps_messages,
    logins,
    normal_card_payments,
)
from tripwire.schemas.codec import EncodeError
from tripwire.schemas.records import InRecord
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath

PATH = DecisionPath.default()
T0 = 1_790_000_000_000
NOW = T0 + 3_600_000
SAMPLES = {
    CARD_SCHEMA: list(normal_card_payments(1, T0, 30)),
    LOGIN_SCHEMA: list(logins(1, T0, 30)),
    FPS_SCHEMA: [m for m in fps_messages(1, T0, 30) if m["message_type"] == "PAYMENT_REQUEST"],
}

# values of every Avro type the fields can hold, including hostile ones
hostile = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=40),
    st.sampled_from(["", " ", "GBP", "gb", "00-00-00", "1e9", "NaN", "2026-02-30",
                     "\U0001d518\u00e9\u0130", "DROP TABLE", "-1"]),
)


def _state() -> StateManager:
    return StateManager(PATH.name, list(PATH.stores))


def _run(value: bytes | None) -> dict[str, Any]:
    (out,) = [o for o in PATH.process([InRecord("t", 0, 7, b"k", value, NOW)], NOW, _state())
              if o.topic_key != "control_executions"]
    rec = PATH.codec.decode(out.value)[1]
    rec["_topic"] = out.topic_key
    return rec


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=st.sampled_from(sorted(SAMPLES)), i=st.integers(0, 29),
       field_idx=st.lists(st.integers(0, 30), max_size=3), values=st.lists(hostile, max_size=3))
def test_mutated_records_are_decided_or_quarantined_with_reasons(
        schema: str, i: int, field_idx: list[int], values: list) -> None:
    base = SAMPLES[schema][i % len(SAMPLES[schema])]
    names = sorted(base)
    rec = dict(base)
    for idx, val in zip(field_idx, values, strict=False):
        rec[names[idx % len(names)]] = val
    try:
        data = PATH.codec.encode(schema, rec)
    except EncodeError:
        return  # not representable in Avro at all: the decoder tests cover such bytes
    out = _run(data)
    event(out["_topic"])
    if rec == base:
        assert out["_topic"] == "decisions"
    if out["_topic"] == "quarantine":
        assert out["reasons"] and all(r["code"] and r["detail"] for r in out["reasons"])
        assert out["original"] == data


@settings(max_examples=200, deadline=None)
@given(schema=st.sampled_from(sorted(SAMPLES)), i=st.integers(0, 29))
def test_valid_events_are_decided(schema: str, i: int) -> None:
    out = _run(PATH.codec.encode(schema, SAMPLES[schema][i % len(SAMPLES[schema])]))
    assert out["_topic"] == "decisions" and out["outcome"] in {"ALLOW", "DENY", "STEP_UP",
                                                                "MANUAL_REVIEW"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_quarantined(data: bytes) -> None:
    out = _run(data)
    assert out["_topic"] == "quarantine" and out["reasons"][0]["code"]


@settings(max_examples=200, deadline=None)
@given(schema=st.sampled_from(sorted(SAMPLES)), i=st.integers(0, 29),
       cut=st.integers(1, 200), flip=st.integers(0, 255))
def test_damaged_encodings_never_crash(schema: str, i: int, cut: int, flip: int) -> None:
    data = bytearray(PATH.codec.encode(schema, SAMPLES[schema][i % len(SAMPLES[schema])]))
    pos = 10 + cut % max(1, len(data) - 10)
    if pos < len(data):
        data[pos] ^= flip or 1
    out = _run(bytes(data))
    assert out["_topic"] in {"decisions", "quarantine"}
    if out["_topic"] == "quarantine":
        assert out["reasons"]


@settings(max_examples=400, deadline=None)
@given(schema=st.sampled_from(sorted(SAMPLES)), i=st.integers(0, 29),
       body=st.binary(max_size=400), keep=st.integers(0, 400))
def test_garbage_behind_a_valid_header_is_quarantined_or_decided(
        schema: str, i: int, body: bytes, keep: int) -> None:
    """The header (magic, fingerprint) names a real schema, so the bytes reach the
    Avro decoder itself: a valid body's first ``keep`` bytes, then anything."""
    valid = PATH.codec.encode(schema, SAMPLES[schema][i % len(SAMPLES[schema])])
    data = valid[:10 + keep] + body
    out = _run(data)
    event(out["_topic"])
    assert out["_topic"] in {"decisions", "quarantine"}
    if out["_topic"] == "quarantine":
        assert out["reasons"] and out["reasons"][0]["code"] and out["original"] == data


_QUADS = st.tuples(*[st.integers(0, 300)] * 4).map(lambda q: ".".join(map(str, q)))
_NEAR = st.text(alphabet="0123456789.٣x: ", max_size=18)  # a non-ASCII digit among them


@settings(max_examples=600, deadline=None)
@given(st.one_of(_QUADS, _NEAR, st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)))
def test_the_ip_fast_path_takes_only_what_ipaddress_takes(value: str) -> None:
    """The validator takes a dotted quad without ipaddress's parse: it must take
    exactly the IPv4 addresses ipaddress takes in that form, and never refuse one."""
    import ipaddress

    from tripwire.schemas.validate import DOTTED_QUAD

    try:
        ok = isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        ok = False
    event("fast path" if DOTTED_QUAD.match(value) else "ipaddress")
    assert bool(DOTTED_QUAD.match(value)) == ok
