"""Late decisions set beside their stand-ins (the inline decide API's other half).

    decisions ─────────────┐
    (by entity_key)        ├──► reconcile ──► decide-answers (LATE), ops alerts
    decide-answers ────────┘
    (by entity_key: the same partition numbers)

A caller of ``POST /v1/decide`` whose deadline passed was given a stand-in
(an ANSWER record with ``stand_in``); the pipeline decides the event all the
same. This stage writes that decision beside the stand-in (a LATE record, on the
same partition, with whether they agree) and an ops alert when they do not. The
decision's actions are the applier's business, as for any decision: a card
allowed by a stand-in and denied by the pipeline is blocked there.

Either can come first. A stand-in waiting for its decision is kept in the
stage's store (the pipeline may be down for hours). A decision is held in memory
for ``hold_ms`` of record time, in case its stand-in is still to be written (the
API writes it at the deadline, after the decision may have been): it is let go
once the answers partition has reached a record written ``hold_ms`` after it, or
is at its end and the clock has passed that. So a backlog of both topics read at
different speeds matches as it did live. Held decisions keep the committed offset
of their partition back (:meth:`ReconcileStage.safe_offsets`): after a crash they
are read again, and nothing they matched is written twice (the LATE record and
the offsets go in one transaction).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tripwire.controls.actions import OPS_ALERT_SCHEMA
from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.controls.standin import (
    ANSWER_SCHEMA,
    MAX_DEADLINE_MS,
    decision_identity,
    late_record,
    stand_in_alert,
)
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import TP, InRecord, OutRecord
from tripwire.state.manager import StateManager
from tripwire.streams.processor import Processor, decoded
from tripwire.streams.topics import topic

__all__ = ["DEFAULT_HOLD_MS", "STAND_IN_STORE", "ReconcileStage"]

logger = logging.getLogger(__name__)

STAND_IN_STORE = "stand-ins.v1"
# a decision is held this long (record time) for a stand-in still to be written:
# the longest deadline, and as long again for the API's write
DEFAULT_HOLD_MS = 2 * MAX_DEADLINE_MS


@dataclass
class _Held:
    at: int  # the decision record's timestamp
    offset: int
    identity: str
    decision: dict[str, Any] | None  # None once matched


class ReconcileStage(Processor):
    """decisions + decide-answers → LATE records and ops alerts, once each."""

    name = "reconcile"
    stores = (STAND_IN_STORE,)
    watches = ("decide_answers",)

    def __init__(self, codec: AvroCodec, namespace: str = "",
                 hold_ms: int = DEFAULT_HOLD_MS) -> None:
        self.codec = codec
        self.hold_ms = hold_ms
        self.decisions = topic("decisions", namespace)
        self.answers = topic("decide_answers", namespace)
        self.held: dict[int, deque[_Held]] = {}  # decisions partition -> in offset order
        self.waiting: dict[int, dict[str, _Held]] = {}  # ... -> identity -> unmatched
        self.reached: dict[int, int] = {}  # answers partition -> newest record time read
        self.late = self.overturned = 0
        # stand-ins are kept with the answers' partitions; decisions keep nothing
        self.stores_by_topic = {self.answers: [STAND_IN_STORE], self.decisions: []}

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        for rec, schema, msg in decoded(self.codec, batch):
            if rec.topic == self.decisions and schema.name == DECISION_SCHEMA:
                out += self._decision(rec, msg, state)
            elif rec.topic == self.answers and schema.name == ANSWER_SCHEMA:
                p = rec.partition
                self.reached[p] = max(self.reached.get(p, 0), rec.timestamp_ms)
                if msg["kind"] == "ANSWER" and msg["stand_in"]:
                    out += self._stand_in(p, msg, state)
        self._release(now_ms)
        state.batch_done()
        return out

    def _decision(self, rec: InRecord, decision: dict[str, Any],
                  state: StateManager) -> list[OutRecord]:
        identity = decision_identity(decision)
        view = state.view(self.answers, rec.partition)
        stored = view.get(STAND_IN_STORE, identity.encode())
        if stored is not None:
            view.delete(STAND_IN_STORE, identity.encode())
            return self._late(orjson.loads(stored), decision)
        held = _Held(rec.timestamp_ms, rec.offset, identity, decision)
        self.held.setdefault(rec.partition, deque()).append(held)
        self.waiting.setdefault(rec.partition, {})[identity] = held
        return []

    def _stand_in(self, p: int, answer: dict[str, Any], state: StateManager) \
            -> list[OutRecord]:
        held = self.waiting.get(p, {}).pop(answer["identity"], None)
        if held is not None and held.decision is not None:
            decision, held.decision = held.decision, None
            return self._late(answer, decision)
        state.view(self.answers, p).put(STAND_IN_STORE, answer["identity"].encode(),
                                        orjson.dumps(answer))
        return []

    def _late(self, stand_in: dict[str, Any], decision: dict[str, Any]) -> list[OutRecord]:
        late = late_record(stand_in, decision, self.name)
        self.late += 1
        out = [OutRecord("decide_answers", late["entity_key"].encode(),
                         self.codec.encode(ANSWER_SCHEMA, late))]
        if not late["agreed"]:
            self.overturned += 1
            alert = stand_in_alert(late)
            out.append(OutRecord("ops_alerts", alert["subject"].encode(),
                                 self.codec.encode(OPS_ALERT_SCHEMA, alert)))
            logger.warning("%s", alert["summary"])
        return out

    def _release(self, now_ms: int) -> None:
        """Let go of the decisions no stand-in can still come for."""
        for p, queue in self.held.items():
            idle = (self.answers, p) in self.at_end
            reached = self.reached.get(p, 0)
            waiting = self.waiting.get(p, {})
            while queue:
                h = queue[0]
                until = h.at + self.hold_ms
                if reached < until and not (idle and now_ms >= until):
                    break
                queue.popleft()
                if waiting.get(h.identity) is h:
                    del waiting[h.identity]

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        self._release(now_ms)
        return []

    def safe_offsets(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """Commit no further than the oldest decision still held."""
        safe = dict(offsets)
        for (t, p), off in offsets.items():
            queue = self.held.get(p)
            if t == self.decisions and queue:
                safe[(t, p)] = min(off, queue[0].offset)
        return safe

    def drop(self, tps: Sequence[TP]) -> None:
        for t, p in tps:
            if t == self.decisions:
                self.held.pop(p, None)
                self.waiting.pop(p, None)
            elif t == self.answers:
                self.reached.pop(p, None)

    def pending(self) -> int:
        """Decisions held in memory now."""
        return sum(len(q) for q in self.held.values())
