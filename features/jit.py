"""Just-in-time features: computed from the event alone, no state.

>>> card_features({"amount_minor": 1000, "currency": "EUR", "merchant_country": "FR",
...                "entry_mode": "CHIP", "card_present": True, "event_time": 0})["domestic"]
False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tripwire.schemas.reference import GBP_PER_UNIT

__all__ = [
    "GBP_PER_UNIT",
    "HOME_COUNTRY",
    "FeatureError",
    "card_features",
    "fps_features",
    "login_features",
]

HOME_COUNTRY = "GB"
SMALL_AMOUNT_GBP_MINOR = 200  # card testers probe with amounts under £2



class FeatureError(ValueError):
    """A feature could not be computed for this event."""


def card_features(event: Mapping[str, Any]) -> dict[str, Any]:
    """Features of a card payment that need nothing but the event."""
    rate = GBP_PER_UNIT.get(event["currency"])
    gbp = None if rate is None else round(event["amount_minor"] * rate)
    return {
        "amount_gbp_minor": gbp,
        "small_amount": gbp is not None and gbp < SMALL_AMOUNT_GBP_MINOR,
        "domestic": event["merchant_country"] == HOME_COUNTRY,
        "entry_mode": event["entry_mode"],
        "card_not_present": not event["card_present"],
        "hour_of_day": (event["event_time"] // 3_600_000) % 24,
    }


def fps_features(event: Mapping[str, Any]) -> dict[str, Any]:
    """Features of an FPS message that need nothing but the message."""
    outbound = event["direction"] == "OUTBOUND"
    side = "beneficiary" if outbound else "sender"
    return {
        "amount_gbp_minor": event["amount_minor"],
        "outbound": outbound,
        "counterparty": f"{event[side + '_sort_code']}-{event[side + '_account_number']}",
        "message_type": event["message_type"],
        "is_repeat": event["is_repeat"],
        "hour_of_day": (event["event_time"] // 3_600_000) % 24,
    }


def login_features(event: Mapping[str, Any]) -> dict[str, Any]:
    """Features of a login or account-security event that need nothing but the event."""
    return {
        "login_type": event["type"],
        "counterparty": f"{event['payee_sort_code']}-{event['payee_account_number']}"
        if event["type"] == "PAYEE_ADDED" else None,
        "method": event["method"],
        "has_device": event["device_id"] is not None,
        "hour_of_day": (event["event_time"] // 3_600_000) % 24,
    }
