"""The whole decision path in one pure function of (batch, time, state):

    intake (decode → validate → dedup) → features → controls → decision

This is the broker-free entry point: unit tests and backtests call
:meth:`DecisionPath.process` with an in-memory
:class:`~tripwire.state.manager.StateManager`. State is kept per input partition
(the state view of each record), so values are exact when every entity's events
share one ordered log: a backtest runs it over
:class:`~tripwire.state.manager.OneLogState`, one log whatever the topics. The
live, multi-worker path splits the same pieces across Kafka by entity
(:mod:`tripwire.streams.hops`) and gives the same values for any
partitioning.

Every input gives exactly one output: a decision, or a quarantine record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tripwire.controls.decider import DECISIONS_STORE, Decider
from tripwire.controls.engine import ControlSet
from tripwire.features.batch import BatchTable
from tripwire.features.engine import (
    FeatureLibrary,
)
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.schemas.validate import DAY_MS, Validator
from tripwire.state.manager import StateManager
from tripwire.streams.intake import DEDUP_STORE, Admitted, Intake
from tripwire.streams.nodes import FEATURES_STORE, feature_states, local_features
from tripwire.streams.processor import Processor
from tripwire.streams.quarantine import quarantine
from tripwire.streams.topics import ANSWERS

if TYPE_CHECKING:
    from tripwire.controls.plane import ReleaseSource

__all__ = ["DecisionPath"]

logger = logging.getLogger(__name__)

class DecisionPath(Processor):
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
