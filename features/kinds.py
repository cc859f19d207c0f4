"""The inbound event types: how each is keyed, identified and featurised."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tripwire.features.jit import card_features, fps_features, login_features
from tripwire.schemas.models import EVENT_MODELS

__all__ = ["EVENT_KINDS", "EventKind"]


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
    entity_field: str = field(init=False)  # what its input records are keyed by

    def __post_init__(self) -> None:
        object.__setattr__(self, "entity_field", EVENT_MODELS[self.schema].key_field)

    def subjects(self, event: Mapping[str, Any]) -> dict[str, str]:
        """The event's subjects that it has (a field left empty is no subject).

        >>> EVENT_KINDS["tripwire.events.LoginEvent"].subjects(
        ...     {"user_id": "u1", "account_id": "a1", "device_id": None, "ip": "1.2.3.4"})
        {'user': 'u1', 'account': 'a1', 'ip': '1.2.3.4'}
        """
        return {s: str(event[f]) for s, f in self.subject_fields if event.get(f)}


EVENT_KINDS: dict[str, EventKind] = {k.schema: k for k in (
    EventKind("tripwire.events.CardPayment", "CardPayment", "event_id", frozenset(),
              card_features, (("card", "card_token"), ("account", "account_id"),
                              ("device", "device_id"), ("ip", "ip"),
                              ("merchant", "merchant_id"))),
    EventKind("tripwire.events.LoginEvent", "LoginEvent", "event_id", frozenset(),
              login_features, (("user", "user_id"), ("account", "account_id"),
                               ("device", "device_id"), ("ip", "ip"))),
    # An FPS repeat is a new message (new id and time, is_repeat set) carrying the
    # same transaction: everything else must match.
    EventKind("tripwire.events.FpsMessage", "FpsMessage", "transaction_reference",
              frozenset({"event_id", "event_time", "is_repeat"}), fps_features,
              (("account", "account_id"), ("transaction", "transaction_reference"))),
)}
