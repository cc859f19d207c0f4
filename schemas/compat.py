"""Schema evolution checked with Avro's own schema resolution.

Records generated from the writer schema are encoded and read back with the
reader schema (fastavro's resolution, the same code the decoder runs); any
failure is an incompatibility, reported with the field fastavro names.

>>> store = SchemaStore.default()
>>> v = store.versions("tripwire.events.CardPayment")
>>> check_rule(v[0], v[1], "FULL")
[]
"""

from __future__ import annotations

import io
import itertools

from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from tripwire.schemas.registry import AvroSchema, SchemaStore

__all__ = ["RULES", "check_rule", "incompatibilities", "store_problems"]

RULES = ("BACKWARD", "FORWARD", "FULL", "NONE")


def incompatibilities(writer: AvroSchema, reader: AvroSchema, samples: int = 200) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    problems: list[str] = []
    for record in generate_many(writer.parsed, samples):
        buf = io.BytesIO()
        schemaless_writer(buf, writer.parsed, record)
        buf.seek(0)
        try:
            schemaless_reader(buf, writer.parsed, reader.parsed)
        except Exception as exc:
            msg = f"v{reader.version} cannot read v{writer.version} data: {exc}"
            if msg not in problems:
                problems.append(msg)
    return problems


def check_rule(old: AvroSchema, new: AvroSchema, rule: str) -> list[str]:
    """Problems with ``old`` → ``new`` under ``rule`` (BACKWARD, FORWARD, FULL, NONE)."""
    if rule not in RULES:
        raise ValueError(f"unknown compatibility rule {rule!r}; use one of {RULES}")
    problems: list[str] = []
    if rule in ("BACKWARD", "FULL"):
        problems += [f"{new.name} {rule} (new reads old): {p}"
                     for p in incompatibilities(old, new)]
    if rule in ("FORWARD", "FULL"):
        problems += [f"{new.name} {rule} (old reads new): {p}"
                     for p in incompatibilities(new, old)]
    return problems


def store_problems(store: SchemaStore, rules: dict[str, str]) -> list[str]:
    """Every declared-rule violation between consecutive versions in ``store``."""
    problems = [f"{n}: no compatibility rule declared" for n in store.names() if n not in rules]
    for name in store.names():
        versions = store.versions(name)
        for old, new in itertools.pairwise(versions):
            problems += check_rule(old, new, rules.get(name, "BACKWARD"))
    return problems
