"""Avro on the wire, in one of two framings:

* **Avro single-object encoding** (the embedded default, Avro spec): ``C3 01`` +
  8-byte CRC-64-AVRO fingerprint (little-endian) + the binary body.
* **Confluent Schema Registry wire format** (when ``SCHEMA_REGISTRY_URL`` is set):
  ``00`` + 4-byte big-endian schema id + the binary body, so Confluent tooling
  reads tripwire's topics. Subjects follow the record-name strategy (the
  record's full name).

The decoder accepts both framings whatever it writes. Decoding never raises
anything but :class:`DecodeError` (a stable ``reason`` code for the quarantine
record) or :class:`RegistryUnavailable` (not the message's fault: retry).

>>> codec = AvroCodec(SchemaStore.default())
>>> codec.decode(b"\\x00\\x00\\x00\\x00\\x07rest")[0]  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from tripwire.schemas.compiled import compile_reader, compile_writer
from tripwire.schemas.registry import AvroSchema, SchemaStore, UnknownSchemaError, strip_logical

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "AvroCodec",
    "DecodeError",
    "EncodeError",
    "RegistryFraming",
    "RegistryUnavailable",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_HEADER = 10
_CONFLUENT_HEADER = 5
Decoder = Callable[[bytes, int], tuple[Any, int]]  # a compiled decoder: body, start → value, end


class DecodeError(ValueError):
    """Bytes that cannot be decoded; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EncodeError(ValueError):
    """A record that does not fit its schema."""


class RegistryUnavailable(RuntimeError):
    """The schema registry did not answer; the message is not at fault."""


_CLIENTS: dict[str, Any] = {}


class RegistryFraming:
    """Schema ids from a Confluent-compatible registry (confluent-kafka's client).

    ``mock://`` URLs give confluent-kafka's in-process mock registry.
    """

    def __init__(self, url_or_client: Any, store: SchemaStore) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        if isinstance(url_or_client, str):
            # one client per registry and process: its connections and caches are shared
            # by every codec (and a mock:// registry is the same one throughout)
            client = _CLIENTS.get(url_or_client)
            if client is None:
                conf = {"url": url_or_client}
                client = _CLIENTS[url_or_client] = SchemaRegistryClient.new_client(conf) \
                    if hasattr(SchemaRegistryClient, "new_client") else SchemaRegistryClient(conf)
            self.client: Any = client
        else:
            self.client = url_or_client
        self.store = store
        self._ids: dict[bytes, int] = {}
        self._writers: dict[int, AvroSchema] = {}

    def schema_id(self, schema: AvroSchema) -> int:
        sid = self._ids.get(schema.fingerprint)
        if sid is None:
            from confluent_kafka.schema_registry import Schema

            try:
                sid = self.client.register_schema(schema.name,
                                                  Schema(json.dumps(schema.source), "AVRO"))
            except Exception as exc:
                raise RegistryUnavailable(f"registering {schema.name}: {exc}") from exc
            self._ids[schema.fingerprint] = sid
            self._writers[sid] = schema
        return sid

    def writer(self, schema_id: int) -> AvroSchema:
        known = self._writers.get(schema_id)
        if known is not None:
            return known
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            registered = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if getattr(exc, "http_status_code", None) == 404:
                raise DecodeError("UNKNOWN_SCHEMA", f"schema id {schema_id} is not in the "
                                  "registry") from None
            raise RegistryUnavailable(f"schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise RegistryUnavailable(f"schema id {schema_id}: {exc}") from exc
        try:
            schema = AvroSchema.from_json(json.loads(registered.schema_str or "null"),
                                          f"registry id {schema_id}")
            known = self.store.by_fingerprint(schema.fingerprint)
        except (UnknownSchemaError, ValueError) as exc:
            raise DecodeError("UNKNOWN_SCHEMA", f"schema id {schema_id} is not one of "
                              f"tripwire's schemas: {exc}") from None
        self._writers[schema_id] = known
        return known


class AvroCodec:
    """Encode and decode records of the schemas in one :class:`SchemaStore`."""

    def __init__(self, store: SchemaStore, registry: RegistryFraming | None = None,
                 compiled: bool = True) -> None:
        """``compiled`` False: fastavro only, never the compiled encoders and
        decoders of :mod:`tripwire.schemas.compiled` (the same bytes and values)."""
        self.store = store
        self.registry = registry
        self.compiled = compiled
        # leading(): (writer, field) → the reader, the fields up to it, their decoder
        self._leading: dict[tuple[bytes, str], tuple[AvroSchema, Any, Decoder | None]] = {}
        # schema fingerprint → its compiled encoder, decoder (None: fastavro's only)
        self._encoders: dict[bytes, Callable[[Any], bytes] | None] = {}
        self._decoders: dict[bytes, Decoder | None] = {}

    @classmethod
    def from_url(cls, schema_registry_url: str | None, store: SchemaStore | None = None) \
            -> AvroCodec:
        store = store or SchemaStore.default()
        if not schema_registry_url:
            return cls(store)
        return cls(store, RegistryFraming(schema_registry_url, store))

    def encode(self, schema_name: str, record: dict[str, Any], version: int | None = None) \
            -> bytes:
        """Encode with the newest version of ``schema_name`` (or the given ``version``)."""
        schema = self.store.get(schema_name, version)
        buf = io.BytesIO()
        if self.registry is None:
            buf.write(SINGLE_OBJECT_MAGIC)
            buf.write(schema.fingerprint)
        else:
            buf.write(bytes([CONFLUENT_MAGIC]))
            buf.write(self.registry.schema_id(schema).to_bytes(4, "big"))
        try:
            compiled = self._encoders[schema.fingerprint]
        except KeyError:
            compiled = self._encoders[schema.fingerprint] = compile_writer(
                strip_logical(schema.source)) if self.compiled else None
        if compiled is not None:
            try:
                body = compiled(record)
            except Exception:  # not a shape it takes (Unfit): fastavro decides, and says why
                pass
            else:
                buf.write(body)
                return buf.getvalue()
        try:
            schemaless_writer(buf, schema.parsed, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{schema_name}: {exc}") from exc  # (an int beyond a long)
        return buf.getvalue()

    def decode(self, data: bytes | None) -> tuple[AvroSchema, dict[str, Any]]:
        writer, start = self._writer(data)
        return self._body(writer, data or b"", start)

    def leading(self, data: bytes | None, fields: Mapping[str, str]) -> tuple[AvroSchema, Any]:
        """The record's schema (as :meth:`decode` gives it) and one of its fields
        (``fields``: its name, by the record's full name; KeyError for a record not
        named there), read from the front of the body: the fields up to that one,
        none after it. For a field near the start (an event's identity) a fraction
        of a whole decode; when the writer has no such field or writes it in another
        type than the reader's, the whole record is decoded instead. Raises what
        :meth:`decode` raises (a record whose later fields are corrupt is not read
        that far)."""
        writer, start = self._writer(data)
        data = data or b""
        name = fields[writer.name]
        key = (writer.fingerprint, name)
        known = self._leading.get(key)
        if known is None:
            known = self._leading[key] = self._prefix(writer, name)
        reader, prefix, decoder = known
        if prefix is None:
            schema, record = self._body(writer, data, start)
            return schema, record[name]
        front, _ = self._read(writer, data, start, prefix, None, decoder)
        return reader, front[name]

    def _prefix(self, writer: AvroSchema, name: str) \
            -> tuple[AvroSchema, Any, Decoder | None]:
        """The reader of ``writer``'s records, a schema of ``writer``'s fields up to
        ``name`` (None: read whole records) and its compiled decoder. A record's body
        is its fields one after the other, so the first fields of one are a record
        of those fields."""
        reader = self.store.get(writer.name)
        fields = writer.source.get("fields", [])
        names = [f.get("name") for f in fields]
        theirs = {f.get("name"): f.get("type") for f in reader.source.get("fields", [])}
        if name not in names or name not in theirs or \
                strip_logical(theirs[name]) != strip_logical(fields[names.index(name)]["type"]):
            return reader, None, None
        head = {k: v for k, v in writer.source.items() if k != "fields"}
        prefix = parse_schema(strip_logical({**head, "fields": fields[:names.index(name) + 1]}))
        return reader, prefix, compile_reader(prefix) if self.compiled else None

    def _writer(self, data: bytes | None) -> tuple[AvroSchema, int]:
        """The writer's schema of framed ``data``, and where its body starts."""
        if data is None:
            raise DecodeError("EMPTY", "message has no value (tombstone)")
        if data[:1] == b"\x00":
            if len(data) < _CONFLUENT_HEADER:
                raise DecodeError("TRUNCATED", f"{len(data)} bytes, shorter than the 5-byte "
                                  "Confluent header")
            schema_id = int.from_bytes(data[1:5], "big")
            if self.registry is None:
                raise DecodeError("UNKNOWN_SCHEMA", f"Confluent wire format (schema id "
                                  f"{schema_id}) but no SCHEMA_REGISTRY_URL is configured")
            return self.registry.writer(schema_id), _CONFLUENT_HEADER
        if len(data) < _HEADER:
            raise DecodeError("TRUNCATED", f"{len(data)} bytes, shorter than the 10-byte header")
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("BAD_MAGIC", f"header {data[:2].hex()} is neither c301 (Avro "
                              "single-object encoding) nor 00 (Confluent wire format)")
        try:
            return self.store.by_fingerprint(data[2:_HEADER]), _HEADER
        except UnknownSchemaError as exc:
            raise DecodeError("UNKNOWN_SCHEMA", str(exc)) from None

    def _body(self, writer: AvroSchema, data: bytes, start: int) \
            -> tuple[AvroSchema, dict[str, Any]]:
        """Read the body written with ``writer`` into the newest version of its name."""
        reader = self.store.get(writer.name)
        if reader is writer:  # read as written: by its compiled decoder if it takes the body
            try:
                decoder = self._decoders[writer.fingerprint]
            except KeyError:
                decoder = self._decoders[writer.fingerprint] = compile_reader(
                    writer.parsed) if self.compiled else None
            record, end = self._read(writer, data, start, writer.parsed, None, decoder)
        else:  # one version into another: fastavro's schema resolution
            record, end = self._read(writer, data, start, writer.parsed, reader.parsed)
        if end != len(data):
            raise DecodeError("TRAILING_BYTES",
                              f"{writer.name}: {len(data) - end} bytes after the record")
        return reader, record

    @staticmethod
    def _read(writer: AvroSchema, data: bytes, start: int, schema: Any, reader: Any,
              decoder: Decoder | None = None) -> tuple[dict[str, Any], int]:
        """A record read from ``start`` (``schema`` as written, ``reader`` as wanted),
        and where it ended; every failure a DecodeError. By ``decoder``, the
        schema's compiled one, when it takes the body; otherwise by fastavro."""
        if decoder is not None and type(data) is bytes:
            try:
                return decoder(data, start)
            except Exception:  # not the plainest encoding, or corrupt: fastavro says
                pass
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            record = schemaless_reader(buf, schema, reader)
        except Exception as exc:  # fastavro raises many kinds on corrupt input
            raise DecodeError("BODY_INVALID", f"{writer.name} v{writer.version}: "
                              f"{type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise DecodeError("BODY_INVALID", f"{writer.name}: not a record")
        return record, buf.tell()
