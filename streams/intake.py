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
import struct
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire.features.jit import card_features, fps_features, login_features
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.models import EVENT_MODELS
from tripwire.schemas.validate import DAY_MS, Reason, Validator
from tripwire.streams.quarantine import quarantine
from tripwire.streams.records import InRecord, OutRecord
from tripwire.streams.state import StateManager, StateView

__all__ = ["DAY_MS", "DEDUP_STORE", "EVENT_KINDS", "Admitted", "EventKind", "Expiring",
           "Intake"]

DEDUP_STORE = "dedup.v2"  # v2: the expiry inside the value, a local index


@dataclass(frozen=True)
class EventKind:
    """How one inbound event type is keyed, identified and featurised (the field its
    input records are keyed by is its event model's,
    :data:`~tripwire.schemas.models.EVENT_MODELS`)."""

    schema: str
    short: str
    identity_field: str  # repeats share this value
    volatile: frozenset[str]  # fields a legitimate repeat may change
    jit: Callable[[Mapping[str, Any]], dict[str, Any]]
    entity_field: str = field(init=False)  # what its input records are keyed by

    def __post_init__(self) -> None:
        object.__setattr__(self, "entity_field", EVENT_MODELS[self.schema].key_field)


EVENT_KINDS: dict[str, EventKind] = {k.schema: k for k in (
    EventKind("tripwire.events.CardPayment", "CardPayment", "event_id", frozenset(),
              card_features),
    EventKind("tripwire.events.LoginEvent", "LoginEvent", "event_id", frozenset(),
              login_features),
    # An FPS repeat is a new message (new id and time, is_repeat set) carrying the
    # same transaction: everything else must match.
    EventKind("tripwire.events.FpsMessage", "FpsMessage", "transaction_reference",
              frozenset({"event_id", "event_time", "is_repeat"}), fps_features),
)}


@dataclass(frozen=True)
class Admitted:
    """A valid event; ``repeat`` when its identity was seen before with the same content."""

    kind: EventKind
    event: dict[str, Any]
    identity: str
    rec: InRecord
    repeat: bool = False
    digest: bytes = b""  # of its content (what a repeat must match)

    @property
    def tagged(self) -> str:
        """The identity with the content's digest (``<identity>#<16 hex>``): what the
        split pipeline's requests, fragments and gathering carry, so that another
        event reusing the id on another partition is told apart, never merged
        (:class:`tripwire.streams.pipeline.DecisionStage`)."""
        return f"{self.identity}#{self.digest.hex()[:16]}"


NEVER = 2**63 - 1  # an expiry that never comes


class Expiring:
    """Entries of one store that expire at an event time.

    ``d:<key>`` holds ``<expiry><value>`` and goes to the changelog; the index
    ``x:<expiry><key>`` that :meth:`expire` walks is local only (never in the
    changelog: one record per entry instead of two) and is rebuilt from the
    ``d:`` entries the first time a partition expires after being opened.
    """

    _X = struct.Struct(">q")

    def __init__(self, store: str) -> None:
        self.store = store
        # per opened store, once indexed: the earliest expiry it holds (none: NEVER)
        self._next_due: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def get(self, view: StateView, key: bytes) -> bytes | None:
        stored = view.get(self.store, b"d:" + key)
        return None if stored is None else stored[8:]

    def put(self, view: StateView, key: bytes, value: bytes, expiry: int) -> None:
        when = self._X.pack(expiry)
        view.put(self.store, b"d:" + key, when + value)
        view.put_local(self.store, b"x:" + when + key, b"")
        s = view.manager.store(self.store, view.tp)
        if expiry < self._next_due.get(s, expiry):  # indexed: keep the earliest
            self._next_due[s] = expiry

    def expire(self, view: StateView, watermark: int) -> int:
        """Forget entries whose expiry is at or before ``watermark`` (the index is
        read only once the earliest expiry is due)."""
        s = view.manager.store(self.store, view.tp)
        if s not in self._next_due:
            self._reindex(view)
        if watermark < self._next_due[s]:
            return 0
        done: list[bytes] = []
        next_due = NEVER
        for key, _ in view.items(self.store, b"x:"):
            when = self._X.unpack_from(key, 2)[0]
            if when > watermark:
                next_due = when
                break
            done.append(key)
        for key in done:
            view.delete_local(self.store, key)
            view.delete(self.store, b"d:" + key[10:])
        self._next_due[s] = next_due
        return len(done)

    def _reindex(self, view: StateView) -> None:
        """The index of entries restored from the changelog (idempotent)."""
        earliest = NEVER
        for key, stored in list(view.items(self.store, b"d:")):
            view.put_local(self.store, b"x:" + stored[:8] + key[2:], b"")
            earliest = min(earliest, self._X.unpack_from(stored)[0])
        self._next_due[view.manager.store(self.store, view.tp)] = earliest


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
                  also_expire: Sequence[Expiring] = ()) \
            -> Iterator[tuple[StateView, Admitted | OutRecord]]:
        """:meth:`admit` over a batch; afterwards, identities (and ``also_expire``)
        older than each partition's newest event time minus the TTL are forgotten."""
        marks: dict[tuple[str, int], int] = {}
        for rec in batch:
            view = state.view(rec.topic, rec.partition)
            admitted = self.admit(rec, now_ms, view)
            if isinstance(admitted, Admitted):
                tp = (rec.topic, rec.partition)
                marks[tp] = max(marks.get(tp, 0), admitted.event["event_time"])
            yield view, admitted
        for (t, p), mark in marks.items():
            for store in (self.seen, *also_expire):
                store.expire(state.view(t, p), mark)

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
        identity = f"{kind.short}:{event[kind.identity_field]}"
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
