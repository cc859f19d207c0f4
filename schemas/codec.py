"""Avro single-object encoding (Avro spec): ``C3 01`` + 8-byte CRC-64-AVRO
fingerprint (little-endian) + the binary body.

Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is a
stable code for the quarantine record.

>>> codec = AvroCodec(SchemaStore.default())
>>> rec = {"x": 1}  # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from tripwire.schemas.registry import AvroSchema, SchemaStore, UnknownSchemaError

__all__ = ["SINGLE_OBJECT_MAGIC", "AvroCodec", "DecodeError", "EncodeError"]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_HEADER = 10


class DecodeError(ValueError):
    """Bytes that cannot be decoded; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EncodeError(ValueError):
    """A record that does not fit its schema."""


class AvroCodec:
    """Encode and decode records of the schemas in one :class:`SchemaStore`."""

    def __init__(self, store: SchemaStore) -> None:
        self.store = store

    def encode(self, schema_name: str, record: dict[str, Any], version: int | None = None) \
            -> bytes:
        """Encode with the newest version of ``schema_name`` (or the given ``version``)."""
        schema = self.store.get(schema_name, version)
        buf = io.BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC)
        buf.write(schema.fingerprint)
        try:
            schemaless_writer(buf, schema.parsed, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"{schema_name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes | None) -> tuple[AvroSchema, dict[str, Any]]:
        if data is None:
            raise DecodeError("EMPTY", "message has no value (tombstone)")
        if len(data) < _HEADER:
            raise DecodeError("TRUNCATED", f"{len(data)} bytes, shorter than the 10-byte header")
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("BAD_MAGIC", f"header {data[:2].hex()} is not c301 "
                              "(Avro single-object encoding)")
        try:
            schema = self.store.by_fingerprint(data[2:_HEADER])
        except UnknownSchemaError as exc:
            raise DecodeError("UNKNOWN_SCHEMA", str(exc)) from None
        return self._body(schema, data, _HEADER)

    def _body(self, writer: AvroSchema, data: bytes, start: int) \
            -> tuple[AvroSchema, dict[str, Any]]:
        """Read the body written with ``writer`` into the newest version of its name."""
        reader = self.store.get(writer.name)
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            record = schemaless_reader(buf, writer.parsed,
                                       None if reader is writer else reader.parsed)
        except Exception as exc:  # fastavro raises many kinds on corrupt input
            raise DecodeError("BODY_INVALID", f"{writer.name} v{writer.version}: "
                              f"{type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError("TRAILING_BYTES",
                              f"{writer.name}: {len(data) - buf.tell()} bytes after the record")
        if not isinstance(record, dict):
            raise DecodeError("BODY_INVALID", f"{writer.name}: not a record")
        return reader, record
