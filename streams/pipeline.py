"""The live decision path, split across Kafka by entity so any number of workers
compute exact features:

    inputs ──► intake ──► tripwire.features.v1 ──────────► features ──┐
      (card, login,  │      (keyed by entity key: card, account,        │
       FPS topics)   │       device, ip, payee, ...)                    ▼
                     └───────────────► tripwire.gather.v1 ──► decide ──► decisions
                        (the event, keyed by identity)   (fragments, keyed by identity)

* **intake** (per input partition): decode, validate, dedup; one feature request
  per entity of the event, and the event itself to the gather topic; with every
  batch, each input partition's progress (or that it is idle) to every node
  partition.
* **features** (per node partition): every entity key's state lives on exactly
  one partition, and its requests are applied in one order fixed by the input
  logs (:mod:`tripwire.streams.align`), so windows are exact whatever the number
  of workers and however far apart they run. Every
  entity shares one topic (an intake batch costs one produce request per
  partition it writes); an entity listed in ``TRIPWIRE_NODES_APART`` goes to
  ``tripwire.features.<entity>.v1`` instead, served by workers of its own.
* **decide** (per identity partition): gathers the event and its fragments; when
  all have come — or a node has been silent for its timeout, leaving a partial
  result with a per-node error — runs the controls and emits the decision.

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
from tripwire.streams.align import IDLE, PROGRESS, Aligner
from tripwire.streams.decider import DECISIONS_STORE, Decider
from tripwire.streams.decision_path import (
    FEATURES_STORE,
    INPUTS,
    event_features,
    feature_states,
)
from tripwire.streams.intake import DAY_MS, DEDUP_STORE, EVENT_KINDS, Admitted, Intake
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import TP, InRecord, OutRecord, partition_for
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
TP3 = tuple[str, int, int]  # topic, partition, offset
# How long a feature node may be silent - no fragment, no heartbeat - before the
# decide stage decides without it (the node's error recorded). A node that is busy
# or waiting for its inputs sends heartbeats: it is waited for, however long the
# queue in front of it (DecisionStage._waiting_until). This is for a node that is
# stalled or dead, not for a backlog.
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
             broadcast: Sequence[Any] = (), **fields: Any) -> list[OutRecord]:
        """``items``: (routing key, item) pairs → one record per partition (items in
        an Avro array, or with ``as_json`` in one JSON array ``items_json``);
        ``broadcast``: items for every partition, after its own."""
        n = self.partitions.get(topic_key, 1)
        groups: dict[int, list[Any]] = defaultdict(list)
        for key, item in items:
            groups[partition_for(key, n)].append(item)
        if broadcast:
            for partition in range(n):
                groups[partition].extend(broadcast)
        out: list[OutRecord] = []
        for partition, group in sorted(groups.items()):
            for i in range(0, len(group), self.MAX_ITEMS):
                out += [OutRecord(topic_key, None, value, partition) for value in
                        _encode_within(codec, schema, fields, group[i:i + self.MAX_ITEMS],
                                       as_json)]
        return out

    MAX_ITEMS = 1000  # items per record; records are also kept under MAX_BYTES


ALIVE = "@alive"  # a node's heartbeat: [ALIVE, its entities (comma-separated), "", {}, []]
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
    watches = INPUTS  # the loop tells ``watched``: their topic names and partition counts

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
        # the order the nodes apply requests in (tripwire.streams.align): per input
        # partition, the order time reached; ``at_end``, the input partitions at the
        # end of their log (kept by the loop), marked idle at our clock
        self.watched: dict[str, int] = {}
        self.at_end: set[TP] = set()
        self._reached: dict[str, int] = {}
        self._idle_marked: dict[str, int] = {}  # input partitions marked idle: when

    # idle input partitions are marked again this often, for a node partition that
    # restarted or moved (it waits for them until then); each mark costs the broker a
    # request per node partition: every second, 3-4 % of a core on an idle 2-core box
    IDLE_AGAIN_MS = 2_000

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        requests: dict[str, list[tuple[bytes, list[Any]]]] = defaultdict(list)
        gather: list[tuple[bytes, dict[str, Any]]] = []
        order, sources = self._order_times(batch, now_ms)
        for _, admitted in self.intake.admit_all(batch, now_ms, state):
            if isinstance(admitted, OutRecord):
                out.append(admitted)
                continue
            nodes: list[str] = []
            if not admitted.repeat:  # a repeat never counts twice in a feature
                self._requests(admitted, nodes, requests, order)
            rec = admitted.rec
            gather.append((admitted.identity.encode(), {
                "identity": admitted.tagged, "event": rec.value, "nodes": nodes,
                "arrived_ms": rec.timestamp_ms, "repeat": admitted.repeat}))
        out += self._requests_out(requests, self._marks(sources, now_ms))
        return out + self.pack(self.codec, DECISION_REQUESTS, "gather", gather)

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """Mark input partitions that reached the end of their log idle."""
        if not self.at_end:
            return []
        marks = self._marks(set(), now_ms)
        return self._requests_out({}, marks) if marks else []

    def _requests_out(self, requests: dict[str, list[tuple[bytes, list[Any]]]],
                      marks: list[list[Any]]) -> list[OutRecord]:
        out: list[OutRecord] = []
        keys = sorted(set(requests) | (set(self.node_topics.values()) if marks else set()))
        for topic_key in keys:
            # one record per partition, whatever the entities: librdkafka's idempotent
            # producer blocks a partition (and spins) once 5 messages are in flight on
            # it (see connectors.kafka.answer_producer), which a record per entity
            # reached at once on the shared topic
            out += self.pack(self.codec, FEATURE_REQUESTS, topic_key,
                             requests.get(topic_key, ()), as_json=True, broadcast=marks,
                             entity=apart_entity(topic_key))
        return out

    def _order_times(self, batch: Sequence[InRecord], now_ms: int) \
            -> tuple[dict[TP3, tuple[str, int]], set[str]]:
        """Each record's source (``topic:partition``) and order time: its timestamp,
        non-decreasing along its partition and no later than now; the first after
        its partition was marked idle, now (see tripwire.streams.align). And the
        batch's sources."""
        reached, idle = self._reached, self._idle_marked
        order: dict[TP3, tuple[str, int]] = {}
        sources: set[str] = set()
        for rec in batch:
            source = f"{rec.topic}:{rec.partition}"
            sources.add(source)
            t = max(reached.get(source, 0), min(rec.timestamp_ms, now_ms))
            if idle and idle.pop(source, None) is not None:
                t = max(t, now_ms)
            reached[source] = t
            order[(rec.topic, rec.partition, rec.offset)] = (source, t)
        return order, sources

    def _marks(self, sources: set[str], now_ms: int) -> list[list[Any]]:
        """Progress markers: each input partition of this batch, idle when it reached
        the end of its log; the idle ones not marked for ``IDLE_AGAIN_MS``."""
        if not self.watched:  # no loop told us the inputs: one process, no alignment
            return []
        reached, marked = self._reached, self._idle_marked
        at_end = {f"{t}:{p}" for t, p in self.at_end if t in self.watched}
        # idle ones are marked again all together, when the first is due: one record
        # per node partition then, not one per input partition
        again = any(s not in sources and now_ms - marked.get(s, -self.IDLE_AGAIN_MS) >=
                    self.IDLE_AGAIN_MS for s in at_end)
        marks = []
        for s in sorted(sources | at_end):
            if s not in at_end:
                marks.append([PROGRESS, s, reached[s]])
            elif s in sources or again:
                marks.append([IDLE, s, reached.get(s, 0)])
                marked[s] = now_ms
        return marks

    def _requests(self, a: Admitted, nodes: list[str],
                  requests: dict[str, list[tuple[bytes, list[Any]]]],
                  order: dict[TP3, tuple[str, int]]) -> None:
        """``requests``: per node topic key, (entity key, request item) pairs."""
        view = make_view(a.kind.short, a.event, a.kind.jit(a.event))
        rec = a.rec
        source, order_ms = order[(rec.topic, rec.partition, rec.offset)]
        node_topics = self.node_topics
        for entity, key in sorted(self.library.entities_of(view).items()):
            nodes.append(entity)
            fields = {f: view.get(f) for f in self.library.fields_for(entity)}
            requests[node_topics[entity]].append((key.encode(), [
                a.tagged, a.event["event_id"], key, a.event["event_time"], fields,
                source, rec.offset, entity, order_ms]))


class FeatureStage(Packer):
    """One entity key's windows live on one partition: exact for any worker count.

    Requests are applied in one order fixed by the input logs, whatever the
    interleaving of the intakes that send them (:mod:`tripwire.streams.align`):
    held until no input partition can still send one that comes before. Entity
    states are cached decoded in memory and written back once per commit by the
    loop (a hot key such as the system-wide one is encoded once per commit, not
    once per event), inside that commit's transaction. Every ``HEARTBEAT_MS`` the
    node tells every gather partition that it is alive, naming the entities it has
    been sent requests for, so the decide stage times out a node that is silent,
    not one that is busy or waiting for its inputs.
    """

    name = "features"
    stores: tuple[str, ...] = (FEATURES_STORE,)
    routes = ("gather",)
    watches = INPUTS  # every input partition is a source of requests

    HEARTBEAT_MS = 250

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
        self._beat_ms = now_ms
        return [[ALIVE, ",".join(sorted(self.serves)), "", {}, []]]

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        """The heartbeat, when nothing else went out for ``HEARTBEAT_MS``."""
        beat = self._heartbeat(now_ms)
        if not beat:
            return []
        return self.pack(self.codec, FEATURE_FRAGMENTS, "gather", [], as_json=True,
                         broadcast=beat)


@dataclass
class _Pending:
    tp: TP
    first_offset: int
    request: dict[str, Any] | None = None
    arrived_ms: int = 0
    fragments: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeats: int = 0
    deadline: int | None = None
    ready: bool = False  # everything came (or its deadline): decided at the next flush


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

    # Hearing nothing at all for this long (every node sends a heartbeat every
    # FeatureStage.HEARTBEAT_MS) means this stage is cut off - the broker away, a
    # rebalance, a restore - not that the nodes are: no node is timed out then, and
    # each gets ``node_timeout_ms`` again once input resumes.
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
        (every node it misses silent for ``node_timeout_ms``). A node that is busy or
        waiting for its inputs still sends heartbeats: it is waited for, however
        long the queue in front of it (catching up a backlog)."""
        if now_ms - self._input_ms > self.CUT_OFF_MS:
            return now_ms + self.node_timeout_ms  # we hear nothing at all: not their fault
        assert p.request is not None
        since, until = self._resumed_ms, 0
        for node in p.request["nodes"]:
            if node not in p.fragments:
                until = max(until, max(self._heard.get(node, since), since) +
                            self.node_timeout_ms)
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
            p.deadline = now_ms + self.node_timeout_ms
            heapq.heappush(self._deadlines, (p.deadline, tagged))
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
                heapq.heappush(self._deadlines, (p.deadline, identity))
        self._orphans.clear()
        if self._conflicts:  # their fragments have come by now
            for tagged in [k for k, at in self._conflicts.items()
                           if now_ms - at > self.ORPHAN_MS]:
                del self._conflicts[tagged]
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, identity = heapq.heappop(self._deadlines)
            due = self.pending.get(identity)
            if due is None or due.deadline is None or due.deadline > now_ms or due.ready:
                continue  # decided already, or a newer deadline is queued
            if due.request is not None:
                later = self._waiting_until(due, now_ms)
                if later is not None:
                    due.deadline = later
                    heapq.heappush(self._deadlines, (later, identity))
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
                                    f"{self.node_timeout_ms} ms")
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
