"""The audit trail's hash chain: each record's ``hash`` is the sha256 of its other
fields (canonical JSON), ``prev_hash`` included, and ``prev_hash`` is the hash of
the record it follows. An edited record no longer matches its own hash; a record
taken out leaves its follower pointing at a hash that is not there. Writers that
can read the trail's tail (the command line) chain to it; a worker's records
(control reloads) carry their own hash and no ``prev_hash``.

>>> a = sealed({"audit_id": "1", "action": "alerts.pause", "reason": "spike"}, "")
>>> b = sealed({"audit_id": "2", "action": "alerts.resume", "reason": "ok"}, a["hash"])
>>> verify([a, b]).problems
[]
>>> verify([a, {**b, "reason": "nothing to see"}]).problems
['record 1 (2): edited: its hash does not match its fields']
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Verified", "digest", "sealed", "verify"]


def digest(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def sealed(record: Mapping[str, Any], prev_hash: str) -> dict[str, Any]:
    """``record`` chained to ``prev_hash``, with its hash."""
    out = {**record, "prev_hash": prev_hash}
    out["hash"] = digest(out)
    return out


@dataclass
class Verified:
    records: int = 0
    chained: int = 0  # records that follow another
    unsealed: int = 0  # records without a hash (written before the chain existed)
    problems: list[str] = field(default_factory=list)


def verify(records: Iterable[Mapping[str, Any]]) -> Verified:
    """Check every record's hash, and that each ``prev_hash`` is the hash of a record
    before it."""
    v = Verified()
    seen: set[str] = set()
    for i, rec in enumerate(records):
        v.records += 1
        name = f"record {i} ({rec.get('audit_id', '?')})"
        if not rec.get("hash"):
            v.unsealed += 1
            continue
        if digest(rec) != rec["hash"]:
            v.problems.append(f"{name}: edited: its hash does not match its fields")
        prev = rec.get("prev_hash") or ""
        if prev:
            v.chained += 1
            if prev not in seen:
                v.problems.append(f"{name}: follows {prev[:12]}, which is not before it "
                                  "(a record removed or reordered)")
        seen.add(rec["hash"])
    return v
