"""The inbound event types: how each is keyed, identified and featurised."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tripwire.features.jit import card_features, fps_features, login_features
from tripwire.schemas.models import EVENT_MODELS

__all__ = ["EVENT_KINDS", "HIGH_VALUE_MINOR", "HOME_COUNTRY", "EventKind"]

HOME_COUNTRY = "GB"  # a card payment elsewhere is not domestic
HIGH_VALUE_MINOR = 100_000  # a payment of at least this (GBP 1,000) is high-value


def _band(amount_minor: int) -> str:
    return "high" if amount_minor >= HIGH_VALUE_MINOR else "normal"


def _card_attributes(e: Mapping[str, Any]) -> dict[str, str]:
    out = {"method": "card", "kind": str(e["kind"]), "entry_mode": str(e["entry_mode"]),
           "merchant_country": str(e["merchant_country"]),
           "domestic": "true" if e["merchant_country"] == HOME_COUNTRY else "false",
           "mcc": str(e["mcc"]), "merchant": str(e["merchant_id"]),
           "channel": "card_present" if e["card_present"] else "card_not_present",
           "value_band": _band(e["amount_minor"])}
    if e.get("wallet"):
        out["wallet"] = str(e["wallet"])
    return out


def _login_attributes(e: Mapping[str, Any]) -> dict[str, str]:
    return {"method": "login", "kind": str(e["type"]), "auth": str(e["method"]),
            "channel": "online"}


def _fps_attributes(e: Mapping[str, Any]) -> dict[str, str]:
    return {"method": "fps", "kind": str(e["message_type"]), "direction": str(e["direction"]),
            "channel": "fps", "value_band": _band(e["amount_minor"])}


@dataclass(frozen=True)
class EventKind:
    """How one inbound event type is keyed, identified and featurised (the field its
    input records are keyed by is its event model's,
    :data:`~tripwire.schemas.models.EVENT_MODELS`)."""

    schema: str
    short: str
    identity_field: str  # repeats share this value
    volatile: frozenset[str]  # fields a legitimate repeat may change
    jit: Callable[[Mapping[str, Any]], dict[str, Any]]
    # who and what an event is about (subject -> field): where its actions apply
    subject_fields: tuple[tuple[str, str], ...] = ()
    # what kind of event it was (categorical values only): the system-wide monitor's
    # counts per payment method and the common pattern of a spike are made of these
    describe: Callable[[Mapping[str, Any]], dict[str, str]] = lambda e: {}
    entity_field: str = field(init=False)  # what its input records are keyed by

    def __post_init__(self) -> None:
        object.__setattr__(self, "entity_field", EVENT_MODELS[self.schema].key_field)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its name (its functions do not pickle): one of :data:`EVENT_KINDS`."""
        return _kind_named, (self.schema,)

    def identity(self, event: Mapping[str, Any]) -> str:
        """What repeats of the event share (``<type>:<identity field>``).

        >>> EVENT_KINDS["tripwire.events.LoginEvent"].identity({"event_id": "e1"})
        'LoginEvent:e1'
        """
        return self.identity_of(event[self.identity_field])

    def identity_of(self, value: Any) -> str:
        """:meth:`identity` from the identity field's value alone."""
        return f"{self.short}:{value}"

    def subjects(self, event: Mapping[str, Any]) -> dict[str, str]:
        """The event's subjects that it has (a field left empty is no subject).

        >>> EVENT_KINDS["tripwire.events.LoginEvent"].subjects(
        ...     {"user_id": "u1", "account_id": "a1", "device_id": None, "ip": "1.2.3.4"})
        {'user': 'u1', 'account': 'a1', 'ip': '1.2.3.4'}
        """
        return {s: str(event[f]) for s, f in self.subject_fields if event.get(f)}

    def attributes(self, event: Mapping[str, Any]) -> dict[str, str]:
        """What kind of event it was, with the event's device and IP where it has them.

        >>> EVENT_KINDS["tripwire.events.FpsMessage"].attributes({"message_type":
        ...     "PAYMENT_REQUEST", "direction": "OUTBOUND", "amount_minor": 250_000})
        {'method': 'fps', 'kind': 'PAYMENT_REQUEST', 'direction': 'OUTBOUND', \
'channel': 'fps', 'value_band': 'high'}
        """
        out = self.describe(event)
        for f in ("device_id", "ip"):
            if event.get(f):
                out[f.removesuffix("_id")] = str(event[f])
        return out


def _kind_named(schema: str) -> EventKind:
    return EVENT_KINDS[schema]


EVENT_KINDS: dict[str, EventKind] = {k.schema: k for k in (
    EventKind("tripwire.events.CardPayment", "CardPayment", "event_id", frozenset(),
              card_features, (("card", "card_token"), ("account", "account_id"),
                              ("device", "device_id"), ("ip", "ip"),
                              ("merchant", "merchant_id")), _card_attributes),
    EventKind("tripwire.events.LoginEvent", "LoginEvent", "event_id", frozenset(),
              login_features, (("user", "user_id"), ("account", "account_id"),
                               ("device", "device_id"), ("ip", "ip")), _login_attributes),
    # An FPS repeat is a new message (new id and time, is_repeat set) carrying the
    # same transaction: everything else must match.
    EventKind("tripwire.events.FpsMessage", "FpsMessage", "transaction_reference",
              frozenset({"event_id", "event_time", "is_repeat"}), fps_features,
              (("account", "account_id"), ("transaction", "transaction_reference")),
              _fps_attributes),
)}
