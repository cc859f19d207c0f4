"""What a decision's actions become, and the rules they are carried out by.

A decision names its actions (``BLOCK_CARD``, ``CUSTOMER_ALERT``, ...). Each
becomes one **action request** (:func:`requests_of`): an ``action_id`` derived
from the decision and the action (a decision sent again gives the same ids), the
subject it applies to (the card, the account, the entity and typology of a case)
and the time of the event. The applier
(:class:`~tripwire.streams.apply.ApplyStage`) carries each out once, by the
:class:`ActionPolicy`:

* **what is in effect is not done again:** a blocked card is not blocked again, an
  open case (per entity and typology) is not opened again, and a customer is not
  alerted twice for the same incident (account and typology) within
  ``alert_quiet_ms``; such an action is recorded ``SUPPRESSED``;
* **rate limits** (:class:`Limit`): at most ``max`` actions of a type per
  ``window_ms`` of event time, system-wide or per subject. The action that would
  exceed one trips it: that one and every later one of its type and scope are
  held (``RATE_LIMITED``), in order, until an audited resume applies them, each
  once.

Pure: no Kafka, no clock; the applier keeps the state.

>>> policy = ActionPolicy.parse({"limits": [
...     {"action": "BLOCK_CARD", "max": 500, "per_minutes": 10}]})
>>> policy.limits[0].id
'BLOCK_CARD/system/500per10m'
>>> d = {"decision_id": "d1", "event_id": "e1", "entity_key": "c1", "event_time": 5,
...      "actions": ["BLOCK_CARD", "CUSTOMER_ALERT"],
...      "rule_hits": [{"control_id": "card_testing", "score": 0.9}],
...      "subjects": {"card": "c1", "account": "a1"}}
>>> [(r["action"], r["subject"], r["target"]) for r in requests_of(d)]
[('BLOCK_CARD', 'card', 'c1'), ('CUSTOMER_ALERT', 'account', 'a1')]
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ACTIONS", "ACTION_SCHEMA", "ALERT_SCHEMA", "CASE_SCHEMA", "OPS_ALERT_SCHEMA",
           "STATUSES", "ActionPolicy", "Limit", "action_id", "requests_of", "typology_of"]

ACTION_SCHEMA = "tripwire.actions.ActionRequest"
# what carrying actions out writes (the schemas of the outcome topics)
ALERT_SCHEMA = "tripwire.alerts.CustomerAlert"
CASE_SCHEMA = "tripwire.cases.Case"
OPS_ALERT_SCHEMA = "tripwire.ops.OpsAlert"
ACTIONS = ("BLOCK_CARD", "HOLD_FUNDS", "CUSTOMER_ALERT", "OPEN_CASE", "PAUSE_CUSTOMER_ALERTS",
           "NOTIFY_SOC")
# REQUESTED: asked for, not yet carried out (the applier's input); DONE: carried
# out; SUPPRESSED: its effect already in place; RATE_LIMITED: held by a tripped
# limit, applied on resume; FAILED: could not be carried out
STATUSES = ("REQUESTED", "DONE", "RATE_LIMITED", "HELD", "FAILED", "SUPPRESSED")

# the subject (a key of a decision's ``subjects``) each action applies to; an
# action on a subject the event does not have applies to the decision's entity
SUBJECT_OF = {"BLOCK_CARD": "card", "HOLD_FUNDS": "transaction", "CUSTOMER_ALERT": "account",
              "OPEN_CASE": "entity", "PAUSE_CUSTOMER_ALERTS": "system", "NOTIFY_SOC": "system"}


@dataclass(frozen=True)
class Limit:
    """At most ``max`` actions of type ``action`` per ``window_ms`` of event time,
    counted system-wide (``per`` ``"system"``) or per subject (``per`` a subject
    name, e.g. ``"account"``: per account)."""

    action: str
    max: int
    window_ms: int
    per: str = "system"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"limit on unknown action {self.action!r}; actions: "
                             f"{', '.join(ACTIONS)}")
        if self.max < 1 or self.window_ms < 1:
            raise ValueError(f"limit on {self.action}: max and window must be positive")

    @property
    def id(self) -> str:
        minutes, rest = divmod(self.window_ms, 60_000)
        span = f"{minutes}m" if not rest else f"{self.window_ms}ms"
        return f"{self.action}/{self.per}/{self.max}per{span}"

    def scope(self, request: Mapping[str, Any]) -> str:
        """The counter this request goes to: the limit's id, with the subject's key
        when counted per subject."""
        if self.per == "system":
            return self.id
        return f"{self.id}:{request.get('subjects', {}).get(self.per, request['target'])}"


@dataclass(frozen=True)
class ActionPolicy:
    """The applier's rules (defaults: no limit, one alert per incident an hour)."""

    limits: tuple[Limit, ...] = ()
    alert_quiet_ms: int = 60 * 60_000  # one customer alert per incident within this
    remember_ms: int = 30 * 24 * 60 * 60_000  # how long applied action ids are kept
    by_action: dict[str, tuple[Limit, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by: dict[str, list[Limit]] = {}
        for lim in self.limits:
            by.setdefault(lim.action, []).append(lim)
        ids = [lim.id for lim in self.limits]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"limits declared twice: {twice}")
        object.__setattr__(self, "by_action", {a: tuple(v) for a, v in by.items()})

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ActionPolicy:
        """From a mapping (a TOML file's): ``limits`` (each ``action``, ``max``,
        ``per_minutes`` and optionally ``per``), ``alert_quiet_minutes``."""
        unknown = set(data) - {"limits", "alert_quiet_minutes", "remember_days"}
        if unknown:
            raise ValueError(f"unknown action policy keys: {sorted(unknown)}")
        limits = []
        for i, raw in enumerate(data.get("limits", [])):
            extra = set(raw) - {"action", "max", "per_minutes", "per"}
            if extra or not {"action", "max", "per_minutes"} <= set(raw):
                raise ValueError(f"limits[{i}]: needs action, max and per_minutes (and "
                                 f"optionally per); got {sorted(raw)}")
            limits.append(Limit(raw["action"], int(raw["max"]),
                                int(float(raw["per_minutes"]) * 60_000),
                                raw.get("per", "system")))
        return cls(tuple(limits), int(float(data.get("alert_quiet_minutes", 60)) * 60_000),
                   int(float(data.get("remember_days", 30)) * 24 * 60 * 60_000))

    @classmethod
    def load(cls, path: Path | None) -> ActionPolicy:
        """From a TOML file (None: the defaults)."""
        if path is None:
            return cls()
        try:
            return cls.parse(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"action policy {path}: {exc}") from exc


def action_id(decision_id: str, action: str) -> str:
    """The same decision and action give the same id, wherever and however often."""
    return hashlib.sha256(f"{decision_id}|{action}".encode()).hexdigest()[:32]


def typology_of(decision: Mapping[str, Any]) -> str:
    """What the decision is about: its strongest detector's signal (a decision of
    schema v3 names it), else its strongest rule hit's control (ties: the first by
    id), else ``""``."""
    if decision.get("typology"):
        return str(decision["typology"])
    hits = sorted(decision.get("rule_hits") or (), key=lambda h: (-h.get("score", 0.0),
                                                                   h["control_id"]))
    return hits[0]["control_id"] if hits else ""


def requests_of(decision: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One action request per action of ``decision``, in the decision's order."""
    subjects = dict(decision.get("subjects") or {})
    entity = decision["entity_key"]
    typology = typology_of(decision)
    out = []
    for action in decision.get("actions") or ():
        subject = SUBJECT_OF.get(action, "entity")
        if subject == "entity":
            target = f"{entity}|{typology}" if action == "OPEN_CASE" else entity
        elif subject == "system":
            target = "system"
        elif subject == "transaction":
            target = f"{subjects.get('account', entity)}|{decision['event_id']}"
        else:
            target = subjects.get(subject, entity)
        out.append({
            "action_id": action_id(decision["decision_id"], action),
            "decision_id": decision["decision_id"],
            "event_id": decision["event_id"],
            "action": action,
            "target": target,
            "reason": typology or "decision",
            "requested_at": decision["event_time"],
            "status": "REQUESTED",
            "detail": None,
            "subject": subject,
            "typology": typology,
            "entity_key": entity,
            "subjects": subjects,
        })
    return out
