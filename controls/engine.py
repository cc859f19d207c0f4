"""Starlark controls: compiled and frozen once at load, called per event.

A control is a ``.star`` file defining ``evaluate(event, features)`` that returns
``None`` (no opinion) or ``{"outcome", "reason", "actions", "score"}``. Errors are
values: a failing control is recorded and the others still run.

>>> cs = ControlSet.from_dir(LIBRARY)            # doctest: +SKIP
>>> cs.evaluate({"amount_minor": 1}, {...})      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import starlark as sl

__all__ = ["LIBRARY", "OUTCOMES", "Control", "ControlError", "ControlResult", "ControlSet"]

OUTCOMES = ("ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY")  # least to most severe
LIBRARY = Path(str(resources.files("tripwire.controls").joinpath("library")))


class ControlError(ValueError):
    """A control could not be compiled or loaded."""


@dataclass(frozen=True)
class ControlResult:
    control_id: str
    version: str
    outcome: str | None
    reason: str = ""
    actions: tuple[str, ...] = ()
    score: float = 0.0
    error: str | None = None
    duration_us: int = 0


@dataclass(frozen=True)
class Control:
    control_id: str
    version: str  # content hash of the source
    source: str
    module: Any = field(repr=False)
    applies_to: frozenset[str] = frozenset()  # event type short names; empty: all

    @classmethod
    def compile(cls, control_id: str, source: str) -> Control:
        try:
            ast = sl.parse(f"{control_id}.star", source)
            module = sl.Module()
            sl.eval(module, ast, sl.Globals.standard())
        except Exception as exc:
            raise ControlError(f"{control_id}: {exc}") from exc
        if not _defines_function(module, "evaluate"):
            raise ControlError(f"{control_id}: defines no function evaluate(event, features)")
        applies = module["APPLIES_TO"]  # optional global: ["CardPayment", ...]
        if applies is not None and (not isinstance(applies, list)
                                    or not all(isinstance(a, str) for a in applies)):
            raise ControlError(f"{control_id}: APPLIES_TO must be a list of event type names")
        frozen = module.freeze()
        version = hashlib.sha256(source.encode()).hexdigest()[:12]
        return cls(control_id, version, source, frozen, frozenset(applies or ()))

    def applies(self, event_type: str) -> bool:
        return not self.applies_to or event_type in self.applies_to

    def run(self, event: Mapping[str, Any], features: Mapping[str, Any]) -> ControlResult:
        start = time.perf_counter_ns()
        try:
            out = self.module.call("evaluate", event, features)
            result = self._result(out)
        except Exception as exc:
            result = ControlResult(self.control_id, self.version, None,
                                   error=f"{type(exc).__name__}: {exc}")
        dur = (time.perf_counter_ns() - start) // 1000
        return ControlResult(**{**result.__dict__, "duration_us": dur})

    def _result(self, out: Any) -> ControlResult:
        if out is None:
            return ControlResult(self.control_id, self.version, None)
        if not isinstance(out, dict) or out.get("outcome") not in OUTCOMES:
            raise ControlError(f"returned {out!r}; expected None or a dict with an outcome "
                               f"in {OUTCOMES}")
        return ControlResult(self.control_id, self.version, out["outcome"],
                             str(out.get("reason", "")), tuple(out.get("actions", ())),
                             float(out.get("score", 1.0)))


def _defines_function(module: Any, name: str) -> bool:
    # starlark-pyo3 returns None for a missing name and refuses to convert a function.
    try:
        value = module[name]
    except sl.StarlarkError as exc:
        return "type `function`" in str(exc)
    return value is not None and callable(value)


class ControlSet:
    """The loaded controls, run in a stable order."""

    def __init__(self, controls: Iterable[Control]) -> None:
        self.controls = sorted(controls, key=lambda c: c.control_id)
        self._by_type: dict[str, list[Control]] = {}

    @classmethod
    def from_dir(cls, directory: Path = LIBRARY) -> ControlSet:
        paths = sorted(Path(directory).glob("*.star"))
        if not paths:
            raise ControlError(f"no .star controls in {directory}")
        return cls(Control.compile(p.stem, p.read_text()) for p in paths)

    def versions(self) -> dict[str, str]:
        return {c.control_id: c.version for c in self.controls}

    def for_type(self, event_type: str) -> list[Control]:
        """The controls that run on events of ``event_type`` (short name)."""
        chosen = self._by_type.get(event_type)
        if chosen is None:
            chosen = self._by_type[event_type] = [c for c in self.controls
                                                  if c.applies(event_type)]
        return chosen

    def evaluate(self, event_type: str, event: Mapping[str, Any],
                 features: Mapping[str, Any]) -> list[ControlResult]:
        return [c.run(event, features) for c in self.for_type(event_type)]
