"""The decision path as a pure function: decode → validate → features → controls
→ decision. No Kafka here: :mod:`tripwire.streams.loop` feeds it batches.

>>> path = DecisionPath.default()                       # doctest: +SKIP
>>> outs = path.process([in_record], now_ms=...)         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tripwire import __version__
from tripwire.controls.engine import OUTCOMES, ControlResult, ControlSet
from tripwire.features.jit import card_features
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import InRecord, OutRecord

__all__ = ["DECISION_SCHEMA", "ENGINE_VERSION", "DecisionPath"]

logger = logging.getLogger(__name__)

ENGINE_VERSION = f"tripwire-{__version__}"
DECISION_SCHEMA = "tripwire.decisions.Decision"
_SEVERITY = {o: i for i, o in enumerate(OUTCOMES)}

# What each event type is decided by: its entity key and its just-in-time features.
_EVENT_TYPES = {
    "tripwire.events.CardPayment": ("card_token", card_features),
}


class DecisionPath:
    """Decides events; every input yields exactly one decision or one quarantine record."""

    def __init__(self, codec: AvroCodec, controls: ControlSet) -> None:
        self.codec = codec
        self.controls = controls
        self._versions = controls.versions()
        self._version_tag = ",".join(f"{k}={v}" for k, v in sorted(self._versions.items()))

    @classmethod
    def default(cls) -> DecisionPath:
        return cls(AvroCodec(SchemaStore.default()), ControlSet.from_dir())

    def process(self, batch: Sequence[InRecord], now_ms: int) -> list[OutRecord]:
        out: list[OutRecord] = []
        for rec in batch:
            try:
                schema, event = self.codec.decode(rec.value)
            except DecodeError as exc:
                out.append(quarantine(self.codec, rec, "decode", [(exc.reason, None, exc.detail)],
                                      now_ms))
                continue
            kind = _EVENT_TYPES.get(schema.name)
            if kind is None:
                out.append(quarantine(self.codec, rec, "route", [(
                    "UNEXPECTED_TYPE", None,
                    f"{schema.name} is not decided on topic {rec.topic}")], now_ms, schema.name))
                continue
            decision = self.decide(schema.name, event, now_ms, rec.timestamp_ms)
            out.append(OutRecord("decisions", decision["entity_key"].encode(),
                                 self.codec.encode(DECISION_SCHEMA, decision)))
        return out

    def decide(self, event_type: str, event: Mapping[str, Any], now_ms: int,
               arrived_ms: int) -> dict[str, Any]:
        """One decision record (a dict of the Decision schema) for a valid event."""
        key_field, jit = _EVENT_TYPES[event_type]
        features = jit(event)
        results = self.controls.evaluate(event, features)
        return self._decision(event_type, event, key_field, features, results, now_ms,
                              arrived_ms)

    def _decision(self, event_type: str, event: Mapping[str, Any], key_field: str,
                  features: dict[str, Any], results: list[ControlResult], now_ms: int,
                  arrived_ms: int) -> dict[str, Any]:
        hits = [r for r in results if r.outcome is not None]
        outcome = max((r.outcome for r in hits if r.outcome), key=_SEVERITY.__getitem__,
                      default="ALLOW")
        actions: list[str] = []
        for r in hits:
            actions.extend(a for a in r.actions if a not in actions)
        digest = hashlib.sha256(f"{event['event_id']}|{self._version_tag}".encode()).hexdigest()
        return {
            "decision_id": digest[:32],
            "event_id": event["event_id"],
            "event_type": event_type,
            "entity_key": event[key_field],
            "event_time": event["event_time"],
            "decided_at": now_ms,
            "outcome": outcome,
            "actions": actions,
            "rule_hits": [{"control_id": r.control_id, "control_version": r.version,
                           "reason": r.reason, "score": r.score} for r in hits],
            "features": features,
            "feature_errors": {},
            "control_errors": {r.control_id: r.error for r in results if r.error},
            "control_versions": self._versions,
            "engine_version": ENGINE_VERSION,
            "latency_us": max(0, (now_ms - arrived_ms) * 1000),
            "repeat": False,
        }
