"""Each typology control on a realistic sequence of events, through the whole
pure decision path (intake → features → controls → decision)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from tripwire.connectors.simulator import normal_card_payments
from tripwire.schemas.records import InRecord
from tripwire.schemas.validate import ValidationPolicy, Validator
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath

_BASE = DecisionPath.default()
# replayed history: events of any age are valid here (as in a backtest)
PATH = DecisionPath(_BASE.codec, _BASE.controls,
                    validator=Validator(ValidationPolicy(max_event_age_ms=None)))
T0 = 1_790_000_000_000
MIN = 60_000
_ids = itertools.count(1)


def _id() -> str:
    return str(uuid.UUID(int=next(_ids) << 64 | 0x4000_8000_0000_0000, version=4))


def card(t: int, **kw: Any) -> tuple[str, dict[str, Any]]:
    ev = {"event_id": _id(), "event_time": t, "kind": "AUTHORISATION",
          "account_id": "acc-victim", "card_token": "tok-victim", "amount_minor": 2500,
          "currency": "GBP", "merchant_id": "m-local", "mcc": "5411", "merchant_country": "GB",
          "terminal_id": None, "entry_mode": "ECOMMERCE", "card_present": False,
          "device_id": None, "ip": None, "response": "APPROVED", "decline_reason": None,
          "wallet": None, "three_ds": None}
    ev.update(kw)
    if ev["response"] == "DECLINED":
        ev["decline_reason"] = "DO_NOT_HONOUR"
    return "tripwire.events.CardPayment", ev


def login(t: int, typ: str, **kw: Any) -> tuple[str, dict[str, Any]]:
    ev = {"event_id": _id(), "event_time": t, "type": typ, "user_id": "user-victim",
          "account_id": "acc-victim", "device_id": "dev-new", "ip": "81.2.69.160",
          "method": "PASSWORD", "failure_reason": None, "payee_sort_code": None,
          "payee_account_number": None, "payee_name": None}
    if typ == "PAYEE_ADDED":
        ev.update(payee_sort_code="309634", payee_account_number="55779911",
                  payee_name="J SMITH")
    ev.update(kw)
    return "tripwire.events.LoginEvent", ev


def fps(t: int, direction: str, amount: int, other: str = "55779911",
        **kw: Any) -> tuple[str, dict[str, Any]]:
    ours, theirs = ("040004", "12345678"), ("309634", other)
    sender, beneficiary = (ours, theirs) if direction == "OUTBOUND" else (theirs, ours)
    ev = {"event_id": _id(), "event_time": t, "message_type": "PAYMENT_REQUEST",
          "transaction_reference": f"FP{next(_ids):020d}", "original_reference": None,
          "is_repeat": False, "direction": direction, "account_id": "acc-victim",
          "settlement_date": t // 86_400_000, "sender_sort_code": sender[0],
          "sender_account_number": sender[1], "beneficiary_sort_code": beneficiary[0],
          "beneficiary_account_number": beneficiary[1], "amount_minor": amount,
          "currency": "GBP", "payment_reference": "THANKS", "response_status": None,
          "reject_reason": None}
    ev.update(kw)
    return "tripwire.events.FpsMessage", ev


def decide(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Decisions for a sequence, in order, on one ordered log."""
    state = StateManager(PATH.name, list(PATH.stores))
    now = max(e["event_time"] for _, e in events) + 1000
    batch = [InRecord("log", 0, i, b"k", PATH.codec.encode(schema, ev), ev["event_time"])
             for i, (schema, ev) in enumerate(events)]
    outs = PATH.process(batch, now, state)
    decoded = [PATH.codec.decode(o.value)[1] for o in outs if o.topic_key == "decisions"]
    refused = [PATH.codec.decode(o.value)[1] for o in outs if o.topic_key == "quarantine"]
    assert not refused, refused[0]["reasons"]
    return decoded


def hits(d: dict[str, Any]) -> set[str]:
    return {h["control_id"] for h in d["rule_hits"]}


def test_card_testing_is_denied_once_the_pattern_is_clear() -> None:
    probes = [card(T0 + i * 20_000, amount_minor=100 + i, merchant_id=f"m-{i:03d}",
                   response="DECLINED" if i % 2 else "APPROVED") for i in range(8)]
    ds = decide(probes)
    assert ds[0]["outcome"] == "ALLOW"
    assert ds[-1]["outcome"] == "DENY" and "card_testing" in hits(ds[-1])
    assert {"BLOCK_CARD", "CUSTOMER_ALERT", "OPEN_CASE"} <= set(ds[-1]["actions"])
    assert "8 merchants in 10 min" in ds[-1]["rule_hits"][0]["reason"]


def test_stolen_card_top_ups() -> None:
    ds = decide([card(T0 + i * 10 * MIN, kind="TOPUP", amount_minor=20000) for i in range(5)])
    assert [d["outcome"] for d in ds[:3]] == ["ALLOW", "STEP_UP", "STEP_UP"]
    assert ds[4]["outcome"] == "DENY" and "stolen_card_topups" in hits(ds[4])


def test_account_takeover_holds_the_payout() -> None:
    ds = decide([
        login(T0, "LOGIN_SUCCEEDED"),
        login(T0 + 2 * MIN, "DEVICE_ADDED"),
        login(T0 + 5 * MIN, "PASSWORD_CHANGED"),
        login(T0 + 9 * MIN, "PAYEE_ADDED"),
        fps(T0 + 12 * MIN, "OUTBOUND", 250_000),
    ])
    payout = ds[-1]
    assert payout["outcome"] == "MANUAL_REVIEW" and "account_takeover" in hits(payout)
    assert {"HOLD_FUNDS", "OPEN_CASE"} <= set(payout["actions"])
    reason = next(h["reason"] for h in payout["rule_hits"]
                  if h["control_id"] == "account_takeover")
    assert "device added 10 min ago" in reason and "password changed 7 min ago" in reason
    # the same payout a month of quiet later is fine
    quiet = decide([login(T0, "PASSWORD_CHANGED"), fps(T0 + 40 * 24 * 60 * MIN, "OUTBOUND",
                                                       250_000)])
    assert "account_takeover" not in hits(quiet[-1])


def test_money_mule_fan_in_then_fast_out() -> None:
    fan_in = [fps(T0 + i * MIN, "INBOUND", 30_000, other=f"{70000000 + i}") for i in range(5)]
    ds = decide([*fan_in, fps(T0 + 8 * MIN, "OUTBOUND", 140_000)])
    out = ds[-1]
    assert out["features"]["account_fps_in_distinct_senders_1h"] == 5
    assert out["outcome"] == "MANUAL_REVIEW" and "money_mule" in hits(out)
    assert "HOLD_FUNDS" in out["actions"]
    assert all(d["outcome"] == "ALLOW" for d in ds[:-1])


def test_high_value_payment_to_a_new_payee_steps_up() -> None:
    ds = decide([fps(T0, "OUTBOUND", 800_000), fps(T0 + MIN, "OUTBOUND", 800_000),
                 fps(T0 + 2 * MIN, "OUTBOUND", 4_000)])
    assert ds[0]["outcome"] == "STEP_UP" and "high_value_new_payee" in hits(ds[0])
    assert "high_value_new_payee" not in hits(ds[1])  # second payment: payee not new
    assert ds[2]["outcome"] == "ALLOW"


def test_sanctioned_country_is_denied() -> None:
    (d,) = decide([card(T0, merchant_country="KP", currency="KPW", entry_mode="CHIP",
                        card_present=True)])
    assert d["outcome"] == "DENY" and "high_risk_country" in hits(d)


def test_everyday_spending_is_allowed() -> None:
    events = [("tripwire.events.CardPayment", e)
              for e in normal_card_payments(17, T0, 600, cards=500, gap_ms=3000)]
    ds = decide(events)
    flagged = [(d["outcome"], [h["reason"] for h in d["rule_hits"]]) for d in ds
               if d["outcome"] != "ALLOW"]
    assert not flagged
