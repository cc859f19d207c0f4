"""The inline door's declared answers: deadlines, the stand-in policy, and how a
late decision is set beside its stand-in. Pure: the decide API
(:mod:`tripwire.connectors.decide_api`) and the reconcile stage
(:mod:`tripwire.streams.reconcile`) do the I/O.

A caller waiting on ``POST /v1/decide`` gets the pipeline's decision if it comes
within its event type's deadline; otherwise (or when Kafka does not take the
event) the **stand-in**: the more severe of

* the event's **tier-0 controls** (``TIER = 0``: fast and on the event alone),
  run in the API process with no features, and
* the **rule** declared for its type: an outcome, or ALLOW up to an amount and
  another outcome above it, e.g. ``CardPayment=ALLOW up to 25000 else DENY``.

The event is decided by the pipeline all the same; its decision is recorded next
to the stand-in, and one that disagrees raises an ops alert.

>>> p = StandInPolicy.parse("CardPayment=ALLOW up to 25000 else DENY; LoginEvent=ALLOW")
>>> p.answer("CardPayment", {"amount_minor": 30000}).outcome
'DENY'
>>> p.answer("FpsMessage", {"amount_minor": 1}).outcome  # no rule: the default
'ALLOW'
>>> parse_deadlines("CardPayment=250,FpsMessage=2000")["FpsMessage"]
2000
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire.controls.engine import ControlSet
from tripwire.controls.results import OUTCOMES
from tripwire.features.kinds import EVENT_KINDS

__all__ = ["ANSWER_SCHEMA", "DEFAULT_DEADLINES", "DEFAULT_STAND_IN", "MAX_DEADLINE_MS",
           "Rule", "StandIn", "StandInPolicy", "decision_identity", "event_identity",
           "late_record", "parse_deadlines", "stand_in_alert"]

ANSWER_SCHEMA = "tripwire.decide.InlineAnswer"

# What a caller waits for the pipeline, by event type (ms): card schemes give well
# under a second, FPS 25 s end to end; a fintech's inline controls get 100-500 ms.
DEFAULT_DEADLINES = "CardPayment=250,LoginEvent=300,FpsMessage=500"
# the reconcile stage holds each decision this much longer than any deadline
MAX_DEADLINE_MS = 30_000
# What a caller is told when the deadline passes: small card payments and FPS
# payments go through (a decline of a good customer costs too), large ones do not.
DEFAULT_STAND_IN = ("CardPayment=ALLOW up to 25000 else DENY; "
                    "FpsMessage=ALLOW up to 100000 else MANUAL_REVIEW; LoginEvent=ALLOW")

_TYPES = {k.short: k for k in EVENT_KINDS.values()}
_RULE = re.compile(r"\s*(?P<type>\w+)\s*=\s*(?P<outcome>[A-Z_]+)"
                   r"(?:\s+up\s+to\s+(?P<limit>\d+)\s+else\s+(?P<above>[A-Z_]+))?\s*")


def _known_type(name: str, what: str) -> None:
    if name not in _TYPES:
        raise ValueError(f"{what}: unknown event type {name!r}; one of {sorted(_TYPES)}")


def parse_deadlines(text: str) -> dict[str, int]:
    """``"CardPayment=250,FpsMessage=2000"`` → {event type: deadline ms}; the
    defaults fill in the types not named."""
    out = {}
    for part in [*DEFAULT_DEADLINES.split(","), *filter(None, text.split(","))]:
        name, sep, ms = part.strip().partition("=")
        if not sep or not ms.strip().isdigit():
            raise ValueError(f"deadline {part.strip()!r}: use <event type>=<milliseconds>")
        _known_type(name.strip(), "deadline")
        value = int(ms)
        if not 1 <= value <= MAX_DEADLINE_MS:
            raise ValueError(f"deadline {part.strip()!r}: between 1 and {MAX_DEADLINE_MS} ms")
        out[name.strip()] = value
    return out


@dataclass(frozen=True)
class Rule:
    """``outcome``, or ALLOW up to ``limit`` (minor units, inclusive) and ``above``
    over it."""

    outcome: str
    limit: int | None = None
    above: str | None = None

    def apply(self, event: Mapping[str, Any]) -> tuple[str, str]:
        amount = event.get("amount_minor")
        if self.limit is None or not isinstance(amount, int):
            return self.outcome, f"stand-in rule: {self.outcome}"
        if amount <= self.limit:
            return self.outcome, f"stand-in rule: {self.outcome} up to {self.limit}"
        return str(self.above), f"stand-in rule: {self.above} above {self.limit}"


@dataclass(frozen=True)
class StandIn:
    outcome: str
    actions: tuple[str, ...]
    reason: str


@dataclass
class StandInPolicy:
    """Rules by event type (short name) and the tier-0 controls."""

    rules: dict[str, Rule] = field(default_factory=dict)
    default: Rule = Rule("ALLOW")
    tier0: ControlSet | None = None

    @classmethod
    def parse(cls, text: str, controls: ControlSet | None = None) -> StandInPolicy:
        """Rules as ``TYPE=OUTCOME`` or ``TYPE=ALLOW up to LIMIT else OUTCOME``,
        separated by ``;``; ``controls``: the set whose tier-0 controls run too."""
        rules = {}
        for part in filter(str.strip, text.split(";")):
            m = _RULE.fullmatch(part)
            if m is None:
                raise ValueError(f"stand-in rule {part.strip()!r}: use TYPE=OUTCOME or "
                                 "TYPE=ALLOW up to <minor units> else OUTCOME")
            _known_type(m["type"], "stand-in rule")
            for o in (m["outcome"], m["above"]):
                if o is not None and o not in OUTCOMES:
                    raise ValueError(f"stand-in rule {part.strip()!r}: {o} is not one of "
                                     f"{', '.join(OUTCOMES)}")
            if m["limit"] is not None and m["outcome"] != "ALLOW":
                raise ValueError(f"stand-in rule {part.strip()!r}: a limit goes with ALLOW")
            limit = None if m["limit"] is None else int(m["limit"])
            rules[m["type"]] = Rule(m["outcome"], limit, m["above"])
        return cls(rules, tier0=tier0_of(controls) if controls is not None else None)

    def answer(self, event_type: str, event: Mapping[str, Any]) -> StandIn:
        """The stand-in for one event (``event_type``: short name): the more severe
        of its tier-0 controls' verdict and its type's rule."""
        outcome, reason = self.rules.get(event_type, self.default).apply(event)
        actions: tuple[str, ...] = ()
        if self.tier0 is not None and self.tier0.for_type(event_type):
            verdict = self.tier0.evaluate(event_type, event, {})
            if OUTCOMES.index(verdict.outcome) > OUTCOMES.index(outcome):
                outcome, actions = verdict.outcome, tuple(verdict.actions)
                reason = f"tier-0 controls: {verdict.reason}"
        return StandIn(outcome, actions, reason)


def tier0_of(controls: ControlSet) -> ControlSet | None:
    """The controls a stand-in runs: the tier-0 detectors, the action controls that
    act on what they find, and the selection control; None without a tier-0
    detector."""
    chosen = [c for c in controls.controls if c.control_id not in controls.stopped and (
        c.stage != "DETECTOR" or c.tier == 0)]
    if not any(c.stage == "DETECTOR" for c in chosen):
        return None
    return ControlSet(chosen)


def event_identity(schema: str, event: Mapping[str, Any]) -> str:
    """What the event's repeats share: its decision (a repeat's too) is found by it."""
    return str(event[EVENT_KINDS[schema].identity_field])


def decision_identity(decision: Mapping[str, Any]) -> str:
    """The identity of the event a decision is of (a repeat's decision carries the
    first event's id; an FPS repeat is matched by its transaction reference)."""
    kind = EVENT_KINDS.get(decision["event_type"])
    if kind is None or kind.identity_field == "event_id":
        return str(decision["event_id"])
    subject = next(s for s, f in kind.subject_fields if f == kind.identity_field)
    return str((decision.get("subjects") or {}).get(subject, decision["event_id"]))


def late_record(stand_in: Mapping[str, Any], decision: Mapping[str, Any],
                worker: str) -> dict[str, Any]:
    """The LATE record of ``decision`` beside the ANSWER ``stand_in`` it follows."""
    return {**stand_in, "kind": "LATE", "outcome": decision["outcome"],
            "actions": list(decision["actions"]), "stand_in": False,
            "reason": "the pipeline's decision after the stand-in",
            "decision_id": decision["decision_id"], "stand_in_outcome": stand_in["outcome"],
            "agreed": decision["outcome"] == stand_in["outcome"],
            "answered_at": decision["decided_at"], "worker": worker}


def stand_in_alert(late: Mapping[str, Any]) -> dict[str, Any]:
    """The ops alert of a late decision that disagrees with its stand-in."""
    lenient = OUTCOMES.index(late["stand_in_outcome"]) < OUTCOMES.index(late["outcome"])
    after = max(0, late["answered_at"] - late["requested_at"])
    acts = f" (actions {', '.join(late['actions'])}: the applier carries them out)" \
        if late["actions"] else ""
    return {
        "alert_id": f"stand-in:{late['reference']}", "raised_at": late["answered_at"],
        "kind": "STAND_IN_OVERTURNED", "subject": late["entity_key"],
        "summary": f"{late['event_type'].rsplit('.', 1)[-1]} {late['event_id']}: the caller "
                   f"was given the stand-in {late['stand_in_outcome']}; the pipeline decided "
                   f"{late['outcome']} {after} ms after the request{acts}",
        "details_json": orjson.dumps({"reference": late["reference"], "event_id": late["event_id"],
                               "stand_in": late["stand_in_outcome"],
                               "decision": late["outcome"], "decision_id": late["decision_id"],
                                       "stand_in_more_lenient": lenient}).decode()}
