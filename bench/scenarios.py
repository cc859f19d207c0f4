"""Days of a bank's decisions for the system-wide monitor's tests and benchmark:
a daily rhythm with lunchtime and evening peaks, and the waves the tripwires are
for (the Tesco Bank attack, an account-takeover wave, a run of overrides, an
approval dip). ``scale`` 1.0 is a bank that sends 400 customer alerts in a
normal daytime ten minutes; the broker tests run at a tenth of that."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

from tripwire.controls.monitor import MINUTE_MS, MonitorPolicy

HOUR = 60 * MINUTE_MS
DAY = 24 * HOUR
COUNTRIES = ["FR", "ES", "IE", "US"]
ABROAD = ["BR", "US", "MX", "TH", "ID"]


def policy(scale: float) -> MonitorPolicy:
    """The default policy, its absolute numbers scaled with the bank."""
    p = MonitorPolicy()
    return replace(p, minimum=max(5, round(p.minimum * scale)), floor=p.floor * scale)


def decision(t: int, rng: random.Random, *, outcome: str = "ALLOW",
             actions: tuple[str, ...] = (), attributes: dict[str, str] | None = None,
             account: str | None = None, kind: str = "CardPayment") -> dict[str, Any]:
    """A Decision record as the decide stage writes it (what the monitor reads)."""
    n = rng.getrandbits(64)
    account = account or f"acct-{n % 50_000}"
    event_id = hashlib.sha256(f"{t}|{n}".encode()).hexdigest()[:24]
    return {
        "decision_id": event_id[:16] + "d", "event_id": event_id,
        "event_type": f"tripwire.events.{kind}", "entity_key": f"card-{n % 80_000}",
        "event_time": t, "decided_at": t + 40, "outcome": outcome, "actions": list(actions),
        "rule_hits": [], "features": {}, "feature_errors": {}, "feature_provenance": {},
        "control_errors": {}, "control_versions": {}, "engine_version": "test",
        "latency_us": 40_000, "repeat": False,
        "subjects": {"account": account, "card": f"card-{n % 80_000}"},
        "typology": "card_fraud" if "CUSTOMER_ALERT" in actions else "",
        "attributes": attributes or card(rng)}


def card(rng: random.Random, *, entry_mode: str | None = None, country: str | None = None,
         merchant: str | None = None) -> dict[str, str]:
    mode = entry_mode or rng.choices(["CHIP", "CONTACTLESS", "ECOMMERCE", "MAGSTRIPE",
                                      "MAGSTRIPE_CONTACTLESS"], [45, 40, 12, 2, 1])[0]
    country = country or ("GB" if rng.random() < 0.93 else rng.choice(COUNTRIES))
    return {"method": "card", "kind": "AUTHORISATION", "entry_mode": mode,
            "merchant_country": country, "domestic": str(country == "GB").lower(),
            "mcc": rng.choice(["5411", "5812", "5999", "4111", "5732", "7011"]),
            "merchant": merchant or f"m-{rng.randrange(500):04d}",
            "channel": "card_not_present" if mode == "ECOMMERCE" else "card_present",
            "value_band": "normal"}


def fps(rng: random.Random, high: bool) -> dict[str, str]:
    return {"method": "fps", "kind": "PAYMENT_REQUEST", "direction": "OUTBOUND",
            "channel": "fps", "value_band": "high" if high else "normal"}


def login(kind: str) -> dict[str, str]:
    return {"method": "login", "kind": kind, "auth": "PASSWORD", "channel": "online"}


def alerts_per_minute(t: int) -> float:
    """Customer alerts a minute at scale 1: 8 at night, 40 by day, 20 late evening;
    lunch (12-13h) and the evening (18-19h) at twice the hours around them."""
    h = (t % DAY) // HOUR
    base = 8 if h < 7 else 40 if h < 22 else 20
    return base * 2 if h in (12, 18) else base


def _count(rate: float, rng: random.Random) -> int:
    whole = int(rate)
    return whole + (rng.random() < rate - whole)


@dataclass
class Days:
    """What was generated, and where the waves are."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    waves: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, end)


def normal_days(start: int, days: float, scale: float, rng: random.Random,
                out: Days | None = None, shift: int = 0) -> Days:
    """Everyday traffic: alerting card declines, approved payments (twice as many),
    FPS payments (a few high-value), new-device logins, an override now and then.
    The day's shape is read ``shift`` ms later than each minute's time, so a test can
    put its hour of day where it needs it whatever the clock says."""
    out = out or Days()
    for i in range(int(days * 24 * 60)):
        t0 = start + i * MINUTE_MS
        rate = alerts_per_minute(t0 + shift) * scale
        for _ in range(_count(rate, rng)):
            out.decisions.append(decision(t0 + rng.randrange(MINUTE_MS), rng,
                                          outcome=rng.choice(["DENY", "STEP_UP"]),
                                          actions=("CUSTOMER_ALERT",)))
        for _ in range(_count(rate * 2, rng)):
            out.decisions.append(decision(t0 + rng.randrange(MINUTE_MS), rng))
        for _ in range(_count(rate / 4, rng)):
            high = rng.random() < 0.05
            out.decisions.append(decision(
                t0 + rng.randrange(MINUTE_MS), rng, kind="FpsMessage",
                outcome="ALLOW" if rng.random() < 0.95 else "MANUAL_REVIEW",
                attributes=fps(rng, high)))
        for _ in range(_count(rate / 80, rng)):
            out.decisions.append(decision(t0 + rng.randrange(MINUTE_MS), rng,
                                          kind="LoginEvent", attributes=login("DEVICE_ADDED")))
        for _ in range(_count(scale / 30, rng)):
            out.overrides.append(override(t0 + rng.randrange(MINUTE_MS), rng))
    return out


def override(t: int, rng: random.Random) -> dict[str, Any]:
    n = rng.getrandbits(48)
    return {"audit_id": f"ov-{t}-{n}", "at": t, "actor": "analyst-1", "action": "override",
            "subject": f"dec-{n}", "reason": "customer confirmed", "details_json": "{}"}


def peak_at_one_merchant(out: Days, start: int, minutes: int, scale: float,
                         rng: random.Random) -> None:
    """Twice the alerts for ``minutes``, the extra all at one merchant (a sale)."""
    for i in range(minutes):
        t0 = start + i * MINUTE_MS
        for _ in range(_count(alerts_per_minute(t0) * scale, rng)):
            out.decisions.append(decision(
                t0 + rng.randrange(MINUTE_MS), rng, outcome="DENY", actions=("CUSTOMER_ALERT",),
                attributes=card(rng, merchant="m-sale", country="GB")))
    out.waves["merchant_peak"] = (start, start + minutes * MINUTE_MS)


def card_wave(out: Days, start: int, minutes: int, per_minute: float,
              rng: random.Random) -> None:
    """The Tesco Bank attack: magstripe-contactless payments abroad, each declined
    with a customer alert, at many merchants."""
    for i in range(minutes):
        t0 = start + i * MINUTE_MS
        for _ in range(_count(per_minute, rng)):
            out.decisions.append(decision(
                t0 + rng.randrange(MINUTE_MS), rng, outcome="DENY",
                actions=("CUSTOMER_ALERT", "BLOCK_CARD"),
                attributes=card(rng, entry_mode="MAGSTRIPE_CONTACTLESS",
                                country=rng.choice(ABROAD),
                                merchant=f"m-x{rng.randrange(300)}")))
    out.waves["card_wave"] = (start, start + minutes * MINUTE_MS)


def takeover_wave(out: Days, start: int, accounts: int, rng: random.Random) -> None:
    """New devices on ``accounts`` accounts within ten minutes, then a high-value
    payout from most of them over the next hour."""
    names = [f"acct-ato-{start}-{i}" for i in range(accounts)]
    for a in names:
        out.decisions.append(decision(start + rng.randrange(10 * MINUTE_MS), rng,
                                      kind="LoginEvent", attributes=login("DEVICE_ADDED"),
                                      account=a))
    payouts = start + 30 * MINUTE_MS
    for a in names[: accounts * 3 // 4]:
        out.decisions.append(decision(payouts + rng.randrange(20 * MINUTE_MS), rng,
                                      kind="FpsMessage", attributes=fps(rng, True),
                                      account=a))
    out.waves["takeover"] = (start, payouts + 20 * MINUTE_MS)


def override_run(out: Days, start: int, count: int, rng: random.Random) -> None:
    """Analysts overturning ``count`` decisions within ten minutes."""
    out.overrides += [override(start + rng.randrange(10 * MINUTE_MS), rng)
                      for _ in range(count)]
    out.waves["overrides"] = (start, start + 10 * MINUTE_MS)


def approval_dip(out: Days, start: int, minutes: int, scale: float,
                 rng: random.Random) -> None:
    """Outbound FPS payments mostly held for review for ``minutes`` (a control gone
    wrong): the approval rate of fps.outbound falls from 95 % to about 20 %."""
    for i in range(minutes):
        t0 = start + i * MINUTE_MS
        for _ in range(_count(alerts_per_minute(t0) * scale / 4 * 3, rng)):
            out.decisions.append(decision(t0 + rng.randrange(MINUTE_MS), rng,
                                          kind="FpsMessage", outcome="MANUAL_REVIEW",
                                          attributes=fps(rng, False)))
    out.waves["approval_dip"] = (start, start + minutes * MINUTE_MS)
