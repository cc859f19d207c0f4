"""The decision path as a pure function of (batch, time, state):

    decode → validate → dedup → features → controls → decision

Every input gives exactly one output: a decision, or a quarantine record with
its reasons. No Kafka here: :mod:`tripwire.streams.loop` feeds it batches and
persists its state; tests and backtests call :meth:`DecisionPath.process` with a
:class:`~tripwire.streams.state.StateManager` in memory.

Idempotency: the first decision for an event identity (event id; for FPS the
transaction reference) is kept for ``dedup_ttl_ms`` of event time. A repeat with
identical content gets that same decision again (``repeat`` set); a repeat with
different content is quarantined as a conflict.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tripwire import __version__
from tripwire.controls.engine import OUTCOMES, ControlResult, ControlSet
from tripwire.features.jit import card_features, fps_features, login_features
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.registry import SchemaStore
from tripwire.schemas.validate import Reason, Validator
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import InRecord, OutRecord
from tripwire.streams.state import StateManager, StateView

__all__ = ["DECISION_SCHEMA", "DEDUP_STORE", "ENGINE_VERSION", "EVENT_KINDS", "INPUTS",
           "DecisionPath", "EventKind"]

logger = logging.getLogger(__name__)

ENGINE_VERSION = f"tripwire-{__version__}"
DECISION_SCHEMA = "tripwire.decisions.Decision"
DEDUP_STORE = "dedup.v1"
INPUTS = ("card_payments", "logins", "fps")  # topic keys the decision path reads
DAY_MS = 86_400_000
_SEVERITY = {o: i for i, o in enumerate(OUTCOMES)}
_ENTRY = struct.Struct(">32sq")  # content hash, expiry (event time ms)


@dataclass(frozen=True)
class EventKind:
    """How one inbound event type is keyed, identified and featurised."""

    schema: str
    short: str
    entity_field: str
    identity_field: str  # repeats share this value
    volatile: frozenset[str]  # fields a legitimate repeat may change
    jit: Callable[[Mapping[str, Any]], dict[str, Any]]


EVENT_KINDS: dict[str, EventKind] = {k.schema: k for k in (
    EventKind("tripwire.events.CardPayment", "CardPayment", "card_token", "event_id",
              frozenset(), card_features),
    EventKind("tripwire.events.LoginEvent", "LoginEvent", "user_id", "event_id",
              frozenset(), login_features),
    # An FPS repeat is a new message (new id and time, is_repeat set) carrying the
    # same transaction: everything else must match.
    EventKind("tripwire.events.FpsMessage", "FpsMessage", "account_id",
              "transaction_reference", frozenset({"event_id", "event_time", "is_repeat"}),
              fps_features),
)}


def _content_hash(kind: EventKind, event: Mapping[str, Any]) -> bytes:
    h = hashlib.sha256()
    for k in sorted(event):
        if k not in kind.volatile:
            h.update(f"{k}={event[k]!r};".encode())
    return h.digest()


class DecisionPath:
    """Decides events; every input yields exactly one decision or one quarantine record."""

    name = "decision-path"
    stores: tuple[str, ...] = (DEDUP_STORE,)

    def __init__(self, codec: AvroCodec, controls: ControlSet,
                 validator: Validator | None = None, dedup_ttl_ms: int = 7 * DAY_MS) -> None:
        self.codec = codec
        self.controls = controls
        self.validator = validator or Validator()
        self.dedup_ttl_ms = dedup_ttl_ms
        self._versions = controls.versions()
        self._version_tag = ",".join(f"{k}={v}" for k, v in sorted(self._versions.items()))

    @classmethod
    def default(cls, schema_registry_url: str | None = None) -> DecisionPath:
        """The shipped schemas and controls; the Confluent framing when a registry is set."""
        return cls(AvroCodec.from_url(schema_registry_url, SchemaStore.default()),
                   ControlSet.from_dir())

    # -- the stage ----------------------------------------------------------------
    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        watermarks: dict[tuple[str, int], int] = {}
        for rec in batch:
            view = state.view(rec.topic, rec.partition)
            result = self._one(rec, now_ms, view)
            if isinstance(result, OutRecord):
                out.append(result)
                continue
            out.append(result[0])
            tp = (rec.topic, rec.partition)
            watermarks[tp] = max(watermarks.get(tp, 0), result[1])
        for (t, p), mark in watermarks.items():
            self._expire(state.view(t, p), mark)
        return out

    def _one(self, rec: InRecord, now_ms: int, view: StateView) \
            -> OutRecord | tuple[OutRecord, int]:
        def refuse(stage: str, reasons: list[Reason], schema: str | None = None) -> OutRecord:
            return quarantine(self.codec, rec, stage, reasons, now_ms, schema)

        try:
            schema, event = self.codec.decode(rec.value)
        except DecodeError as exc:
            return refuse("decode", [(exc.reason, None, exc.detail)])
        kind = EVENT_KINDS.get(schema.name)
        if kind is None:
            return refuse("route", [("UNEXPECTED_TYPE", None,
                                     f"{schema.name} is not decided on topic {rec.topic}")],
                          schema.name)
        reasons = self.validator.validate(schema.name, event, now_ms)
        if reasons:
            return refuse("validate", reasons, schema.name)

        ident = f"{kind.short}:{event[kind.identity_field]}".encode()
        digest = _content_hash(kind, event)
        seen = view.get(DEDUP_STORE, b"d:" + ident)
        if seen is not None:
            stored_hash, _expiry = _ENTRY.unpack_from(seen)
            if stored_hash != digest:
                return refuse("dedup", [(
                    "DUPLICATE_CONFLICT", kind.identity_field,
                    f"{event[kind.identity_field]} was already received with different "
                    "content; the first message's decision stands")], schema.name)
            _, previous = self.codec.decode(seen[_ENTRY.size:])
            previous["repeat"] = True
            return OutRecord("decisions", previous["entity_key"].encode(),
                             self.codec.encode(DECISION_SCHEMA, previous)), event["event_time"]
        original = event.get("original_reference") if kind.short == "FpsMessage" else None
        if original is not None and view.get(DEDUP_STORE, f"d:FpsMessage:{original}"
                                             .encode()) is None:
            return refuse("validate", [(
                "UNKNOWN_ORIGINAL", "original_reference",
                f"{event['message_type']} refers to {original}, which was never received "
                "(or has expired)")], schema.name)

        decision = self.decide(kind, event, now_ms, rec.timestamp_ms)
        encoded = self.codec.encode(DECISION_SCHEMA, decision)
        expiry = event["event_time"] + self.dedup_ttl_ms
        view.put(DEDUP_STORE, b"d:" + ident, _ENTRY.pack(digest, expiry) + encoded)
        view.put(DEDUP_STORE, b"x:" + struct.pack(">q", expiry) + ident, b"")
        return OutRecord("decisions", decision["entity_key"].encode(), encoded), \
            event["event_time"]

    def _expire(self, view: StateView, watermark: int) -> None:
        """Forget identities whose expiry (event time) is behind the partition's newest event."""
        done = []
        for key, _ in view.items(DEDUP_STORE, b"x:"):
            (expiry,) = struct.unpack_from(">q", key, 2)
            if expiry > watermark:
                break
            done.append(key)
        for key in done:
            view.delete(DEDUP_STORE, key)
            view.delete(DEDUP_STORE, b"d:" + key[10:])

    # -- the decision ------------------------------------------------------------
    def decide(self, kind: EventKind, event: Mapping[str, Any], now_ms: int,
               arrived_ms: int) -> dict[str, Any]:
        """One decision record (a dict of the Decision schema) for a valid event."""
        features = kind.jit(event)
        results = self.controls.evaluate(kind.short, event, features)
        return self._decision(kind, event, features, results, now_ms, arrived_ms)

    def _decision(self, kind: EventKind, event: Mapping[str, Any], features: dict[str, Any],
                  results: list[ControlResult], now_ms: int, arrived_ms: int) \
            -> dict[str, Any]:
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
            "event_type": kind.schema,
            "entity_key": event[kind.entity_field],
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
