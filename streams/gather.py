"""The decide stage: each event's fragments gathered from the feature nodes, then
the decision (:class:`DecisionStage`)."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tripwire.controls.decider import DECISIONS_STORE, Decider
from tripwire.controls.engine import ControlSet
from tripwire.features.batch import BatchTable
from tripwire.features.engine import (
    FeatureLibrary,
)
from tripwire.features.kinds import EVENT_KINDS
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import TP, InRecord, OutRecord
from tripwire.schemas.validate import DAY_MS
from tripwire.state.manager import StateManager, StateView
from tripwire.streams.hops import (
    _FRAGMENT,
    ALIVE,
    BACKLOG_LAG_MS,
    BACKLOG_NODE_TIMEOUT_MS,
    DECISION_REQUESTS,
    NODE_TIMEOUT_MS,
    unpack,
)
from tripwire.streams.nodes import FeatureStage, event_features
from tripwire.streams.quarantine import quarantine
from tripwire.streams.topics import ANSWERS

if TYPE_CHECKING:
    from tripwire.controls.plane import ReleaseSource

__all__ = ["DecisionStage"]
from tripwire.streams.processor import Processor

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    tp: TP
    first_offset: int
    request: dict[str, Any] | None = None
    arrived_ms: int = 0
    timeout_ms: int = 0  # how long a silent node is waited for (set with the request)
    fragments: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeats: int = 0
    deadline: int | None = None
    ready: bool = False  # everything came (or its deadline): decided at the next flush


class DecisionStage(Processor):
    """Gathers each event's fragments, then decides; partial after ``node_timeout_ms``
    of a node's silence (``backlog_timeout_ms`` for an event of a backlog: its
    request came more than ``backlog_lag_ms`` after the event arrived).

    Gathering is kept in memory; the loop commits input offsets only up to the
    oldest event still gathering (:meth:`safe_offsets`), so after a restart those
    messages are read again, and decided identities are skipped.
    """

    name = "decide"
    stores: tuple[str, ...] = (DECISIONS_STORE,)
    eager = ANSWERS

    def __init__(self, codec: AvroCodec, controls: ControlSet,
                 node_timeout_ms: int = NODE_TIMEOUT_MS,
                 ttl_ms: int = 7 * DAY_MS, library: FeatureLibrary | None = None,
                 batch: BatchTable | None = None, sources: Sequence[ReleaseSource] = (),
                 backlog_timeout_ms: int = BACKLOG_NODE_TIMEOUT_MS,
                 backlog_lag_ms: int = BACKLOG_LAG_MS) -> None:
        self.codec = codec
        self.batch = batch
        self.decider = Decider(codec, controls, ttl_ms,
                               (library or FeatureLibrary()).feature_meta(), sources)
        self.node_timeout_ms = node_timeout_ms
        # for an event of a backlog (tripwire.streams.hops.BACKLOG_NODE_TIMEOUT_MS)
        self.backlog_timeout_ms = max(node_timeout_ms, backlog_timeout_ms)
        self.backlog_lag_ms = backlog_lag_ms
        self.pending: dict[str, _Pending] = {}
        # (deadline, sequence, tagged identity): among equal deadlines (a batch's
        # events share one) the order they were set in, found without comparing ids
        self._deadlines: list[tuple[int, int, str]] = []
        self._order = itertools.count()
        self._orphans: set[str] = set()  # fragments gathering, their event not yet here
        # identity -> the tagged identity (with its content's digest) gathering for it
        self._gathering: dict[str, str] = {}
        # tagged identities refused for reusing an id -> when (their fragments dropped)
        self._conflicts: dict[str, int] = {}
        self._ready: list[str] = []  # to decide at the end of this batch or tick, together
        # liveness: when each entity's node was last heard from (a fragment or a
        # heartbeat), when anything last came in, and when input resumed after a gap
        self._heard: dict[str, int] = {}
        self._input_ms = 0
        self._resumed_ms = 0

    # Hearing nothing at all for this long (a node with work sends a heartbeat every
    # FeatureStage.HEARTBEAT_MS) means all is quiet, or this stage is cut off - the
    # broker away, a rebalance, a restore - not that the nodes are: no node is timed
    # out then, and each gets ``node_timeout_ms`` again once input resumes.
    CUT_OFF_MS = 4 * FeatureStage.HEARTBEAT_MS

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []  # releases are applied in tick(), at the end
        if batch:
            if now_ms - self._input_ms > self.CUT_OFF_MS:
                self._resumed_ms = now_ms
            self._input_ms = now_ms
        heard = self._heard
        for rec in batch:
            schema, packed = self.codec.decode(rec.value)
            is_request = schema.name == DECISION_REQUESTS
            view = state.view(rec.topic, rec.partition)
            for item in unpack(packed):
                if is_request:
                    msg = item
                elif item[0] == ALIVE:
                    for entity in item[1].split(","):
                        heard[entity] = now_ms
                    continue
                else:
                    msg = dict(zip(_FRAGMENT, item[:5], strict=True))
                    heard[msg["entity"]] = now_ms
                out += self._take(rec, view, msg, is_request, now_ms, state)
        return out + self.tick(now_ms, state)

    def _waiting_until(self, p: _Pending, now_ms: int) -> int | None:
        """When to look at an event again whose deadline came: None to decide it now
        (every node it misses silent for its timeout). A node that is busy or
        waiting for its inputs still sends heartbeats: it is waited for, however
        long the queue in front of it (catching up a backlog)."""
        if now_ms - self._input_ms > self.CUT_OFF_MS:
            return now_ms + self.node_timeout_ms  # we hear nothing at all: not their fault
        assert p.request is not None
        since, until = self._resumed_ms, 0
        for node in p.request["nodes"]:
            if node not in p.fragments:
                until = max(until, max(self._heard.get(node, since), since) + p.timeout_ms)
        return until if until > now_ms else None

    def _take(self, rec: InRecord, view: StateView, msg: dict[str, Any], is_request: bool,
              now_ms: int, state: StateManager) -> list[OutRecord]:
        # the identity and its content's digest (IntakeStage: Admitted.tagged); older
        # intakes' records carry the identity alone
        tagged = msg["identity"]
        identity, _, tag = tagged.partition("#")
        if is_request and msg["repeat"]:
            p = self.pending.get(self._gathering.get(identity, tagged))
            if p is not None:
                p.repeats += 1
                return []
            again = self.decider.recall(identity, view)
            return [again or quarantine(self.codec, dataclasses.replace(rec, value=msg["event"]),
                                        "dedup", [("DECISION_EXPIRED", None, "repeat of an "
                                                   "event whose decision is no longer kept")],
                                        now_ms, item=identity)]
        if not is_request and tagged in self._conflicts:
            return []  # a fragment of an event refused for reusing an id
        p = self.pending.get(tagged)
        if p is None:
            # checked once, when an identity first comes: one still gathering was
            # checked then, and only a decision (which ends its gathering) changes that
            remembered = self.decider.remembered(identity, view)
            if remembered is not None:
                if is_request and tag and remembered and remembered != tag:
                    return [self._conflict(rec, msg, tagged, now_ms)]
                return []  # decided before a restart: read again, nothing to do
            p = self.pending[tagged] = _Pending((rec.topic, rec.partition), rec.offset)
        if is_request:
            if p.request is None and self._gathering.setdefault(identity, tagged) != tagged:
                del self.pending[tagged]  # and the fragments that came before it
                self._orphans.discard(tagged)
                return [self._conflict(rec, msg, tagged, now_ms)]
            p.request, p.arrived_ms = msg, msg["arrived_ms"]
            # an event that waited in a backlog before its request came waits longer
            # for a silent node (tripwire.streams.hops.BACKLOG_LAG_MS)
            p.timeout_ms = self.backlog_timeout_ms \
                if now_ms - p.arrived_ms > self.backlog_lag_ms else self.node_timeout_ms
            p.deadline = now_ms + self.node_timeout_ms
            heapq.heappush(self._deadlines, (p.deadline, next(self._order), tagged))
            self._orphans.discard(tagged)
        else:
            p.fragments[msg["entity"]] = msg
            if p.request is None and p.deadline is None:
                self._orphans.add(tagged)
        if p.request is not None and not p.ready and len(p.fragments) >= len(
                p.request["nodes"]) and all(n in p.fragments for n in p.request["nodes"]):
            p.ready = True
            self._ready.append(tagged)
        return []

    def _conflict(self, rec: InRecord, msg: dict[str, Any], tagged: str,
                  now_ms: int) -> OutRecord:
        """Quarantine an event whose id another event (different content, on another
        input partition) already took here; its fragments are dropped as they come."""
        self._conflicts[tagged] = now_ms
        identity = tagged.partition("#")[0]
        schema, _ = self.codec.decode(msg["event"])
        field = EVENT_KINDS[schema.name].identity_field
        return quarantine(self.codec, dataclasses.replace(rec, value=msg["event"]), "dedup", [(
            "DUPLICATE_CONFLICT", field,
            f"{identity.partition(':')[2]} is the id of a different event received on "
            "another partition; the first one's decision stands")], now_ms, schema.name,
            item=tagged)

    ORPHAN_MS = 600_000

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """Apply control releases; decide, with a partial result, every event whose
        node timeout has passed."""
        # the events completed by this batch, with the controls they came under; then
        # releases; then the events whose deadline passed
        out = self._decide_ready(now_ms, state)
        out += self.decider.reload(now_ms)
        for identity in self._orphans:  # fragments whose event has not come: a deadline
            p = self.pending.get(identity)
            if p is not None and p.request is None and p.deadline is None:
                p.deadline = now_ms + self.ORPHAN_MS
                heapq.heappush(self._deadlines, (p.deadline, next(self._order), identity))
        self._orphans.clear()
        if self._conflicts:  # their fragments have come by now
            for tagged in [k for k, at in self._conflicts.items()
                           if now_ms - at > self.ORPHAN_MS]:
                del self._conflicts[tagged]
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, _, identity = heapq.heappop(self._deadlines)
            due = self.pending.get(identity)
            if due is None or due.deadline is None or due.deadline > now_ms or due.ready:
                continue  # decided already, or a newer deadline is queued
            if due.request is not None:
                later = self._waiting_until(due, now_ms)
                if later is not None:
                    due.deadline = later
                    heapq.heappush(self._deadlines, (later, next(self._order), identity))
                    continue
                due.ready = True
                self._ready.append(identity)
            else:
                logger.warning("dropping fragments of %s: its event never arrived", identity)
                del self.pending[identity]
        return out + self._decide_ready(now_ms, state)

    def _decide_ready(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """Decide every event ready, their control networks in one call (one trip to
        the supervised child), in the order they became ready."""
        ready, self._ready = self._ready, []
        todo = []
        for tagged in ready:
            p = self.pending.pop(tagged, None)
            if p is None:  # its partition went to another worker
                continue
            identity, _, tag = tagged.partition("#")
            if self._gathering.get(identity) == tagged:
                del self._gathering[identity]
            assert p.request is not None
            schema, event = self.codec.decode(p.request["event"])
            kind = EVENT_KINDS[schema.name]
            _, features, errors = event_features(kind, event, self.batch)
            for node in p.request["nodes"]:
                frag = p.fragments.get(node)
                if frag is None:
                    errors[node] = (f"no answer: the node was silent for more than "
                                    f"{p.timeout_ms} ms")
                    continue
                features.update(frag["values"])
                if frag["notes"]:
                    errors[node] = "; ".join(frag["notes"])
            todo.append((identity, tag, p, kind, event, features, errors))
        verdicts = self.decider.verdicts([(kind, event, features)
                                          for _, _, _, kind, event, features, _ in todo])
        out: list[OutRecord] = []
        for (identity, tag, p, kind, event, features, errors), verdict in zip(
                todo, verdicts, strict=True):
            decision, executions = self.decider.decide(kind, event, features, errors, now_ms,
                                                       p.arrived_ms, verdict)
            view = state.view(*p.tp)
            out += [self.decider.emit(identity, decision, view, tag), *executions]
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
        for tagged in [i for i, p in self.pending.items() if p.tp in gone]:
            del self.pending[tagged]
            self._orphans.discard(tagged)
            identity = tagged.partition("#")[0]
            if self._gathering.get(identity) == tagged:
                del self._gathering[identity]
