"""Quarantine: a refused message becomes a record with its bytes and its reasons."""

from __future__ import annotations

from collections.abc import Iterable

from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.schemas.validate import Reason

__all__ = ["QUARANTINE_SCHEMA", "Reason", "quarantine"]

QUARANTINE_SCHEMA = "tripwire.ops.QuarantineRecord"



def quarantine(codec: AvroCodec, rec: InRecord, stage: str, reasons: Iterable[Reason],
               now_ms: int, schema_name: str | None = None, item: str | None = None) \
        -> OutRecord:
    """The quarantine output for ``rec``; its id is its source position (and the
    ``item`` of a packed record), so a reprocessed refusal carries the same id."""
    qid = f"{rec.topic}/{rec.partition}/{rec.offset}" + (f"/{item}" if item else "")
    value = codec.encode(QUARANTINE_SCHEMA, {
        "quarantine_id": qid,
        "stage": stage,
        "source_topic": rec.topic,
        "source_partition": rec.partition,
        "source_offset": rec.offset,
        "source_key": rec.key,
        "received_at": now_ms,
        "original": rec.value,
        "schema_name": schema_name,
        "reasons": [{"code": c, "field": f, "detail": d} for c, f, d in reasons],
    })
    return OutRecord("quarantine", qid.encode(), value,
                     meta=("quarantine", stage, tuple(c for c, _, _ in reasons)))
