"""The live decision path, split across Kafka by entity so any number of workers
compute exact features:

    inputs ──► intake ──► tripwire.features.<entity>.v1 ──► features ──┐
      (card, login,  │      (keyed by entity: card, account, device,   │
       FPS topics)   │       ip, payee, ...)                           ▼
                     └───────────────► tripwire.gather.v1 ──► decide ──► decisions
                        (the event, keyed by identity)   (fragments, keyed by identity)

* **intake** (per input partition): decode, validate, dedup; one feature request
  per entity of the event, and the event itself to the gather topic.
* **features** (per entity partition): every entity key's state lives on exactly
  one partition, so windows are exact whatever the number of workers.
* **decide** (per identity partition): gathers the event and its fragments; when
  all have come — or a node's timeout passes, leaving a partial result with a
  per-node error — runs the controls and emits the decision.

Each stage is a pure processor; :class:`~tripwire.streams.loop.BatchLoop` runs it.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire.controls.engine import ControlSet
from tripwire.features.batch import BatchTable
from tripwire.features.engine import FeatureLibrary, make_view
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.validate import Validator
from tripwire.streams.decider import DECISIONS_STORE, Decider
from tripwire.streams.decision_path import (
    FEATURES_STORE,
    entity_state_key,
    event_features,
    feature_states,
)
from tripwire.streams.intake import DAY_MS, DEDUP_STORE, EVENT_KINDS, Admitted, Intake
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import InRecord, OutRecord
from tripwire.streams.state import StateManager

__all__ = ["DECISION_REQUEST", "FEATURE_FRAGMENT", "FEATURE_REQUEST", "DecisionStage",
           "FeatureStage", "IntakeStage"]

logger = logging.getLogger(__name__)

FEATURE_REQUEST = "tripwire.internal.FeatureRequest"
FEATURE_FRAGMENT = "tripwire.internal.FeatureFragment"
DECISION_REQUEST = "tripwire.internal.DecisionRequest"
TP = tuple[str, int]


class IntakeStage:
    """Decode → validate → dedup; fan out to the entity nodes and the gather topic."""

    name = "intake"
    stores: tuple[str, ...] = (DEDUP_STORE,)

    def __init__(self, codec: AvroCodec, library: FeatureLibrary,
                 validator: Validator | None = None, ttl_ms: int = 7 * DAY_MS) -> None:
        self.codec = codec
        self.library = library
        self.intake = Intake(codec, validator, ttl_ms)

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        for _, admitted in self.intake.admit_all(batch, now_ms, state):
            if isinstance(admitted, OutRecord):
                out.append(admitted)
                continue
            nodes: list[str] = []
            if not admitted.repeat:  # a repeat never counts twice in a feature
                out += self._requests(admitted, nodes)
            rec = admitted.rec
            out.append(OutRecord("gather", admitted.identity.encode(), self.codec.encode(
                DECISION_REQUEST, {"identity": admitted.identity, "event": rec.value,
                                   "nodes": nodes, "arrived_ms": rec.timestamp_ms,
                                   "repeat": admitted.repeat})))
        return out

    def _requests(self, a: Admitted, nodes: list[str]) -> list[OutRecord]:
        view = make_view(a.kind.short, a.event, a.kind.jit(a.event))
        out = []
        for entity, key in sorted(self.library.entities_of(view).items()):
            nodes.append(entity)
            fields = {f: view.get(f) for f in self.library.fields_for(entity)}
            out.append(OutRecord(f"features_{entity}", key.encode(), self.codec.encode(
                FEATURE_REQUEST, {"identity": a.identity, "event_id": a.event["event_id"],
                                  "entity": entity, "entity_key": key,
                                  "event_time": a.event["event_time"],
                                  "fields_json": orjson.dumps(fields)})))
        return out


class FeatureStage:
    """One entity key's windows live on one partition: exact for any worker count.

    Entity states are cached decoded in memory and written back once per batch
    (a hot key such as the system-wide one is encoded once per batch, not once
    per event); the write-back happens inside the batch's transaction.
    """

    name = "features"
    stores: tuple[str, ...] = (FEATURES_STORE,)

    def __init__(self, codec: AvroCodec, library: FeatureLibrary,
                 cache_keys: int = 100_000) -> None:
        self.codec = codec
        self.library = library
        self.cache_keys = cache_keys

    def compute(self, req: dict[str, Any], state: dict[str, Any]) \
            -> tuple[dict[str, Any], list[str]]:
        """The feature values of one request (the node's work; tests slow it down)."""
        return self.library.compute(req["entity"], state, orjson.loads(req["fields_json"]),
                                    req["event_time"])

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        states = feature_states(state, self.cache_keys)
        for rec in batch:
            _, req = self.codec.decode(rec.value)  # written by intake: trusted
            values: dict[str, Any]
            notes: list[str]
            if req["entity"] not in self.library.by_entity:
                values, notes = {}, [f"no features are defined for {req['entity']}"]
            else:
                st = states.get(state, (rec.topic, rec.partition),
                                entity_state_key(req["entity"], req["entity_key"]))
                values, notes = self.compute(req, st)
            out.append(OutRecord("gather", req["identity"].encode(), self.codec.encode(
                FEATURE_FRAGMENT, {"identity": req["identity"], "entity": req["entity"],
                                   "entity_key": req["entity_key"],
                                   "values_json": orjson.dumps(values), "notes": notes})))
        states.flush(state)
        return out


@dataclass
class _Pending:
    tp: TP
    first_offset: int
    request: dict[str, Any] | None = None
    arrived_ms: int = 0
    fragments: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeats: int = 0
    deadline: int | None = None


class DecisionStage:
    """Gathers each event's fragments, then decides; partial after ``node_timeout_ms``.

    Gathering is kept in memory; the loop commits input offsets only up to the
    oldest event still gathering (:meth:`safe_offsets`), so after a restart those
    messages are read again, and decided identities are skipped.
    """

    name = "decide"
    stores: tuple[str, ...] = (DECISIONS_STORE,)

    def __init__(self, codec: AvroCodec, controls: ControlSet, node_timeout_ms: int = 250,
                 ttl_ms: int = 7 * DAY_MS, library: FeatureLibrary | None = None,
                 batch: BatchTable | None = None) -> None:
        self.codec = codec
        self.batch = batch
        self.decider = Decider(codec, controls, ttl_ms,
                               (library or FeatureLibrary()).feature_meta())
        self.node_timeout_ms = node_timeout_ms
        self.pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[int, str]] = []

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        for rec in batch:
            schema, msg = self.codec.decode(rec.value)
            identity = msg["identity"]
            view = state.view(rec.topic, rec.partition)
            if schema.name == DECISION_REQUEST and msg["repeat"]:
                p = self.pending.get(identity)
                if p is not None:
                    p.repeats += 1
                    continue
                again = self.decider.recall(identity, view)
                out.append(again or quarantine(self.codec, rec, "dedup", [(
                    "DECISION_EXPIRED", None, "repeat of an event whose decision is no "
                    "longer kept")], now_ms))
                continue
            if self.decider.memory.get(view, identity.encode()) is not None:
                continue  # decided before a restart: read again, nothing to do
            p = self.pending.get(identity)
            if p is None:
                p = self.pending[identity] = _Pending((rec.topic, rec.partition), rec.offset)
            if schema.name == DECISION_REQUEST:
                p.request, p.arrived_ms = msg, msg["arrived_ms"]
                p.deadline = now_ms + self.node_timeout_ms
                heapq.heappush(self._deadlines, (p.deadline, identity))
            else:
                p.fragments[msg["entity"]] = msg
            if p.request is not None and all(n in p.fragments for n in p.request["nodes"]):
                out += self._decide(identity, p, now_ms, state)
        return out + self.tick(now_ms, state)

    ORPHAN_MS = 600_000

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """Decide, with a partial result, every event whose node timeout has passed."""
        out: list[OutRecord] = []
        if len(self.pending) > len(self._deadlines):  # fragments whose event never came
            for identity, p in list(self.pending.items()):
                if p.request is None and p.deadline is None:
                    p.deadline = now_ms + self.ORPHAN_MS
                    heapq.heappush(self._deadlines, (p.deadline, identity))
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, identity = heapq.heappop(self._deadlines)
            due = self.pending.get(identity)
            if due is None or due.deadline is None or due.deadline > now_ms:
                continue  # decided already, or a newer deadline is queued
            if due.request is not None:
                out += self._decide(identity, due, now_ms, state)
            else:
                logger.warning("dropping fragments of %s: its event never arrived", identity)
                del self.pending[identity]
        return out

    def _decide(self, identity: str, p: _Pending, now_ms: int,
                state: StateManager) -> list[OutRecord]:
        del self.pending[identity]
        assert p.request is not None
        schema, event = self.codec.decode(p.request["event"])
        kind = EVENT_KINDS[schema.name]
        _, features, errors = event_features(kind, event, self.batch)
        for node in p.request["nodes"]:
            frag = p.fragments.get(node)
            if frag is None:
                errors[node] = f"no answer within {self.node_timeout_ms} ms"
                continue
            features.update(orjson.loads(frag["values_json"]))
            if frag["notes"]:
                errors[node] = "; ".join(frag["notes"])
        decision, executions = self.decider.decide(kind, event, features, errors, now_ms,
                                                   p.arrived_ms)
        view = state.view(*p.tp)
        out = [self.decider.emit(identity, decision, view), *executions]
        for _ in range(p.repeats):
            again = self.decider.recall(identity, view)
            if again is not None:
                out.append(again)
        self.decider.memory.expire(view, event["event_time"])
        return out

    def safe_offsets(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """Commit no further than the oldest message of an event still gathering."""
        oldest: dict[TP, int] = {}
        for p in self.pending.values():
            if p.tp not in oldest or p.first_offset < oldest[p.tp]:
                oldest[p.tp] = p.first_offset
        return {tp: min(off, oldest.get(tp, off)) for tp, off in offsets.items()}

    def drop(self, tps: Sequence[TP]) -> None:
        """Partitions went to another worker: it will read their pending events again."""
        gone = set(tps)
        for identity in [i for i, p in self.pending.items() if p.tp in gone]:
            del self.pending[identity]
