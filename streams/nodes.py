"""The feature nodes: every entity key's windows on one partition, requests
applied in the one order of the input logs (:class:`FeatureStage`); and the
features of one event computed where its state is (:func:`local_features`, the
one-process path's and the backtest's)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from tripwire.features.batch import BatchTable
from tripwire.features.engine import (
    FeatureLibrary,
    decode_state,
    encode_state,
    load_state,
    make_view,
    state_records,
)
from tripwire.features.kinds import EventKind
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import TP, InRecord, OutRecord
from tripwire.state.cache import DecodedCache
from tripwire.state.manager import StateManager
from tripwire.streams.align import IDLE, PROGRESS, Aligner
from tripwire.streams.hops import (
    ALIVE,
    APPLIED_KEY,
    FEATURE_FRAGMENTS,
    Packer,
    unpack,
)
from tripwire.streams.intake import Admitted
from tripwire.streams.topics import INPUTS

__all__ = ["FEATURES_STORE", "FeatureStage", "entity_state_key", "event_features", "feature_states",
           "local_features"]

logger = logging.getLogger(__name__)


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


class FeatureStage(Packer):
    """One entity key's windows live on one partition: exact for any worker count.

    Requests are applied in one order fixed by the input logs, whatever the
    interleaving of the intakes that send them (:mod:`tripwire.streams.align`):
    held until no input partition can still send one that comes before. Entity
    states are cached decoded in memory and written back once per commit by the
    loop (a hot key such as the system-wide one is encoded once per commit, not
    once per event), inside that commit's transaction. While it has work (a
    request in the last ``QUIET_MS``, or one held for its turn) the node tells
    every gather partition every ``HEARTBEAT_MS`` that it is alive, naming the
    entities it has been sent requests for, so the decide stage times out a node
    that is silent, not one that is busy or waiting for its inputs. With no work
    it falls silent (no traffic, no heartbeats): a request that comes then is
    given the decide stage's node timeout from its arrival there, and the node
    beats again as soon as it reads it.
    """

    name = "features"
    stores: tuple[str, ...] = (FEATURES_STORE,)
    routes = ("gather",)
    watches = INPUTS  # every input partition is a source of requests

    HEARTBEAT_MS = 250
    QUIET_MS = 4 * HEARTBEAT_MS  # beating on this long after the last request

    def __init__(self, codec: AvroCodec, library: FeatureLibrary,
                 cache_keys: int = 100_000, eager_hops: bool = True) -> None:
        super().__init__()
        self.eager = frozenset(self.routes if eager_hops else ())  # see the module docstring
        self.codec = codec
        self.library = library
        self.cache_keys = cache_keys
        # the entities this node was sent requests for: its heartbeat vouches for them
        self.serves: set[str] = set()
        self.watched: dict[str, int] = {}  # input topic → partitions (set by the loop)
        # per node partition: input partition of the intake → highest offset applied
        self._applied: dict[TP, dict[str, int]] = {}
        self._aligners: dict[TP, Aligner] = {}
        self._beat_ms = 0
        self._requested_ms = 0  # when a request last came
        self.skipped = 0  # requests applied before (sent again after an intake's abort)

    def applied(self, state: StateManager, tp: TP) -> dict[str, int]:
        """The highest position applied per intake input partition and entity
        (``<topic>:<partition>|<entity>``), on node partition ``tp`` (kept in its
        state, committed with its windows). Per entity: one event's requests to
        several entities can share a node partition, each applied once."""
        marks = self._applied.get(tp)
        if marks is None:
            raw = state.view(*tp).get(FEATURES_STORE, APPLIED_KEY)
            marks = self._applied[tp] = {} if raw is None else orjson.loads(raw)
        return marks

    def aligner(self, tp: TP) -> Aligner:
        """Node partition ``tp``'s requests waiting for their turn."""
        al = self._aligners.get(tp)
        if al is None:
            sources = [f"{t}:{p}" for t, n in self.watched.items() for p in range(n)]
            al = self._aligners[tp] = Aligner(sources)
        return al

    def drop(self, tps: Sequence[TP]) -> None:
        """Partitions revoked, lost or rolled back: their positions are read again,
        and what they held comes again from the inputs."""
        for tp in tps:
            self._applied.pop(tp, None)
            self._aligners.pop(tp, None)

    def safe_offsets(self, offsets: dict[TP, int]) -> dict[TP, int]:
        """Commit no further than the oldest record with a request still held."""
        safe = dict(offsets)
        for tp, off in offsets.items():
            al = self._aligners.get(tp)
            oldest = None if al is None else al.oldest_record()
            if oldest is not None and oldest < off:
                safe[tp] = oldest
        return safe

    def compute(self, entity: str, fields: dict[str, Any], event_time: int,
                state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The feature values of one request (the node's work; tests slow it down)."""
        return self.library.compute(entity, state, fields, event_time)

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        fragments: list[tuple[bytes, list[Any]]] = []
        states = feature_states(state, self.cache_keys)
        touched: dict[TP, bool] = {}
        for rec in batch:
            _, packed = self.codec.decode(rec.value)  # written by intake: trusted
            tp = (rec.topic, rec.partition)
            marks = self.applied(state, tp)
            al = self.aligner(tp)
            touched.setdefault(tp, False)
            for item in unpack(packed):
                if item[0] == PROGRESS:
                    al.advance(item[1], item[2])
                    continue
                if item[0] == IDLE:
                    al.idle(item[1], item[2])
                    continue
                self._requested_ms = now_ms
                # each item names its entity (older intakes: one entity per record)
                entity = item[7] if len(item) > 7 else packed["entity"]
                if entity not in self.serves:
                    self.serves.add(entity)
                if len(item) <= 5:  # no position (an older intake's): applied at once
                    self._apply(state, states, tp, entity, item, fragments)
                    continue
                source, offset = item[5], item[6]
                if offset <= marks.get(f"{source}|{entity}", -1) or not al.hold(
                        source, entity, offset,
                        item[8] if len(item) > 8 else al.progress.get(source, 0),
                        (entity, item), rec.offset):
                    self.skipped += 1
                    continue  # applied (or held) before: sent again after an intake's abort
        for tp in touched:
            marks = self.applied(state, tp)
            for order_ms, (entity, item) in self.aligner(tp).ready():
                marks[f"{item[5]}|{entity}"] = item[6]
                touched[tp] = True
                self._apply(state, states, tp, entity, item, fragments, order_ms)
        for tp, moved in touched.items():
            if moved:
                state.view(*tp).put(FEATURES_STORE, APPLIED_KEY,
                                    orjson.dumps(self._applied[tp]))
        state.batch_done()
        return self.pack(self.codec, FEATURE_FRAGMENTS, "gather", fragments, as_json=True,
                         broadcast=self._heartbeat(now_ms))

    def _apply(self, state: StateManager, states: Any, tp: TP, entity: str, item: list[Any],
               fragments: list[tuple[bytes, list[Any]]], order_ms: int | None = None) -> None:
        identity, _event_id, key, event_time, fields = item[:5]
        values: dict[str, Any]
        notes: list[str]
        if entity not in self.library.by_entity:
            values, notes = {}, [f"no features are defined for {entity}"]
        else:
            st = states.get(state, tp, f"{entity}|{key}".encode())
            values, notes = self.compute(entity, fields, event_time, st)
        fragment = [identity, entity, key, values, notes]
        if order_ms is not None:  # where the node placed it (tripwire.streams.align)
            fragment += [order_ms, item[5], item[6]]
        # keyed by the identity alone: to the gather partition of the event's request
        fragments.append((identity.partition("#")[0].encode(), fragment))

    def _heartbeat(self, now_ms: int) -> list[list[Any]]:
        if now_ms - self._beat_ms < self.HEARTBEAT_MS or not self.serves:
            return []
        if now_ms - self._requested_ms > self.QUIET_MS and \
                not any(len(al) for al in self._aligners.values()):
            return []  # no work: silent
        self._beat_ms = now_ms
        return [[ALIVE, ",".join(sorted(self.serves)), "", {}, []]]

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """The heartbeat, when nothing else went out for ``HEARTBEAT_MS`` (and there
        is work)."""
        beat = self._heartbeat(now_ms)
        if not beat:
            return []
        return self.pack(self.codec, FEATURE_FRAGMENTS, "gather", [], as_json=True,
                         broadcast=beat)
