"""The last stage of every decision path: controls over (event, features) → the
decision record, and the memory of decisions that answers repeats."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tripwire import __version__
from tripwire.controls.engine import ControlSet
from tripwire.controls.plane import AUDIT_SCHEMA, ControlPlane
from tripwire.controls.results import ControlResult, Verdict
from tripwire.controls.supervisor import ControlProcess
from tripwire.features.kinds import EVENT_KINDS, EventKind
from tripwire.schemas.audit import sealed
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import OutRecord
from tripwire.schemas.validate import DAY_MS
from tripwire.state.compact import Compactor
from tripwire.state.expiring import Expiring
from tripwire.state.manager import StateView

if TYPE_CHECKING:
    from tripwire.controls.deferred import DeferredRunner
    from tripwire.controls.plane import ReleaseSource

__all__ = ["DECISIONS_STORE", "DECISION_SCHEMA", "ENGINE_VERSION", "Decider",
           "memory_dictionary"]

logger = logging.getLogger(__name__)

ENGINE_VERSION = f"tripwire-{__version__}"
DECISION_SCHEMA = "tripwire.decisions.Decision"
DECISIONS_STORE = "decisions.v2"  # v2: Expiring with a local index
EXECUTION_SCHEMA = "tripwire.decisions.ControlExecutions"


def memory_dictionary(codec: AvroCodec, provenance: Mapping[str, str],
                      versions: Mapping[str, str]) -> bytes:
    """What most of every remembered decision repeats: one decision of each event
    type carrying every feature name, its provenance and the control versions
    (the compression dictionary of the decision memory, see
    :mod:`tripwire.state.compact`). The same inputs give the same bytes."""
    return b"".join(codec.encode(DECISION_SCHEMA, {
        "decision_id": "0" * 32, "event_id": "", "event_type": schema, "entity_key": "",
        "event_time": 0, "decided_at": 0, "outcome": "ALLOW", "actions": [], "rule_hits": [],
        "features": dict.fromkeys(provenance, 0), "feature_errors": {},
        "feature_provenance": dict(provenance), "control_errors": {},
        "control_versions": dict(versions), "engine_version": ENGINE_VERSION,
        "latency_us": 0, "repeat": False}) for schema in sorted(EVENT_KINDS))


def _untagged(stored: bytes) -> tuple[str, bytes]:
    """A remembered decision: (the tag :meth:`Decider.emit` put first, "" if none;
    the packed decision)."""
    if stored[:1] != b"#":
        return "", stored
    tag, packed = stored[1:].split(b"#", 1)
    return tag.decode(), packed


class Decider:
    """Runs the controls and builds the decision; remembers it for repeats."""

    def __init__(self, codec: AvroCodec, controls: ControlSet,
                 ttl_ms: int = 7 * DAY_MS, provenance: Mapping[str, str] | None = None,
                 sources: Sequence[ReleaseSource] = (), worker: str = "") -> None:
        self.codec = codec
        self.plane = ControlPlane(controls)
        self.sources = list(sources)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.provenance = dict(provenance or {})
        self.ttl_ms = ttl_ms
        self.memory = Expiring(DECISIONS_STORE)
        self.deferred: DeferredRunner | None = None  # set to run tier 2 off the path
        # set (isolate()) to run the inline controls in a supervised child process
        self.box: ControlProcess | None = None
        # a replay that reads what the path made (OutRecord.meta) and sends nothing
        # sets this: execution records, and decisions it need not remember, are not
        # encoded then (their value is empty)
        self.records_only = False
        self._provenance_of: dict[tuple[str, ...], dict[str, str]] = {}  # by feature names
        self._sync()
        # remembered decisions are kept compressed (~80 % smaller: state, changelog)
        self.compactor = Compactor(DECISIONS_STORE, memory_dictionary(
            codec, self.provenance, self._versions))

    @property
    def controls(self) -> ControlSet:
        return self.plane.controls

    def isolate(self, memory_mb: int = 1024) -> ControlProcess:
        """Run the inline controls in a supervised child from now on
        (:mod:`tripwire.controls.supervisor`): a control that crashes, aborts or
        stalls costs that control its result, never this process."""
        if self.box is None:
            self.box = ControlProcess(self.controls, memory_mb)
        return self.box

    def _sync(self) -> None:
        if self.box is not None:
            self.box.sync(self.controls)
        self._tiers = {c.control_id: c.tier for c in self.controls.controls}
        self._versions = self.controls.versions()
        self._version_tag = ",".join(f"{k}={v}" for k, v in sorted(self._versions.items()))

    def reload(self, now_ms: int) -> list[OutRecord]:
        """Apply the releases the sources have seen since the last call (between
        batches, never during one); one audit record per release."""
        out = []
        for source in self.sources:
            for rel in source.poll():
                audit = self.plane.apply(rel, now_ms, self.worker)
                if audit["action"] == "control.refuse":
                    logger.error("control release refused: %s: %s", rel["control_id"],
                                 orjson.loads(audit["details_json"])["error"])
                else:
                    logger.info("%s %s by %s", audit["action"], rel["control_id"],
                                rel["author"])
                out.append(OutRecord("audit", audit["subject"].encode(),
                                     self.codec.encode(AUDIT_SCHEMA, sealed(audit, ''))))
        if out:
            self._sync()
        return out

    @staticmethod
    def _key(kind: EventKind, event: Mapping[str, Any]) -> str:
        return str(event.get("account_id") or event[kind.entity_field])  # canary share

    def verdicts(self, items: Sequence[tuple[EventKind, Mapping[str, Any], dict[str, Any]]]) \
            -> list[Verdict]:
        """The control network's verdicts for (kind, event, features) items, in one
        round trip to the supervised child when there is one (its cost is mostly
        the trip: a batch shares it)."""
        asked = [(kind.short, event, features, self._key(kind, event))
                 for kind, event, features in items]
        if self.box is None:
            return [self.controls.evaluate(*a) for a in asked]
        return self.box.evaluate_many(asked)

    def decide(self, kind: EventKind, event: Mapping[str, Any], features: dict[str, Any],
               feature_errors: dict[str, str], now_ms: int, arrived_ms: int,
               verdict: Verdict | None = None) -> tuple[dict[str, Any], list[OutRecord]]:
        """Run the control network (or take its ``verdict``, from :meth:`verdicts`):
        the decision record (a dict of the Decision schema; encode and remember it
        with :meth:`emit`) and one execution record per control run, with the
        inputs it was given."""
        key = self._key(kind, event)
        if verdict is None:
            verdict = self.verdicts([(kind, event, features)])[0]
        decision = self._decision(kind, event, features, feature_errors, verdict, now_ms,
                                  arrived_ms)
        out = self.executions(event["event_id"], decision["decision_id"], verdict.results,
                              now_ms)
        if self.controls.for_type(kind.short, deferred=True):  # tier 2: after the decision
            if self.deferred is None:  # replay and tests: in line, deterministic
                deferred = self.controls.evaluate_deferred if self.box is None \
                    else self.box.evaluate_deferred
                out += self.executions(event["event_id"], decision["decision_id"],
                                       deferred(kind.short, event, features, key), now_ms)
            else:
                self.deferred.submit((kind.short, dict(event), dict(features), key,
                                      event["event_id"], decision["decision_id"], now_ms))
        return decision, out

    def executions(self, event_id: str, decision_id: str, results: list[ControlResult],
                   now_ms: int) -> list[OutRecord]:
        """The control-executions record of ``results`` (none when nothing ran)."""
        if not results:
            return []
        tiers = self._tiers
        record = {"event_id": event_id, "decision_id": decision_id,
                  "executed_at": now_ms, "executions": [{
                "control_id": r.control_id, "control_version": r.version, "stage": r.stage,
                "mode": r.mode, "tier": tiers.get(r.control_id, 1),
                "inputs_json": r.inputs_json or orjson.dumps(r.inputs, default=repr).decode(),
                "output_json": r.output_json,
                "error": r.error, "duration_us": r.duration_us,
                "remembered": r.remembered} for r in results]}
        value = b"" if self.records_only else self.codec.encode(EXECUTION_SCHEMA, record)
        return [OutRecord("control_executions", event_id.encode(), value, meta=(
            "executions", tuple((r.control_id, r.error is not None, r.duration_us,
                                 r.remembered) for r in results), record))]

    def _decision(self, kind: EventKind, event: Mapping[str, Any], features: dict[str, Any],
                  feature_errors: dict[str, str], verdict: Verdict, now_ms: int,
                  arrived_ms: int) -> dict[str, Any]:
        results = verdict.results
        hits = [r for r in results if r.fired and r.applied and r.stage != "SELECTION"]
        digest = hashlib.sha256(f"{event['event_id']}|{self._version_tag}".encode()).hexdigest()
        return {
            "decision_id": digest[:32],
            "event_id": event["event_id"],
            "event_type": kind.schema,
            "entity_key": event[kind.entity_field],
            "event_time": event["event_time"],
            "decided_at": now_ms,
            "outcome": verdict.outcome,
            "actions": list(verdict.actions),
            "rule_hits": [{"control_id": r.control_id, "control_version": r.version,
                           "reason": r.reason, "score": r.score} for r in hits],
            "features": features,
            "feature_errors": feature_errors,
            "feature_provenance": self._provenance(features),
            "control_errors": {r.control_id: r.error for r in results
                               if r.error and r.applied},
            "control_versions": self._versions,
            "engine_version": ENGINE_VERSION,
            "latency_us": max(0, (now_ms - arrived_ms) * 1000),
            "repeat": False,
            "subjects": kind.subjects(event),
            "attributes": kind.attributes(event),
            "typology": max(((r.score, r.signal) for r in hits
                             if r.stage == "DETECTOR" and r.signal), default=(0.0, ""))[1],
        }

    def _provenance(self, features: Mapping[str, Any]) -> dict[str, str]:
        """The provenance of the features given (one list of names per event type
        and set of feature errors: looked up once)."""
        names = tuple(features)
        known = self._provenance_of.get(names)
        if known is None:
            if len(self._provenance_of) > 1024:  # bounded, whatever the names
                self._provenance_of.clear()
            known = self._provenance_of[names] = {
                k: v for k, v in self.provenance.items() if k in features}
        return dict(known)  # the decision's own: a caller may change it

    def emit(self, identity: str, decision: dict[str, Any], view: StateView,
             tag: str = "", remember: bool = True) -> OutRecord:
        """Encode, remember for repeats (with ``tag``, the digest of the event's
        content, when known), and return the decision output. A replay that knows
        no record repeats the event passes ``remember=False``; with
        :attr:`records_only` too, the decision is not encoded either."""
        if not remember:
            encoded = b"" if self.records_only else self.codec.encode(DECISION_SCHEMA, decision)
        else:
            encoded = self.codec.encode(DECISION_SCHEMA, decision)
            packed = self.compactor.pack(view, encoded)
            if tag:  # a packed value never starts with "#" (tripwire.state.compact)
                packed = b"#" + tag.encode() + b"#" + packed
            self.memory.put(view, identity.encode(), packed,
                            decision["event_time"] + self.ttl_ms)
        timeouts = sum("no answer" in e for e in decision["feature_errors"].values())
        return OutRecord("decisions", decision["entity_key"].encode(), encoded,
                         meta=("decision", decision["event_type"], decision["outcome"],
                               decision["latency_us"], timeouts, decision))

    def remembered(self, identity: str, view: StateView) -> str | None:
        """None if ``identity`` is not remembered as decided; else the tag of the
        event decided ("" if it was not noted)."""
        stored = self.memory.get(view, identity.encode())
        return None if stored is None else _untagged(stored)[0]

    def recall(self, identity: str, view: StateView) -> OutRecord | None:
        """The remembered decision of ``identity``, marked as a repeat."""
        stored = self.memory.get(view, identity.encode())
        if stored is None:
            return None
        _, previous = self.codec.decode(self.compactor.unpack(view, _untagged(stored)[1]))
        previous["repeat"] = True
        return OutRecord("decisions", previous["entity_key"].encode(),
                         self.codec.encode(DECISION_SCHEMA, previous),
                         meta=("repeat", previous["event_type"]))
