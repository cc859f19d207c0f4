"""Wire forms: how a record of one schema is laid out on the wire when that
differs from the record tripwire's code handles.

A decision's features are a map of a five-way union (null, boolean, long,
double, string), and fastavro resolves each value's branch one at a time: half
of a decision's 50 µs of encoding (docs/performance.md, 2026-12-04). Its
provenance and control versions, 45 string entries, are the same on nearly every
decision. From ``tripwire.decisions.Decision`` v5 a decision is written with its
feature values grouped by type (one typed map each, and the names of those
without a value) and those two maps as JSON text; the maps themselves are
written empty. Read back, any version gives the same record: ``features``,
``feature_provenance`` and ``control_versions`` filled from whichever form the
writer used, and no field of the wire form. The codec applies both directions
(:class:`~tripwire.schemas.codec.AvroCodec`), so every reader of decisions —
the applier, ``tail``, ``export``, ``explain``, the dashboard, a repeat's
recall — sees the maps, as before.

>>> d = {"features": {"n": 2, "ok": True, "avg": 1.5, "cc": "GB", "none": None},
...      "feature_provenance": {"n": "card"}, "control_versions": {"c": "1"}}
>>> w = DECISION.pack(d)
>>> w["features"], w["feature_longs"], w["feature_nulls"], w["control_versions_json"]
({}, {'n': 2}, ['none'], '{"c":"1"}')
>>> DECISION.unpack(w) == d
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["DECISION", "WIRE_FORMS", "DecisionForm"]

# a feature value's Python type → the v5 field holding values of that type
_GROUPS = {int: "feature_longs", bool: "feature_flags", float: "feature_doubles",
           str: "feature_strings"}
_LONGS = _GROUPS[int]
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_NULLS = "feature_nulls"
_AS_JSON = (("feature_provenance", "feature_provenance_json"),
            ("control_versions", "control_versions_json"))


@dataclass(frozen=True)
class DecisionForm:
    """The wire form of ``tripwire.decisions.Decision`` from v5 on."""

    schema_name: str = "tripwire.decisions.Decision"
    marker: str = "feature_longs"  # a writer schema with this field writes the form

    def pack(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record to write. A feature value of any other type (or an integer
        beyond a long), or a map value that is not a string, leaves that map as it
        is: fastavro then refuses it, or writes it, as it did before v5."""
        out = dict(record)
        groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS.values()}
        nulls: list[str] = []
        for name, value in record["features"].items():
            group = _GROUPS.get(type(value))
            if group is _LONGS and not _LONG_MIN <= value <= _LONG_MAX:
                break  # the union writes it as a double, as v4 did
            if group is not None:
                groups[group][name] = value
            elif value is None:
                nulls.append(name)
            else:
                break
        else:
            out.update(groups)
            out[_NULLS] = nulls
            out["features"] = {}
        for plain, text in _AS_JSON:
            values = record[plain]
            if all(type(v) is str for v in values.values()):
                out[text] = orjson.dumps(values).decode() if values else ""
                out[plain] = {}
        return out

    def unpack(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record read (in place): the maps filled, the wire form's fields gone."""
        features = record["features"]
        for group in _GROUPS.values():
            features.update(record.pop(group, ()))
        for name in record.pop(_NULLS, ()):
            features[name] = None
        for plain, text in _AS_JSON:
            value = record.pop(text, "")
            if value:
                record[plain] = orjson.loads(value)
        return record


DECISION = DecisionForm()
WIRE_FORMS: dict[str, DecisionForm] = {DECISION.schema_name: DECISION}
