"""The Avro schemas in ``schemas/avro/``: the single source of truth for every topic.

Each ``<subject>.v<N>.avsc`` file holds version N of one top-level record. The
newest version of a name is what tripwire writes and reads into; data written
with an older version is resolved into the newest (Avro schema resolution), so
producers can upgrade after consumers. ``compatibility.json`` declares the rule
each name's versions must follow (checked by :mod:`tripwire.schemas.compat`).

Logical types (timestamp-millis, date) are read as plain integers on the hot
path: the parsing canonical form ignores logical types, so fingerprints are
unchanged.

>>> store = SchemaStore.default()
>>> store.get("tripwire.events.CardPayment").version >= 1
True
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = ["AvroSchema", "SchemaStore", "UnknownSchemaError", "load_compatibility",
           "strip_logical"]

_FILE = re.compile(r"^(?P<subject>[a-z0-9_]+)\.v(?P<version>\d+)\.avsc$")


class UnknownSchemaError(KeyError):
    """No schema of that name or fingerprint is known."""


@dataclass(frozen=True)
class AvroSchema:
    name: str
    version: int
    source: dict[str, Any]
    parsed: dict[str, Any]  # for encode/decode: logical types stripped (integers)
    canonical: str
    fingerprint: bytes  # CRC-64-AVRO, little-endian, as in the single-object header
    path: str

    @classmethod
    def from_json(cls, source: dict[str, Any], path: str = "", version: int = 1) -> AvroSchema:
        full = parse_schema(copy.deepcopy(source))
        plain = parse_schema(strip_logical(copy.deepcopy(source)))
        if not isinstance(full, dict) or not isinstance(plain, dict):
            raise ValueError(f"{path or 'schema'}: the top level must be one named record")
        canonical = to_parsing_canonical_form(full)
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        return cls(full["name"], version, source, plain, canonical, fp, path)


def strip_logical(node: Any) -> Any:
    """A schema (or part of one) with its logical types left out: as it is encoded."""
    if isinstance(node, dict):
        if "logicalType" in node and isinstance(node.get("type"), str):
            return node["type"]
        return {k: strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [strip_logical(v) for v in node]
    return node


def _load(files: Iterable[tuple[str, str]]) -> list[AvroSchema]:
    out = []
    for fname, text in files:
        m = _FILE.match(fname)
        if m is None:
            raise ValueError(f"{fname}: schema files are named <subject>.v<N>.avsc")
        out.append(AvroSchema.from_json(json.loads(text), fname, int(m["version"])))
    return out


def load_compatibility() -> dict[str, str]:
    """The declared compatibility rule of every schema name."""
    text = resources.files("tripwire.schemas").joinpath("compatibility.json").read_text()
    rules: dict[str, str] = json.loads(text)["rules"]
    return rules


class SchemaStore:
    """Schemas by full name (newest version), by name and version, and by fingerprint."""

    def __init__(self, schemas: list[AvroSchema]) -> None:
        self._versions: dict[str, dict[int, AvroSchema]] = {}
        for s in schemas:
            versions = self._versions.setdefault(s.name, {})
            if s.version in versions:
                raise ValueError(f"{s.name} v{s.version} is defined twice "
                                 f"({versions[s.version].path}, {s.path})")
            versions[s.version] = s
        self._latest = {n: v[max(v)] for n, v in self._versions.items()}
        self._by_fp = {s.fingerprint: s for s in schemas}

    @classmethod
    def from_dir(cls, directory: Path) -> SchemaStore:
        return cls(_load((p.name, p.read_text()) for p in sorted(directory.glob("*.avsc"))))

    @classmethod
    @cache
    def default(cls) -> SchemaStore:
        """The schemas shipped in ``tripwire.schemas/avro``."""
        root = resources.files("tripwire.schemas").joinpath("avro")
        return cls(_load((p.name, p.read_text()) for p in
                         sorted(root.iterdir(), key=lambda p: p.name)
                         if p.name.endswith(".avsc")))

    def get(self, name: str, version: int | None = None) -> AvroSchema:
        try:
            if version is None:
                return self._latest[name]
            return self._versions[name][version]
        except KeyError:
            v = "" if version is None else f" v{version}"
            raise UnknownSchemaError(f"no schema named {name!r}{v}") from None

    def versions(self, name: str) -> list[AvroSchema]:
        return [self._versions[name][v] for v in sorted(self._versions.get(name, {}))]

    def by_fingerprint(self, fp: bytes) -> AvroSchema:
        try:
            return self._by_fp[fp]
        except KeyError:
            raise UnknownSchemaError(f"no schema with fingerprint {fp.hex()}") from None

    def by_canonical(self, canonical: str) -> AvroSchema:
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        return self.by_fingerprint(fp)

    def names(self) -> list[str]:
        return sorted(self._latest)
