"""The live decision path, split across Kafka by entity so any number of workers
compute exact features:

    inputs ──► intake ──► tripwire.features.v1 ──────────► features ──┐
      (card, login,  │      (keyed by entity key: card, account,        │
       FPS topics)   │       device, ip, payee, ...)                    ▼
                     └───────────────► tripwire.gather.v1 ──► decide ──► decisions
                        (the event, keyed by identity)   (fragments, keyed by identity)

* **intake** (per input partition): decode, validate, dedup; one feature request
  per entity of the event, and the event itself to the gather topic.
* **features** (per node partition): every entity key's state lives on exactly
  one partition, so windows are exact whatever the number of workers. Every
  entity shares one topic (an intake batch costs one produce request per
  partition it writes); an entity listed in ``TRIPWIRE_NODES_APART`` goes to
  ``tripwire.features.<entity>.v1`` instead, served by workers of its own.
* **decide** (per identity partition): gathers the event and its fragments; when
  all have come — or a node's timeout passes, leaving a partial result with a
  per-node error — runs the controls and emits the decision.

Internal messages are packed: each stage writes one record per output partition
per batch (:class:`Packer`), routing every item by its key, so per-record costs
are paid per batch, not per event and entity.

Internal messages go out at once, as answers do, not with the stage's next
commit: an event crosses the hops in milliseconds instead of waiting for a
transaction at each (at 300 events/s on 2 cores, 21 ms median from send to
readable decision against 164 ms; ``TRIPWIRE_HOPS=committed`` keeps them for the
commit, which costs less CPU at moderate rates). Each stage still
commits its state with its input offsets, and only after its outputs were
acknowledged, so after a crash or an aborted transaction it reads its inputs
again and sends the same messages again. Each is therefore applied once:

* a feature request carries its event's position (input topic, partition,
  offset), and a node applies a position once — the highest applied per input
  partition and entity is kept in its state, committed with its windows and
  offsets, and an intake sends each input partition's requests to a node
  partition in order (an idempotent producer);
* the decide stage keys everything by event identity: a repeated request or
  fragment of an event still gathering replaces the first, and one of an event
  already decided is dropped (its decision is remembered).

Each stage is a pure processor; :class:`~tripwire.streams.loop.BatchLoop` runs it.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tripwire.controls.engine import ControlSet
from tripwire.features.batch import BatchTable
from tripwire.features.engine import FeatureLibrary, make_view
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.validate import Validator
from tripwire.streams.decider import DECISIONS_STORE, Decider
from tripwire.streams.decision_path import (
    FEATURES_STORE,
    event_features,
    feature_states,
)
from tripwire.streams.intake import DAY_MS, DEDUP_STORE, EVENT_KINDS, Admitted, Intake
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import InRecord, OutRecord, partition_for
from tripwire.streams.state import StateManager, StateView
from tripwire.streams.topics import ANSWERS, apart_entity, node_topic_key

if TYPE_CHECKING:
    from tripwire.connectors.control_sources import ReleaseSource

__all__ = ["DECISION_REQUESTS", "FEATURE_FRAGMENTS", "FEATURE_REQUESTS", "NODE_TIMEOUT_MS",
           "DecisionStage",
           "FeatureStage", "IntakeStage", "Packer", "unpack"]

logger = logging.getLogger(__name__)

FEATURE_REQUESTS = "tripwire.internal.FeatureRequests"
FEATURE_FRAGMENTS = "tripwire.internal.FeatureFragments"
DECISION_REQUESTS = "tripwire.internal.DecisionRequests"
TP = tuple[str, int]
# How long the decide stage waits for a feature node before deciding without it
# (the node's error recorded). With committed hops a fragment comes one commit of
# the intake and one of the node after its event: at 300 events/s on a 2-core
# machine, 250 ms left a node out of 21 % of decisions. This is for a node that
# is down, not for commit latency.
NODE_TIMEOUT_MS = 2_000


class Packer:
    """Packs a batch's internal messages into one record per output partition.

    Per-record costs (the Kafka client, the Avro call, the loop) are paid once
    per partition per batch instead of once per event and entity; the key of each
    item picks the partition (:func:`partition_for`), so an entity key's requests
    still reach exactly one partition, in order. ``partitions`` is set by the
    loop from the topics' metadata (one partition when run without Kafka).
    """

    routes: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.partitions: dict[str, int] = {}

    def pack(self, codec: AvroCodec, schema: str, topic_key: str,
             items: Sequence[tuple[bytes, Any]], as_json: bool = False,
             **fields: Any) -> list[OutRecord]:
        """``items``: (routing key, item) pairs → one record per partition (items in
        an Avro array, or with ``as_json`` in one JSON array ``items_json``)."""
        n = self.partitions.get(topic_key, 1)
        groups: dict[int, list[Any]] = defaultdict(list)
        for key, item in items:
            groups[partition_for(key, n)].append(item)
        out: list[OutRecord] = []
        for partition, group in sorted(groups.items()):
            for i in range(0, len(group), self.MAX_ITEMS):
                out += [OutRecord(topic_key, None, value, partition) for value in
                        _encode_within(codec, schema, fields, group[i:i + self.MAX_ITEMS],
                                       as_json)]
        return out

    MAX_ITEMS = 1000  # items per record; records are also kept under MAX_BYTES


APPLIED_KEY = b"@applied"  # a node partition's applied positions (no entity key has "@")
MAX_BYTES = 512 * 1024  # half the broker's default message.max.bytes
_FRAGMENT = ("identity", "entity", "entity_key", "values", "notes")  # a fragment item's fields


def _encode_within(codec: AvroCodec, schema: str, fields: dict[str, Any],
                   items: list[Any], as_json: bool) -> list[bytes]:
    """Encode ``items`` into as few records as keep each under MAX_BYTES, in order."""
    body = ({"count": len(items), "items_json": orjson.dumps(items)} if as_json
            else {"items": items})
    value = codec.encode(schema, {**fields, **body})
    if len(value) <= MAX_BYTES or len(items) == 1:
        return [value]
    half = len(items) // 2
    return (_encode_within(codec, schema, fields, items[:half], as_json)
            + _encode_within(codec, schema, fields, items[half:], as_json))


def unpack(packed: dict[str, Any]) -> list[Any]:
    """The items of a packed internal record (Avro array or JSON array)."""
    items = packed.get("items")
    return orjson.loads(packed["items_json"]) if items is None else items


class IntakeStage(Packer):
    """Decode → validate → dedup; fan out to the entity nodes and the gather topic."""

    name = "intake"
    stores: tuple[str, ...] = (DEDUP_STORE,)

    def __init__(self, codec: AvroCodec, library: FeatureLibrary,
                 validator: Validator | None = None, ttl_ms: int = 7 * DAY_MS,
                 eager_hops: bool = True, apart: Collection[str] = ()) -> None:
        super().__init__()
        self.codec = codec
        self.library = library
        self.intake = Intake(codec, validator, ttl_ms)
        # entity → the topic key its requests go to (the shared topic unless apart)
        self.node_topics = {e: node_topic_key(e, set(apart)) for e in library.entities()}
        self.routes = ("gather", *sorted(set(self.node_topics.values())))
        # quarantine records at once; internal messages too unless they go with the
        # commit (``eager_hops=False``; see the module docstring)
        self.eager = ANSWERS | frozenset(self.routes if eager_hops else ())

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        requests: dict[str, list[tuple[bytes, list[Any]]]] = defaultdict(list)
        gather: list[tuple[bytes, dict[str, Any]]] = []
        for _, admitted in self.intake.admit_all(batch, now_ms, state):
            if isinstance(admitted, OutRecord):
                out.append(admitted)
                continue
            nodes: list[str] = []
            if not admitted.repeat:  # a repeat never counts twice in a feature
                self._requests(admitted, nodes, requests)
            rec = admitted.rec
            gather.append((admitted.identity.encode(), {
                "identity": admitted.identity, "event": rec.value, "nodes": nodes,
                "arrived_ms": rec.timestamp_ms, "repeat": admitted.repeat}))
        for topic_key, items in sorted(requests.items()):
            # one record per partition, whatever the entities: librdkafka's idempotent
            # producer blocks a partition (and spins) once 5 messages are in flight on
            # it (see connectors.kafka.answer_producer), which a record per entity
            # reached at once on the shared topic
            out += self.pack(self.codec, FEATURE_REQUESTS, topic_key, items,
                             as_json=True, entity=apart_entity(topic_key))
        return out + self.pack(self.codec, DECISION_REQUESTS, "gather", gather)

    def _requests(self, a: Admitted, nodes: list[str],
                  requests: dict[str, list[tuple[bytes, list[Any]]]]) -> None:
        """``requests``: per node topic key, (entity key, request item) pairs."""
        view = make_view(a.kind.short, a.event, a.kind.jit(a.event))
        rec = a.rec
        source = f"{rec.topic}:{rec.partition}"
        node_topics = self.node_topics
        for entity, key in sorted(self.library.entities_of(view).items()):
            nodes.append(entity)
            fields = {f: view.get(f) for f in self.library.fields_for(entity)}
            requests[node_topics[entity]].append((key.encode(), [
                a.identity, a.event["event_id"], key, a.event["event_time"], fields,
                source, rec.offset, entity]))


class FeatureStage(Packer):
    """One entity key's windows live on one partition: exact for any worker count.

    Entity states are cached decoded in memory and written back once per commit
    by the loop (a hot key such as the system-wide one is encoded once per
    commit, not once per event), inside that commit's transaction.
    """

    name = "features"
    stores: tuple[str, ...] = (FEATURES_STORE,)
    routes = ("gather",)

    def __init__(self, codec: AvroCodec, library: FeatureLibrary,
                 cache_keys: int = 100_000, eager_hops: bool = True) -> None:
        super().__init__()
        self.eager = frozenset(self.routes if eager_hops else ())  # see the module docstring
        self.codec = codec
        self.library = library
        self.cache_keys = cache_keys
        # per node partition: input partition of the intake → highest offset applied
        self._applied: dict[TP, dict[str, int]] = {}
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

    def drop(self, tps: Sequence[TP]) -> None:
        """Partitions revoked, lost or rolled back: their positions are read again."""
        for tp in tps:
            self._applied.pop(tp, None)

    def compute(self, entity: str, fields: dict[str, Any], event_time: int,
                state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The feature values of one request (the node's work; tests slow it down)."""
        return self.library.compute(entity, state, fields, event_time)

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        fragments: list[tuple[bytes, list[Any]]] = []
        states = feature_states(state, self.cache_keys)
        get, compute = states.get, self.compute
        by_entity = self.library.by_entity
        for rec in batch:
            _, packed = self.codec.decode(rec.value)  # written by intake: trusted
            tp = (rec.topic, rec.partition)
            marks = self.applied(state, tp)
            moved = False
            for item in unpack(packed):
                identity, _event_id, key, event_time, fields = item[:5]
                # each item names its entity (older intakes: one entity per record)
                entity = item[7] if len(item) > 7 else packed["entity"]
                if len(item) > 5:  # the event's position (requests of older intakes have none)
                    source, offset = f"{item[5]}|{entity}", item[6]
                    if offset <= marks.get(source, -1):
                        self.skipped += 1
                        continue  # applied before: its fragment went out then
                    marks[source] = offset
                    moved = True
                values: dict[str, Any]
                notes: list[str]
                if entity not in by_entity:
                    values, notes = {}, [f"no features are defined for {entity}"]
                else:
                    st = get(state, tp, f"{entity}|{key}".encode())
                    values, notes = compute(entity, fields, event_time, st)
                fragments.append((identity.encode(), [identity, entity, key, values, notes]))
            if moved:
                state.view(*tp).put(FEATURES_STORE, APPLIED_KEY, orjson.dumps(marks))
        state.batch_done()
        return self.pack(self.codec, FEATURE_FRAGMENTS, "gather", fragments, as_json=True)


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
    eager = ANSWERS

    def __init__(self, codec: AvroCodec, controls: ControlSet,
                 node_timeout_ms: int = NODE_TIMEOUT_MS,
                 ttl_ms: int = 7 * DAY_MS, library: FeatureLibrary | None = None,
                 batch: BatchTable | None = None, sources: Sequence[ReleaseSource] = ()) \
            -> None:
        self.codec = codec
        self.batch = batch
        self.decider = Decider(codec, controls, ttl_ms,
                               (library or FeatureLibrary()).feature_meta(), sources)
        self.node_timeout_ms = node_timeout_ms
        self.pending: dict[str, _Pending] = {}
        self._deadlines: list[tuple[int, str]] = []
        self._orphans: set[str] = set()  # fragments gathering, their event not yet here

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []  # releases are applied in tick(), at the end
        for rec in batch:
            schema, packed = self.codec.decode(rec.value)
            is_request = schema.name == DECISION_REQUESTS
            view = state.view(rec.topic, rec.partition)
            for item in unpack(packed):
                msg = item if is_request else dict(zip(_FRAGMENT, item, strict=True))
                out += self._take(rec, view, msg, is_request, now_ms, state)
        return out + self.tick(now_ms, state)

    def _take(self, rec: InRecord, view: StateView, msg: dict[str, Any], is_request: bool,
              now_ms: int, state: StateManager) -> list[OutRecord]:
        identity = msg["identity"]
        if is_request and msg["repeat"]:
            p = self.pending.get(identity)
            if p is not None:
                p.repeats += 1
                return []
            again = self.decider.recall(identity, view)
            return [again or quarantine(self.codec, dataclasses.replace(rec, value=msg["event"]),
                                        "dedup", [("DECISION_EXPIRED", None, "repeat of an "
                                                   "event whose decision is no longer kept")],
                                        now_ms, item=identity)]
        p = self.pending.get(identity)
        if p is None:
            # checked once, when an identity first comes: one still gathering was
            # checked then, and only a decision (which ends its gathering) changes that
            if self.decider.memory.get(view, identity.encode()) is not None:
                return []  # decided before a restart: read again, nothing to do
            p = self.pending[identity] = _Pending((rec.topic, rec.partition), rec.offset)
        if is_request:
            p.request, p.arrived_ms = msg, msg["arrived_ms"]
            p.deadline = now_ms + self.node_timeout_ms
            heapq.heappush(self._deadlines, (p.deadline, identity))
            self._orphans.discard(identity)
        else:
            p.fragments[msg["entity"]] = msg
            if p.request is None and p.deadline is None:
                self._orphans.add(identity)
        if p.request is not None and len(p.fragments) >= len(p.request["nodes"]) and \
                all(n in p.fragments for n in p.request["nodes"]):
            return self._decide(identity, p, now_ms, state)
        return []

    ORPHAN_MS = 600_000

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """Apply control releases; decide, with a partial result, every event whose
        node timeout has passed."""
        out: list[OutRecord] = self.decider.reload(now_ms)
        for identity in self._orphans:  # fragments whose event has not come: a deadline
            p = self.pending.get(identity)
            if p is not None and p.request is None and p.deadline is None:
                p.deadline = now_ms + self.ORPHAN_MS
                heapq.heappush(self._deadlines, (p.deadline, identity))
        self._orphans.clear()
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
            features.update(frag["values"])
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
            self._orphans.discard(identity)
