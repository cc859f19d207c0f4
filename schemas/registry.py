"""The Avro schemas in ``schemas/avro/``: the single source of truth for every topic.

Each ``.avsc`` file holds one top-level record, named ``<namespace>.<Name>``.
Logical types (timestamp-millis) are read as plain integers on the hot path: the
parsing canonical form ignores logical types, so fingerprints are unchanged.

>>> store = SchemaStore.default()
>>> store.get("tripwire.events.CardPayment").fingerprint.hex()  # doctest: +ELLIPSIS
'...'
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = ["AvroSchema", "SchemaStore", "UnknownSchemaError"]


class UnknownSchemaError(KeyError):
    """No schema of that name or fingerprint is known."""


@dataclass(frozen=True)
class AvroSchema:
    name: str
    source: dict[str, Any]
    parsed: dict[str, Any]  # for encode/decode: logical types stripped (integers)
    canonical: str
    fingerprint: bytes  # CRC-64-AVRO, little-endian, as in the single-object header
    path: str

    @classmethod
    def from_json(cls, source: dict[str, Any], path: str = "") -> AvroSchema:
        full = parse_schema(copy.deepcopy(source))
        plain = parse_schema(_strip_logical(copy.deepcopy(source)))
        if not isinstance(full, dict) or not isinstance(plain, dict):
            raise ValueError(f"{path or 'schema'}: the top level must be one named record")
        canonical = to_parsing_canonical_form(full)
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        return cls(full["name"], source, plain, canonical, fp, path)


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        if "logicalType" in node and isinstance(node.get("type"), str):
            return node["type"]
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


class SchemaStore:
    """Schemas by full name and by fingerprint."""

    def __init__(self, schemas: list[AvroSchema]) -> None:
        self._by_name = {s.name: s for s in schemas}
        self._by_fp = {s.fingerprint: s for s in schemas}

    @classmethod
    def from_dir(cls, directory: Path) -> SchemaStore:
        return cls([AvroSchema.from_json(json.loads(p.read_text()), str(p))
                    for p in sorted(directory.glob("*.avsc"))])

    @classmethod
    @cache
    def default(cls) -> SchemaStore:
        """The schemas shipped in ``tripwire.schemas/avro``."""
        root = resources.files("tripwire.schemas").joinpath("avro")
        return cls([AvroSchema.from_json(json.loads(p.read_text()), p.name)
                    for p in sorted(root.iterdir(), key=lambda p: p.name)
                    if p.name.endswith(".avsc")])

    def get(self, name: str) -> AvroSchema:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSchemaError(f"no schema named {name!r}") from None

    def by_fingerprint(self, fp: bytes) -> AvroSchema:
        try:
            return self._by_fp[fp]
        except KeyError:
            raise UnknownSchemaError(f"no schema with fingerprint {fp.hex()}") from None

    def names(self) -> list[str]:
        return sorted(self._by_name)
