"""The whole decision path in one pure function of (batch, time, state):

    intake (decode → validate → dedup) → features → controls → decision

This is the broker-free entry point: unit tests and backtests call
:meth:`DecisionPath.process` with an in-memory
:class:`~tripwire.streams.state.StateManager`. State is kept per input partition
(the state view of each record), so values are exact when every entity's events
share one ordered log: a backtest runs it over
:class:`~tripwire.streams.state.OneLogState`, one log whatever the topics. The
live, multi-worker path splits the same pieces across Kafka by entity
(:mod:`tripwire.streams.pipeline`) and gives the same values for any
partitioning.

Every input gives exactly one output: a decision, or a quarantine record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tripwire.controls.engine import ControlSet
from tripwire.features.batch import BatchTable
from tripwire.features.engine import (
    FeatureLibrary,
    decode_state,
    encode_state,
    load_state,
    make_view,
    state_records,
)
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.schemas.validate import Validator
from tripwire.streams.decider import DECISION_SCHEMA, DECISIONS_STORE, ENGINE_VERSION, Decider
from tripwire.streams.intake import DAY_MS, DEDUP_STORE, EVENT_KINDS, Admitted, EventKind, Intake
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import InRecord, OutRecord
from tripwire.streams.state import DecodedCache, StateManager
from tripwire.streams.topics import ANSWERS

if TYPE_CHECKING:
    from tripwire.connectors.control_sources import ReleaseSource

__all__ = ["DECISION_SCHEMA", "DEDUP_STORE", "ENGINE_VERSION", "EVENT_KINDS", "FEATURES_STORE",
           "INPUTS", "DecisionPath", "EventKind", "entity_state_key", "event_features",
           "feature_states", "local_features"]

logger = logging.getLogger(__name__)

INPUTS = ("card_payments", "logins", "fps")  # topic keys the decision path reads
FEATURES_STORE = "features.v3"  # v3: a bucket per millisecond, hot keys paged


def event_features(kind: EventKind, event: dict[str, Any], batch: BatchTable | None) \
        -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The nodes computed where the event is: just-in-time and batch.
    Returns (view for the velocity nodes, values, errors per node)."""
    jit = kind.jit(event)
    view = make_view(kind.short, event, jit)
    values: dict[str, Any] = dict(jit)
    errors: dict[str, str] = {}
    if batch is not None:
        try:
            got, error = batch.features(view)
        except Exception as exc:  # a broken node must not stop the decision
            got, error = {}, f"{type(exc).__name__}: {exc}"
        values.update(got)
        if error:
            errors["batch"] = error
    return view, values, errors


def feature_states(state: StateManager, max_keys: int = 100_000) -> DecodedCache:
    """The decoded entity states (feature windows) of a processor's state."""
    return state.decoded(FEATURES_STORE, decode_state, encode_state, max_keys,
                         load_state, state_records)


def entity_state_key(entity: str, key: str) -> bytes:
    """Where one entity key's windows are stored."""
    return f"{entity}|{key}".encode()


def local_features(library: FeatureLibrary, accepted: Admitted, states: DecodedCache,
                   state: StateManager, tp: tuple[str, int],
                   batch: BatchTable | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Every feature of an accepted event, computed here from the state of ``tp``
    (the partition whose view the event came with); (values, errors/notes)."""
    fview, values, errors = event_features(accepted.kind, accepted.event, batch)
    t = accepted.event["event_time"]
    for entity, key in library.entities_of(fview).items():
        st = states.get(state, tp, entity_state_key(entity, key))
        got, notes = library.compute(entity, st, fview, t)
        values.update(got)
        if notes:
            errors[entity] = "; ".join(notes)
    return values, errors


class DecisionPath:
    """Decides events; every input yields exactly one decision or one quarantine record."""

    name = "decision-path"
    stores: tuple[str, ...] = (DEDUP_STORE, FEATURES_STORE, DECISIONS_STORE)
    eager = ANSWERS  # sent at once; state and offsets commit in the background

    def __init__(self, codec: AvroCodec, controls: ControlSet,
                 validator: Validator | None = None, dedup_ttl_ms: int = 7 * DAY_MS,
                 features: FeatureLibrary | None = None, batch: BatchTable | None = None,
                 sources: Sequence[ReleaseSource] = ()) -> None:
        self.codec = codec
        self.intake = Intake(codec, validator, dedup_ttl_ms)
        self.features = features or FeatureLibrary()
        self.batch = batch
        self.decider = Decider(codec, controls, dedup_ttl_ms, self.features.feature_meta(),
                               sources)

    @property
    def controls(self) -> ControlSet:
        """The running controls (hot reloads replace them between batches)."""
        return self.decider.controls

    @property
    def validator(self) -> Validator:
        return self.intake.validator

    @classmethod
    def default(cls, schema_registry_url: str | None = None) -> DecisionPath:
        """The shipped schemas, features and controls."""
        return cls(AvroCodec.from_url(schema_registry_url, SchemaStore.default()),
                   ControlSet.from_dir())

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """Between batches: apply control releases (audit records out)."""
        return self.decider.reload(now_ms)

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = self.decider.reload(now_ms)
        states = feature_states(state)
        # features first (they never depend on decisions), then the whole batch's
        # control networks at once (one trip to the supervised child), then the
        # answers in input order (a repeat finds the decision of its first event)
        admitted_all = list(self.intake.admit_all(batch, now_ms, state,
                                                  (self.decider.memory,)))
        fresh = [(n, a, *local_features(self.features, a, states, state, view.tp, self.batch))
                 for n, (view, a) in enumerate(admitted_all)
                 if isinstance(a, Admitted) and not a.repeat]
        verdicts = self.decider.verdicts([(a.kind, a.event, values) for _, a, values, _ in fresh])
        decided = {n: (values, errors, verdict)
                   for (n, _, values, errors), verdict in zip(fresh, verdicts, strict=True)}
        for n, (view, admitted) in enumerate(admitted_all):
            if isinstance(admitted, OutRecord):
                out.append(admitted)
            elif admitted.repeat:  # the first decision again
                again = self.decider.recall(admitted.identity, view)
                out.append(again or quarantine(self.codec, admitted.rec, "dedup", [(
                    "DECISION_EXPIRED", None, "repeat of an event whose decision is no "
                    "longer kept")], now_ms, admitted.kind.schema))
            else:
                values, errors, verdict = decided[n]
                decision, executions = self.decider.decide(
                    admitted.kind, admitted.event, values, errors, now_ms,
                    admitted.rec.timestamp_ms, verdict)
                out.append(self.decider.emit(admitted.identity, decision, view))
                out += executions
        state.batch_done()
        return out
