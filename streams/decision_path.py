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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tripwire.controls.decider import DECISIONS_STORE, Decider
from tripwire.controls.engine import ControlSet
from tripwire.controls.results import Verdict
from tripwire.features.batch import BatchTable
from tripwire.features.engine import (
    FeatureLibrary,
)
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import TP, InRecord, OutRecord
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

__all__ = ["DecisionPath", "Prepared"]

logger = logging.getLogger(__name__)

# one input record after intake and features: its partition, then the event admitted
# (or the quarantine record refusing it), and for a fresh event its features and
# their errors (None for a repeat or a refusal)
Item = tuple[TP, "Admitted | OutRecord", "dict[str, Any] | None", "dict[str, str] | None"]


@dataclass
class Prepared:
    """A batch through intake and features (:meth:`DecisionPath.prepare`), ready to
    be decided (:meth:`DecisionPath.decide`), in this process or another (it pickles)."""

    now_ms: int
    items: list[Item]
    marks: dict[TP, int]  # newest event time per input partition: what expires
    # the items (indexes) of fresh events that no later record repeats, as a replay
    # knows beforehand: their decisions need not be remembered (live: none known)
    unasked: frozenset[int] = frozenset()


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
        return self.decide(self.prepare(batch, now_ms, state), state)

    def prepare(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> Prepared:
        """The first half of :meth:`process`: intake, then the features of every
        fresh event. The features never depend on decisions, so a replay may run
        this half in another process, over its own state (the intake's and the
        features' stores), a batch or more ahead of :meth:`decide`."""
        states = feature_states(state)
        marks: dict[TP, int] = {}
        items: list[Item] = []
        for view, a in self.intake.admit_all(batch, now_ms, state, marks):
            if isinstance(a, Admitted) and not a.repeat:
                items.append((view.tp, a, *local_features(self.features, a, states, state,
                                                          view.tp, self.batch)))
            else:
                items.append((view.tp, a, None, None))
        return Prepared(now_ms, items, marks)

    def verdicts(self, prepared: Prepared) -> list[Verdict]:
        """The control networks' verdicts on the batch's fresh events, at once (one
        trip to the supervised child)."""
        return self.decider.verdicts([(a.kind, a.event, values)
                                      for _, a, values, _ in prepared.items
                                      if isinstance(a, Admitted) and values is not None])

    def decide(self, prepared: Prepared, state: StateManager,
               verdicts: Sequence[Verdict] | None = None) -> list[OutRecord]:
        """The second half of :meth:`process`, over the decisions' store: the
        control networks' :meth:`verdicts` (unless given), then the answers in
        input order (a repeat finds the decision of its first event)."""
        now_ms = prepared.now_ms
        out: list[OutRecord] = self.decider.reload(now_ms)
        for tp, mark in prepared.marks.items():  # forgotten with the intake's identities
            self.decider.memory.expire(state.view(*tp), mark)
        given = iter(self.verdicts(prepared) if verdicts is None else verdicts)
        unasked = prepared.unasked
        for n, (tp, admitted, values, errors) in enumerate(prepared.items):
            view = state.view(*tp)
            if isinstance(admitted, OutRecord):
                out.append(admitted)
            elif values is None:  # a repeat: the first decision again
                again = self.decider.recall(admitted.identity, view)
                out.append(again or quarantine(self.codec, admitted.rec, "dedup", [(
                    "DECISION_EXPIRED", None, "repeat of an event whose decision is no "
                    "longer kept")], now_ms, admitted.kind.schema))
            else:
                decision, executions = self.decider.decide(
                    admitted.kind, admitted.event, values, errors or {}, now_ms,
                    admitted.rec.timestamp_ms, next(given))
                out.append(self.decider.emit(admitted.identity, decision, view,
                                             remember=n not in unasked))
                out += executions
        state.batch_done()
        return out
