"""Intake: decode → validate → route → dedup, as a pure function of the record,
the time and the state. The first stage of every decision path.

Idempotency: the first message of an identity (event id; for FPS the transaction
reference) is remembered for ``ttl_ms`` of event time with a hash of its content.
A repeat with identical content is admitted with ``repeat`` set (it gets the
first decision again, and never counts twice in a feature); with different content it is
refused as ``DUPLICATE_CONFLICT``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tripwire.features.engine import (
    FeatureLibrary,
    make_view,
)
from tripwire.features.kinds import EVENT_KINDS, EventKind
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.records import TP, InRecord, OutRecord
from tripwire.schemas.validate import DAY_MS, Reason, Validator
from tripwire.state.expiring import Expiring
from tripwire.state.manager import StateManager, StateView
from tripwire.streams.align import IDLE, PROGRESS
from tripwire.streams.hops import DECISION_REQUESTS, FEATURE_REQUESTS, TP3, Packer
from tripwire.streams.quarantine import quarantine
from tripwire.streams.topics import ANSWERS, INPUTS, apart_entity, node_topic_key

__all__ = ["DEDUP_STORE", "Admitted", "Intake", "IntakeStage"]

logger = logging.getLogger(__name__)


DEDUP_STORE = "dedup.v2"  # v2: the expiry inside the value, a local index


@dataclass(frozen=True)
class Admitted:
    """A valid event; ``repeat`` when its identity was seen before with the same content."""

    kind: EventKind
    event: dict[str, Any]
    identity: str
    rec: InRecord
    repeat: bool = False
    digest: bytes = b""  # of its content (what a repeat must match)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its fields' values (see InRecord.__reduce__)."""
        return Admitted, (self.kind, self.event, self.identity, self.rec, self.repeat,
                          self.digest)

    @property
    def tagged(self) -> str:
        """The identity with the content's digest (``<identity>#<16 hex>``): what the
        split pipeline's requests, fragments and gathering carry, so that another
        event reusing the id on another partition is told apart, never merged
        (:class:`tripwire.streams.gather.DecisionStage`)."""
        return f"{self.identity}#{self.digest.hex()[:16]}"


def _content_hash(kind: EventKind, event: Mapping[str, Any]) -> bytes:
    """What a repeat must match: every field but the volatile ones."""
    body = {k: v for k, v in event.items() if k not in kind.volatile} if kind.volatile \
        else event
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS),
                           digest_size=16).digest()


class Intake:
    """Decode, validate, route and deduplicate one record at a time."""

    def __init__(self, codec: AvroCodec, validator: Validator | None = None,
                 ttl_ms: int = 7 * DAY_MS) -> None:
        self.codec = codec
        self.validator = validator or Validator()
        self.ttl_ms = ttl_ms
        self.seen = Expiring(DEDUP_STORE)

    def admit_all(self, batch: Sequence[InRecord], now_ms: int, state: StateManager,
                  marks: dict[TP, int] | None = None) \
            -> Iterator[tuple[StateView, Admitted | OutRecord]]:
        """:meth:`admit` over a batch; afterwards, identities older than each
        partition's newest event time minus the TTL are forgotten (``marks``, when
        given, is filled with those newest times: what else remembers identities
        forgets them there too)."""
        marks = {} if marks is None else marks
        for rec in batch:
            view = state.view(rec.topic, rec.partition)
            admitted = self.admit(rec, now_ms, view)
            if isinstance(admitted, Admitted):
                tp = (rec.topic, rec.partition)
                marks[tp] = max(marks.get(tp, 0), admitted.event["event_time"])
            yield view, admitted
        for (t, p), mark in marks.items():
            self.seen.expire(state.view(t, p), mark)

    def admit(self, rec: InRecord, now_ms: int, view: StateView) -> Admitted | OutRecord:
        """The event, a repeat of one, or the quarantine record refusing it."""
        def refuse(stage: str, reasons: list[Reason], schema: str | None = None) -> OutRecord:
            return quarantine(self.codec, rec, stage, reasons, now_ms, schema)

        try:
            schema, event = self.codec.decode(rec.value)
        except DecodeError as exc:
            return refuse("decode", [(exc.reason, None, exc.detail)])
        kind = EVENT_KINDS.get(schema.name)
        if kind is None:
            return refuse("route", [("UNEXPECTED_TYPE", None,
                                     f"{schema.name} is not decided on topic {rec.topic}")],
                          schema.name)
        reasons = self.validator.validate(schema.name, event, now_ms)
        if reasons:
            return refuse("validate", reasons, schema.name)
        identity = kind.identity(event)
        digest = _content_hash(kind, event)
        seen = self.seen.get(view, identity.encode())
        if seen is not None:
            if seen != digest:
                return refuse("dedup", [(
                    "DUPLICATE_CONFLICT", kind.identity_field,
                    f"{event[kind.identity_field]} was already received with different "
                    "content; the first message's decision stands")], schema.name)
            return Admitted(kind, event, identity, rec, repeat=True, digest=digest)
        original = event.get("original_reference") if kind.short == "FpsMessage" else None
        if original is not None and self.seen.get(view, f"FpsMessage:{original}".encode()) \
                is None:
            return refuse("validate", [(
                "UNKNOWN_ORIGINAL", "original_reference",
                f"{event['message_type']} refers to {original}, which was never received "
                "(or has expired)")], schema.name)
        self.seen.put(view, identity.encode(), digest, event["event_time"] + self.ttl_ms)
        return Admitted(kind, event, identity, rec, digest=digest)


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
