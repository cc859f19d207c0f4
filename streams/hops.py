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

The stages: :mod:`tripwire.streams.intake`, :mod:`tripwire.streams.nodes`,
:mod:`tripwire.streams.gather`; each a :class:`~tripwire.streams.processor.Processor`
that :class:`~tripwire.streams.loop.BatchLoop` runs. This module holds what
they share: the internal message kinds and how they are packed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson

from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import OutRecord, partition_for

__all__ = ["ALIVE", "APPLIED_KEY", "DECISION_REQUESTS", "FEATURE_FRAGMENTS", "FEATURE_REQUESTS",
           "MAX_BYTES", "NODE_TIMEOUT_MS", "TP3", "Packer", "unpack"]
from tripwire.streams.processor import Processor

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
# ... unless the event is part of a backlog: its request reached the decide stage
# more than BACKLOG_LAG_MS after the event arrived (the path is catching up; no
# card scheme or payment system waits that long for an answer). Then it waits
# this long for a silent node: long enough for the group to move a dead worker's
# partitions (the session timeout, 45 s by default) and for their new owner to
# restore them, and for every client to be back after a broker restart. It is
# late already; its features are worth more than the seconds.
BACKLOG_LAG_MS = 10_000
BACKLOG_NODE_TIMEOUT_MS = 60_000


class Packer(Processor):
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
