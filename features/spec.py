"""Declarative feature definitions.

A velocity feature is a few lines: a name, the entity it is kept per, an
aggregate, a window and a filter. No stream code is written per feature.

>>> f = FeatureSpec("card_declines_10m", "card", "count", "10m",
...                 where={"event_type": "CardPayment", "response": "DECLINED"})
>>> f.window_ms, f.state_key
(600000, 'card_declines_10m@1')
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AGGREGATES",
    "ENTITIES",
    "FeatureSpec",
    "entity_keys",
    "parse_duration",
]

Aggregate = Literal["count", "sum", "distinct", "max", "since_last"]
AGGREGATES: tuple[str, ...] = ("count", "sum", "distinct", "max", "since_last")

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str | int) -> int:
    """``"10m"`` → 600000 (milliseconds); integers are milliseconds already."""
    if isinstance(text, int):
        return text
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 500ms, 30s, 10m, 1h or 7d")
    return int(m[1]) * _UNIT_MS[m[2]]


def _payee(view: Mapping[str, Any]) -> str | None:
    return view.get("counterparty")


def _account_payee(view: Mapping[str, Any]) -> str | None:
    acc, payee = view.get("account_id"), view.get("counterparty")
    return f"{acc}>{payee}" if acc and payee else None


# How each entity's key is read from an event view (the event's fields, its
# just-in-time features and ``event_type``). None: the event has no such entity.
ENTITIES: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "card": lambda v: v.get("card_token"),
    "account": lambda v: v.get("account_id"),
    "user": lambda v: v.get("user_id"),
    "device": lambda v: v.get("device_id"),
    "ip": lambda v: v.get("ip"),
    "payee": _payee,
    "account_payee": _account_payee,
    "merchant": lambda v: v.get("merchant_id"),
    "system": lambda v: "*",
}


def entity_keys(view: Mapping[str, Any], entities: list[str] | None = None) -> dict[str, str]:
    """The entities this event belongs to, with their keys."""
    out = {}
    for name in entities or list(ENTITIES):
        key = ENTITIES[name](view)
        if key is not None:
            out[name] = str(key)
    return out


@dataclass(frozen=True)
class FeatureSpec:
    """One velocity feature: ``aggregate`` of ``field`` over events of ``entity``
    matching ``where``, in the exact sliding window (t - window, t]."""

    name: str
    entity: str
    aggregate: Aggregate
    window: str | int
    field: str | None = None
    where: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    version: int = 1
    allowed_lateness: str | int = "5m"
    description: str = ""

    def __post_init__(self) -> None:
        if self.entity not in ENTITIES:
            raise ValueError(f"{self.name}: unknown entity {self.entity!r}; "
                             f"known: {', '.join(ENTITIES)}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"{self.name}: unknown aggregate {self.aggregate!r}")
        if self.aggregate in ("sum", "distinct", "max") and not self.field:
            raise ValueError(f"{self.name}: {self.aggregate} needs a field")
        if not re.match(r"^[a-z][a-z0-9_]*$", self.name):
            raise ValueError(f"{self.name!r}: feature names are snake_case")
        parse_duration(self.window)
        parse_duration(self.allowed_lateness)

    @functools.cached_property
    def window_ms(self) -> int:
        return parse_duration(self.window)

    @functools.cached_property
    def lateness_ms(self) -> int:
        return parse_duration(self.allowed_lateness)

    @functools.cached_property
    def state_key(self) -> str:
        """Where its state lives: named and versioned, never derived from parameters.
        Change the window or filter → bump ``version`` → fresh state."""
        return f"{self.name}@{self.version}"

    @functools.cached_property
    def hot(self) -> tuple[str, str, int, int, str, str]:
        """(name, state key, lateness and window in ms, aggregate, field or ""): what
        :func:`tripwire.features.window.update` reads of it for every event."""
        return (self.name, self.state_key, self.lateness_ms, self.window_ms, self.aggregate,
                self.field or "")

    @functools.cached_property
    def _conditions(self) -> tuple[tuple[str, bool, Any], ...]:
        return tuple((k, isinstance(w, (list, tuple, set, frozenset)),
                      frozenset(w) if isinstance(w, (list, tuple, set, frozenset)) else w)
                     for k, w in self.where.items())

    def matches(self, view: Mapping[str, Any]) -> bool:
        for k, is_set, want in self._conditions:
            got = view.get(k)
            if (got not in want) if is_set else (got != want):
                return False
        return True

    def matches_type(self, event_type: Any) -> bool:
        """Whether an event of ``event_type`` can match (its other fields aside)."""
        for k, is_set, want in self._conditions:
            if k == "event_type":
                return (event_type in want) if is_set else (event_type == want)
        return True

    def fields_read(self) -> set[str]:
        """The event fields this feature needs (to ship only those between stages)."""
        return set(self.where) | ({self.field} if self.field else set())
