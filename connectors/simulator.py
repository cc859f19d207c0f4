"""Deterministic simulated traffic: ordinary UK card spending and attacks.

Everything is a pure function of a seed and a start time, so a demo, a test or a
benchmark can be replayed exactly.

>>> events = list(normal_card_payments(seed=1, start_ms=0, count=3))
>>> len(events), events[0]["currency"]
(3, 'GBP')
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from typing import Any

from tripwire.schemas.validate import DAY_MS

__all__ = [
    "CARD_SCHEMA",
    "FPS_SCHEMA",
    "LOGIN_SCHEMA",
    "as_json",
    "corrupt_dates",
    "envelope",
    "fps_messages",
    "logins",
    "magstripe_contactless_attack",
    "mixed_traffic",
    "normal_card_payments",
]

CARD_SCHEMA = "tripwire.events.CardPayment"

_UK_MERCHANTS = [("m-tesco-0042", "5411"), ("m-pret-0193", "5814"), ("m-tfl-0001", "4111"),
                 ("m-boots-0311", "5912"), ("m-shell-0770", "5541"), ("m-amazon-uk", "5999")]
_ATTACK_COUNTRIES = ["BR", "ES", "US", "MX"]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _card(rng: random.Random, n: int) -> tuple[str, str]:
    i = rng.randrange(n)
    return f"acc-{i:06d}", f"tok-{i:06d}"


def normal_card_payments(seed: int, start_ms: int, count: int, cards: int = 1000,
                         gap_ms: int = 50) -> Iterator[dict[str, Any]]:
    """Everyday domestic chip, contactless and online payments."""
    rng = random.Random(seed)
    t = start_ms
    for _ in range(count):
        t += rng.randrange(1, 2 * gap_ms)
        account, card = _card(rng, cards)
        merchant, mcc = rng.choice(_UK_MERCHANTS)
        mode = rng.choices(["CHIP", "CONTACTLESS", "ECOMMERCE"], [3, 5, 2])[0]
        yield {
            "event_id": _uuid(rng), "event_time": t, "kind": "AUTHORISATION",
            "account_id": account, "card_token": card,
            "amount_minor": int(rng.lognormvariate(7.3, 1.0)) + 50, "currency": "GBP",
            "merchant_id": merchant, "mcc": mcc, "merchant_country": "GB",
            "terminal_id": None if mode == "ECOMMERCE" else f"term-{rng.randrange(10**6):06d}",
            "entry_mode": mode, "card_present": mode != "ECOMMERCE",
            "device_id": None, "ip": None, "response": "APPROVED", "decline_reason": None,
            "wallet": "APPLE_PAY" if mode == "CONTACTLESS" and rng.random() < 0.4 else None,
            "three_ds": "AUTHENTICATED" if mode == "ECOMMERCE" else None,
        }


def magstripe_contactless_attack(seed: int, start_ms: int, count: int, cards: int = 1000,
                                 gap_ms: int = 20) -> Iterator[dict[str, Any]]:
    """The Tesco Bank pattern: forged magstripe-contactless payments abroad, many cards."""
    rng = random.Random(seed)
    t = start_ms
    for _ in range(count):
        t += rng.randrange(1, 2 * gap_ms)
        account, card = _card(rng, cards)
        country = rng.choice(_ATTACK_COUNTRIES)
        yield {
            "event_id": _uuid(rng), "event_time": t, "kind": "AUTHORISATION",
            "account_id": account, "card_token": card,
            "amount_minor": rng.randrange(2000, 60000),
            "currency": {"BR": "BRL", "ES": "EUR", "US": "USD", "MX": "MXN"}[country],
            "merchant_id": f"m-{country.lower()}-{rng.randrange(500):04d}", "mcc": "5999",
            "merchant_country": country, "terminal_id": f"term-x{rng.randrange(10**5):05d}",
            "entry_mode": "MAGSTRIPE_CONTACTLESS", "card_present": True,
            "device_id": None, "ip": None, "response": "APPROVED", "decline_reason": None,
            "wallet": None, "three_ds": None,
        }


FPS_SCHEMA = "tripwire.events.FpsMessage"
LOGIN_SCHEMA = "tripwire.events.LoginEvent"


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def fps_messages(seed: int, start_ms: int, payments: int, accounts: int = 500,
                 gap_ms: int = 200) -> Iterator[dict[str, Any]]:
    """An FPS feed: each payment request is followed by its response; a few are
    reversed later. Every message is valid."""
    rng = random.Random(seed)
    t = start_ms
    reversible: list[dict[str, Any]] = []
    for n in range(payments):
        t += rng.randrange(1, 2 * gap_ms)
        account = f"acc-{rng.randrange(accounts):06d}"
        inbound = rng.random() < 0.5
        ours = (f"{rng.choice(['04', '20', '40', '60'])}{_digits(rng, 4)}", _digits(rng, 8))
        theirs = (_digits(rng, 6), _digits(rng, 8))
        sender, beneficiary = (theirs, ours) if inbound else (ours, theirs)
        ref = f"FP{seed:04d}{n:08d}{_digits(rng, 6)}"
        req = {
            "event_id": _uuid(rng), "event_time": t, "message_type": "PAYMENT_REQUEST",
            "transaction_reference": ref, "original_reference": None, "is_repeat": False,
            "direction": "INBOUND" if inbound else "OUTBOUND", "account_id": account,
            "settlement_date": t // DAY_MS,
            "sender_sort_code": sender[0], "sender_account_number": sender[1],
            "beneficiary_sort_code": beneficiary[0], "beneficiary_account_number": beneficiary[1],
            "amount_minor": int(rng.lognormvariate(9.0, 1.3)) + 1, "currency": "GBP",
            "payment_reference": rng.choice(["RENT", "INVOICE 1042", "THANKS", "SAVINGS",
                                             "BILLS NOV"]),
            "response_status": None, "reject_reason": None,
        }
        yield req
        status = rng.choices(["ACCEPTED_APPLIED", "ACCEPTED_NOT_APPLIED", "REJECTED"],
                             [90, 5, 5])[0]
        t += rng.randrange(1, 50)
        yield {**req, "event_id": _uuid(rng), "event_time": t,
               "message_type": "PAYMENT_RESPONSE",
               "transaction_reference": f"{ref}R", "original_reference": ref,
               "response_status": status,
               "reject_reason": "BENEFICIARY ACCOUNT CLOSED" if status == "REJECTED" else None}
        if status == "ACCEPTED_APPLIED" and rng.random() < 0.03:
            reversible.append(req)
        if reversible and rng.random() < 0.02:
            orig = reversible.pop(0)
            t += 1
            yield {**orig, "event_id": _uuid(rng), "event_time": t, "message_type": "REVERSAL",
                   "transaction_reference": f"{orig['transaction_reference']}V",
                   "original_reference": orig["transaction_reference"],
                   "settlement_date": t // DAY_MS}


def corrupt_dates(messages: list[dict[str, Any]], share: float, seed: int) \
        -> tuple[list[dict[str, Any]], set[str]]:
    """Corrupt the dates of ``share`` of ``messages`` the way a faulty upstream
    does (wrong century, days swapped, clock far off); returns the messages and
    the event ids of the corrupted ones."""
    rng = random.Random(seed)
    out, bad = [], set()
    for m in messages:
        if rng.random() < share:
            how = rng.randrange(4)
            if how == 0:
                m = {**m, "settlement_date": m["settlement_date"] + 36_525}  # +100 years
            elif how == 1:
                m = {**m, "settlement_date": m["settlement_date"] - rng.randrange(3, 400)}
            elif how == 2:
                m = {**m, "event_time": m["event_time"] + rng.randrange(2, 900) * DAY_MS}
            else:
                m = {**m, "settlement_date": -rng.randrange(1, 10**6)}
            bad.add(m["event_id"])
        out.append(m)
    return out, bad


def logins(seed: int, start_ms: int, count: int, users: int = 500,
           gap_ms: int = 100) -> Iterator[dict[str, Any]]:
    """Everyday logins with the occasional failure."""
    rng = random.Random(seed)
    t = start_ms
    for _ in range(count):
        t += rng.randrange(1, 2 * gap_ms)
        i = rng.randrange(users)
        failed = rng.random() < 0.05
        yield {
            "event_id": _uuid(rng), "event_time": t,
            "type": "LOGIN_FAILED" if failed else "LOGIN_SUCCEEDED",
            "user_id": f"user-{i:06d}", "account_id": f"acc-{i:06d}",
            "device_id": f"dev-{i:06d}", "ip": f"81.{i % 250}.{rng.randrange(250)}.{i % 199}",
            "method": rng.choice(["PASSWORD", "BIOMETRIC", "PASSKEY"]),
            "failure_reason": "WRONG_PASSWORD" if failed else None,
            "payee_sort_code": None, "payee_account_number": None, "payee_name": None,
        }


def _ip(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


def mixed_traffic(seed: int, start_ms: int, n: int, *, accounts: int = 8, devices: int = 5,
                  ips: int = 4, payees: int = 5, merchants: int = 6
                  ) -> list[tuple[str, dict[str, Any]]]:
    """Cards, logins and FPS payments; by default over few accounts, devices, IPs
    and payees, so every entity sees many events (raise the counts for realistic
    cardinalities). Sent out of order, a few of them very late."""
    rng = random.Random(seed)
    n_dev, n_ip, n_merchant = devices, ips, merchants
    accounts_ = [f"acc-{i:06d}" for i in range(accounts)]
    payees_ = [("401234", f"{i:08d}") for i in range(payees)]
    out = []
    for _ in range(n):
        t = start_ms + rng.randrange(20 * 60_000)
        acc = rng.choice(accounts_)
        kind = rng.choices(["CardPayment", "LoginEvent", "FpsMessage"], [6, 2, 2])[0]
        if kind == "CardPayment":
            mode = rng.choice(["CHIP", "CONTACTLESS", "ECOMMERCE"])
            declined = rng.random() < 0.2
            ev: dict[str, Any] = {
                "event_id": _uuid(rng), "event_time": t, "kind": rng.choice(
                    ["AUTHORISATION"] * 9 + ["TOPUP"]),
                "account_id": acc, "card_token": f"tok-{acc[4:]}-{rng.randrange(3)}",
                "amount_minor": rng.choice([99, 150, 2500, 12000, 80000]), "currency": "GBP",
                "merchant_id": f"m-{rng.randrange(n_merchant):05d}", "mcc": "5411",
                "merchant_country": rng.choice(["GB", "GB", "FR"]),
                "terminal_id": None, "entry_mode": mode, "card_present": mode != "ECOMMERCE",
                "device_id": f"dev-{rng.randrange(n_dev)}" if rng.random() < 0.7 else None,
                "ip": _ip(rng.randrange(n_ip)) if rng.random() < 0.7 else None,
                "response": "DECLINED" if declined else "APPROVED",
                "decline_reason": "DO_NOT_HONOUR" if declined else None,
                "wallet": None, "three_ds": None}
        elif kind == "LoginEvent":
            typ = rng.choice(["LOGIN_SUCCEEDED", "LOGIN_FAILED", "LOGIN_FAILED",
                              "PASSWORD_CHANGED", "DEVICE_ADDED", "PAYEE_ADDED"])
            payee = rng.choice(payees_)
            ev = {"event_id": _uuid(rng), "event_time": t, "type": typ,
                  "user_id": f"user-{acc[4:]}", "account_id": acc,
                  "device_id": f"dev-{rng.randrange(n_dev)}", "ip": _ip(rng.randrange(n_ip)),
                  "method": "PASSWORD",
                  "failure_reason": "WRONG_PASSWORD" if typ == "LOGIN_FAILED" else None,
                  "payee_sort_code": payee[0] if typ == "PAYEE_ADDED" else None,
                  "payee_account_number": payee[1] if typ == "PAYEE_ADDED" else None,
                  "payee_name": "A PAYEE" if typ == "PAYEE_ADDED" else None}
        else:
            inbound = rng.random() < 0.5
            other, ours = rng.choice(payees_), ("040004", f"1{acc[-6:]}0")
            sender, beneficiary = (other, ours) if inbound else (ours, other)
            ev = {"event_id": _uuid(rng), "event_time": t, "message_type": "PAYMENT_REQUEST",
                  "transaction_reference": f"FP{rng.getrandbits(64):020d}",
                  "original_reference": None, "is_repeat": False,
                  "direction": "INBOUND" if inbound else "OUTBOUND", "account_id": acc,
                  "settlement_date": t // 86_400_000,
                  "sender_sort_code": sender[0], "sender_account_number": sender[1],
                  "beneficiary_sort_code": beneficiary[0],
                  "beneficiary_account_number": beneficiary[1],
                  "amount_minor": rng.choice([500, 25000, 99000]), "currency": "GBP",
                  "payment_reference": "RENT", "response_status": None, "reject_reason": None}
        out.append((kind, ev))
    # arrival order: by event time, jittered up to 3 minutes; 3% arrive 9 minutes late
    def arrival(item: tuple[str, dict[str, Any]]) -> float:
        jitter = 9 * 60_000 if rng.random() < 0.03 else rng.randrange(3 * 60_000)
        return item[1]["event_time"] + jitter
    return sorted(out, key=arrival)


def envelope(event_type: str, rec: dict[str, Any]) -> dict[str, Any]:
    """A simulated Avro-shaped record as the JSON an upstream system sends
    (``event_type``, ISO-8601 times and dates): one line of a file for
    ``tripwire produce`` or ``tripwire backtest``."""
    out = {"event_type": event_type, **rec}
    out["event_time"] = dt.datetime.fromtimestamp(rec["event_time"] / 1000, dt.UTC).isoformat()
    if "settlement_date" in rec:
        out["settlement_date"] = (dt.date(1970, 1, 1) + dt.timedelta(rec["settlement_date"])
                                  ).isoformat()
    return out


def as_json(event_type: str, record: dict[str, Any]) -> dict[str, Any]:
    """An event as an HTTP caller sends it (``event_type``, ISO times and dates)
    from its Avro form (what the generators here give)."""
    import datetime as dt

    out: dict[str, Any] = {"event_type": event_type}
    for k, v in record.items():
        if k == "event_time":
            v = dt.datetime.fromtimestamp(v / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
        elif k == "settlement_date":
            v = (dt.date(1970, 1, 1) + dt.timedelta(days=v)).isoformat()
        out[k] = v
    return out
