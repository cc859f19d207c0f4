"""The control plane, as a pure function: a release in, the new control set and
an audit record out.

A release (schema ``tripwire.ops.ControlRelease``) asks for one change: a new
source for a control, its retirement, an emergency stop or a resume. A new
source is compiled and its examples run *before* it can become active, and the
whole network must still load (one selection control, no duplicate ids); a
broken release is refused with the reason and the running version stays. Every
release, applied or refused, gives one audit record: who, when, what, why, the
diff of the source and the mode.

>>> plane = ControlPlane(ControlSet.from_dir())                      # doctest: +SKIP
>>> audit = plane.apply(release, now_ms=..., worker="decide-1")     # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import hashlib
import re
from typing import Any, Protocol

import orjson

from tripwire.controls.engine import Control, ControlSet
from tripwire.controls.results import ControlError

__all__ = ["AUDIT_SCHEMA", "KINDS", "RELEASE_SCHEMA", "ControlPlane", "ReleaseSource", "release",
           "target_error"]

RELEASE_SCHEMA = "tripwire.ops.ControlRelease"
AUDIT_SCHEMA = "tripwire.ops.AuditRecord"
KINDS = ("RELEASE", "RETIRE", "STOP", "RESUME")
_TARGET = re.compile(r"tier:[0-2]|[A-Za-z0-9_.-]{1,128}")


def target_error(target: str) -> str | None:
    """Why ``target`` cannot be stopped or resumed (None: it can be): a control id
    or ``tier:0``, ``tier:1``, ``tier:2``."""
    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        return (f"{str(target)[:80]!r} is not a control id (letters, digits, _ . -) "
                "nor tier:0, tier:1 or tier:2")
    return None


def release(control_id: str, source: str | None, author: str, reason: str, at_ms: int,
            kind: str = "RELEASE") -> dict[str, Any]:
    """A ControlRelease record."""
    return {"control_id": control_id, "kind": kind, "source": source, "author": author,
            "reason": reason, "released_at": at_ms}


class ReleaseSource(Protocol):
    """Where releases come from (the controls topic, a folder): each call gives the
    releases read since the last."""

    def poll(self) -> list[dict[str, Any]]: ...


class ControlPlane:
    """The running control set of one worker and the changes made to it."""

    def __init__(self, controls: ControlSet) -> None:
        self.controls = controls

    def apply(self, rel: dict[str, Any], now_ms: int, worker: str) -> dict[str, Any]:
        """Apply one release; the audit record (a dict of the AuditRecord schema).
        ``self.controls`` is replaced only when the release is accepted."""
        kind, cid = rel["kind"], rel["control_id"]
        details: dict[str, Any] = {"worker": worker, "released_at": rel["released_at"]}
        old = self.controls.by_id().get(cid)
        try:
            if kind == "RELEASE":
                action = self._release(cid, rel.get("source"), old, details)
            elif kind == "RETIRE":
                if old is None:
                    raise ControlError(f"{cid}: no such control to retire")
                self.controls = self._rebuild([c for c in self.controls.controls
                                               if c.control_id != cid])
                details["version_from"] = old.version
                action = "control.retire"
            elif kind in ("STOP", "RESUME"):
                action = self._switch(kind, cid, details)
            elif kind == "UNREADABLE":  # tripwire.connectors.control_sources.TopicSource
                raise ControlError(f"unreadable record on the controls topic: {rel['reason']}")
            else:
                raise ControlError(f"unknown release kind {kind!r}")
        except Exception as exc:
            action, details["error"] = "control.refuse", (
                str(exc) if isinstance(exc, ControlError) else f"{type(exc).__name__}: {exc}")
            details["kind"] = kind
            if old is not None:
                details["running_version"] = old.version
        digest = hashlib.sha256(orjson.dumps([worker, cid, kind, rel["released_at"],
                                              rel.get("source")])).hexdigest()[:32]
        return {"audit_id": digest, "at": now_ms, "actor": rel["author"], "action": action,
                "subject": cid, "reason": rel["reason"],
                "details_json": orjson.dumps(details).decode()}

    def _release(self, cid: str, source: str | None, old: Control | None,
                 details: dict[str, Any]) -> str:
        if not source:
            raise ControlError(f"{cid}: a release needs a source")
        new = Control.checked(cid, source)
        if old is not None and old.version == new.version:
            details["version_to"] = new.version
            return "control.unchanged"
        self.controls = self._rebuild([c for c in self.controls.controls
                                       if c.control_id != cid] + [new])
        before = old.version if old else "none"
        diff = difflib.unified_diff((old.source if old else "").splitlines(keepends=True),
                                    source.splitlines(keepends=True), f"{cid}@{before}",
                                    f"{cid}@{new.version}")
        details.update(version_from=old.version if old else None, version_to=new.version,
                       stage=new.stage, mode=new.mode, tier=new.tier, diff="".join(diff))
        return "control.activate"

    def _switch(self, kind: str, target: str, details: dict[str, Any]) -> str:
        bad = target_error(target)
        if bad is not None:
            raise ControlError(bad)
        tier = int(target.split(":", 1)[1]) if target.startswith("tier:") else None
        ids = [] if tier is not None else [target]
        if tier is None and target not in self.controls.by_id():
            raise ControlError(f"{target}: no such control")
        if kind == "STOP":
            details["stopped"] = self.controls.emergency_stop(ids, tier)
            return "control.stop"
        chosen = [c.control_id for c in self.controls.controls
                  if c.control_id in ids or (tier is not None and c.tier == tier)]
        self.controls.resume(chosen)
        details["resumed"] = chosen
        return "control.resume"

    def _rebuild(self, controls: list[Control]) -> ControlSet:
        # refuses a network without one selection control; remembers as many answers
        # as the running set, none of them yet (a new version answers afresh)
        fresh = ControlSet(controls, self.controls.remember)
        fresh.emergency_stop([c for c in self.controls.stopped if c in fresh.by_id()])
        return fresh
