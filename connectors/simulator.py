"""Deterministic simulated traffic: ordinary UK card spending and attacks.

Everything is a pure function of a seed and a start time, so a demo, a test or a
benchmark can be replayed exactly.

>>> events = list(normal_card_payments(seed=1, start_ms=0, count=3))
>>> len(events), events[0]["currency"]
(3, 'GBP')
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ["CARD_SCHEMA", "magstripe_contactless_attack", "normal_card_payments"]

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
