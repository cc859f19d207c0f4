"""Topics as Parquet, for analysts: DuckDB, pandas or Spark query the files as
they are.

One folder per topic, one folder per day (UTC, of the record's timestamp) in
Hive style, one file per partition and run::

    export/decisions/date=2026-12-03/p0-o1200.parquet

Every file has the record's Kafka coordinates (``_topic``, ``_partition``,
``_offset``, ``_timestamp``) and its fields. Avro timestamps become Parquet
timestamps (UTC), dates become dates; records and lists of records stay nested
(``unnest(rule_hits)`` in DuckDB); maps, whose values differ in type from row to
row (a decision's features), are JSON text (``json_extract``). pyarrow writes the
files.

>>> rows = [{"event_time": 0, "features": {"a": 1, "b": "x"}, "outcome": "DENY"}]
>>> table = to_table(rows, {"event_time": "timestamp"})
>>> table.column("features").to_pylist(), str(table.schema.field("event_time").type)
(['{"a":1,"b":"x"}'], 'timestamp[ms, tz=UTC]')
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Exported", "logical_types", "to_table", "write_partitioned"]

COORDINATES = ("_topic", "_partition", "_offset", "_timestamp")


def logical_types(schema_source: Mapping[str, Any]) -> dict[str, str]:
    """Top-level fields of an Avro record schema that are timestamps or dates:
    field → ``timestamp`` or ``date``."""
    out = {}
    for f in schema_source.get("fields", ()):
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for t in types:
            if isinstance(t, dict) and t.get("logicalType") in ("timestamp-millis", "date"):
                out[f["name"]] = "timestamp" if t["logicalType"] == "timestamp-millis" \
                    else "date"
    return out


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, default=str).decode()


def _column(name: str, values: list[Any], kind: str | None) -> pa.Array:
    if kind == "timestamp":
        return pa.array(values, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    if kind == "date":
        return pa.array(values, pa.int32()).cast(pa.date32())
    if any(isinstance(v, dict) for v in values):  # a map (or a nested record): JSON
        return pa.array([_json(v) for v in values], pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([_json(v) for v in values], pa.string())


def to_table(rows: list[dict[str, Any]], kinds: Mapping[str, str] | None = None) -> pa.Table:
    """Rows (decoded records, with the same fields) as an Arrow table; ``kinds``:
    field → ``timestamp`` or ``date`` (:func:`logical_types`). A field whose values
    will not make one Arrow type, and every map, is JSON text."""
    kinds = kinds or {}
    names: list[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return pa.table({n: _column(n, [r.get(n) for r in rows], kinds.get(n)) for n in names})


class Exported:
    """What one export wrote: files and rows per topic."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.rows: dict[str, int] = defaultdict(int)


def write_partitioned(out: Path, key: str, rows: Iterable[dict[str, Any]],
                      kinds: Mapping[str, str], done: Exported, run: str) -> None:
    """Write ``rows`` (with the coordinates of :data:`COORDINATES`) under
    ``out/key/date=YYYY-MM-DD/`` as one file per partition, day and ``run``."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        day = dt.datetime.fromtimestamp(r["_timestamp"] / 1000, dt.UTC).date().isoformat()
        groups[(day, r["_partition"])].append(r)
    for (day, partition), group in sorted(groups.items()):
        folder = out / key / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"p{partition}-o{group[0]['_offset']}-{run}.parquet"
        pq.write_table(to_table(group, {**kinds, "_timestamp": "timestamp"}), path,
                       compression="zstd")
        done.files.append(path)
        done.rows[key] += len(group)
