"""What a loop runs: a stage, as a pure function of a batch, the time and the state.

Every stage (intake, feature nodes, decide, the one-process decision path, and
the outcome services to come) is a :class:`Processor`. The base class gives the
optional parts their do-nothing defaults, so a loop calls them all and probes
for none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.records import TP, InRecord, OutRecord
from tripwire.schemas.registry import AvroSchema
from tripwire.state.manager import StateManager

__all__ = ["Processor", "decoded"]

logger = logging.getLogger(__name__)


def decoded(codec: AvroCodec, batch: Sequence[InRecord]) \
        -> Iterator[tuple[InRecord, AvroSchema, dict[str, Any]]]:
    """Each record of a topic tripwire writes, with its schema and value; tombstones
    skipped, and a record no schema reads (a bug) logged and skipped."""
    for rec in batch:
        if rec.value is None:
            continue
        try:
            schema, value = codec.decode(rec.value)
        except DecodeError as exc:
            logger.error("%s[%d]@%d unreadable (%s); skipped", rec.topic, rec.partition,
                         rec.offset, exc)
            continue
        yield rec, schema, value


class Processor:
    """A stage: outputs (and state writes) from a batch, the time and the state.

    Class attributes a stage sets:

    * ``name``: its consumer group's and changelogs' stage name;
    * ``stores``: the state stores it writes (each with a changelog per input topic);
    * ``eager``: topic keys whose records are sent at once, outside the state
      transaction (:mod:`tripwire.streams.loop`);
    * ``routes``: topic keys it partitions itself — the loop sets ``partitions``
      (topic key → partition count) before the first batch;
    * ``watches``: input topic keys it orders across partitions — the loop sets
      ``watched`` (topic name → partition count) and ``at_end`` (the input
      partitions at the end of their log, kept up to date).

    Hooks, each a no-op unless overridden: :meth:`tick` between batches (timeouts,
    heartbeats), :meth:`safe_offsets` (commit no further than work still held in
    memory), :meth:`drop` (partitions revoked or rewound: forget their in-memory
    work).
    """

    name: str = "processor"
    stores: tuple[str, ...] = ()
    eager: frozenset[str] = frozenset()
    routes: tuple[str, ...] = ()
    watches: tuple[str, ...] = ()
    # set by the loop (replaced, never changed in place)
    partitions: dict[str, int] = {}
    watched: dict[str, int] = {}
    at_end: set[TP] = set()
    # a loop running several stages (tripwire.streams.runner.Combined): each input
    # topic's stores, and the stage its changelogs are named after
    stores_by_topic: dict[str, list[str]] | None = None
    owners: dict[str, str] = {}

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        raise NotImplementedError

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        return []

    def safe_offsets(self, offsets: dict[TP, int]) -> dict[TP, int]:
        return offsets

    def drop(self, tps: Sequence[TP]) -> None:
        return None
