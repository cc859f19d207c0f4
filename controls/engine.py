"""Starlark controls: compiled and frozen once at load, called per event with bounds.

A control is a ``.star`` file defining ``evaluate(event, features)`` that returns
``None`` (no opinion) or ``{"outcome", "reason", "actions", "score"}``. Optional
globals: ``APPLIES_TO`` (event type names), ``MODE`` (``ACTIVE``; ``SHADOW``:
runs and is logged, never changes an outcome; ``CANARY`` with ``CANARY_PERCENT``:
decides for a deterministic share of accounts), ``ON_ERROR`` (the outcome when the
control fails: ``"IGNORE"`` by default, or one of the outcomes — fail safe) and
``EXAMPLES`` (inputs with their expected outcome, run by ``tripwire controls test``
and before a control is accepted).

Each call has a time budget (checked about every thousand Starlark steps) and a
call-depth limit. Errors are values: a failing control is recorded, the others
still run, and its ``ON_ERROR`` outcome applies. Starlark has no memory limit:
one huge allocation is not stopped (run controls in worker processes with an
address-space limit where that matters).

>>> cs = ControlSet.from_dir(LIBRARY)                              # doctest: +SKIP
>>> cs.evaluate("CardPayment", {"amount_minor": 1}, {...})         # doctest: +SKIP
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

__all__ = ["LIBRARY", "MODES", "OUTCOMES", "Control", "ControlError", "ControlResult", "ControlSet",
           "ExampleFailure"]

OUTCOMES = ("ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY")  # least to most severe
MODES = ("ACTIVE", "SHADOW", "CANARY")
LIBRARY = Path(str(resources.files("tripwire.controls").joinpath("library")))
DEFAULT_BUDGET_MS = 5.0
MAX_CALL_DEPTH = 64


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
    mode: str = "ACTIVE"
    applied: bool = True  # False: shadow, or canary outside its share; never changes outcome


@dataclass(frozen=True)
class ExampleFailure:
    control_id: str
    index: int
    expected: str | None
    got: str | None
    error: str | None


class _Budget:
    """One EvalOptions shared by every call; the deadline is set before each."""

    def __init__(self, budget_ms: float) -> None:
        self.budget_ns = int(budget_ms * 1e6)
        self.deadline = 0
        self.options = sl.EvalOptions(check_cancelled=self._expired,
                                      max_callstack_size=MAX_CALL_DEPTH)

    def _expired(self) -> bool:
        return time.perf_counter_ns() > self.deadline


@dataclass(frozen=True)
class Control:
    control_id: str
    version: str  # content hash of the source
    source: str
    module: Any = field(repr=False)
    applies_to: frozenset[str] = frozenset()  # event type short names; empty: all
    on_error: str | None = None  # outcome when the control fails; None: no opinion
    examples: tuple[dict[str, Any], ...] = ()
    budget: _Budget = field(default_factory=lambda: _Budget(DEFAULT_BUDGET_MS), repr=False)
    mode: str = "ACTIVE"  # ACTIVE, SHADOW (logged, never decides) or CANARY
    canary_percent: int = 0  # CANARY: the share of entities it decides for

    @classmethod
    def compile(cls, control_id: str, source: str, budget_ms: float = DEFAULT_BUDGET_MS) \
            -> Control:
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
        on_error = module["ON_ERROR"] or "IGNORE"
        if on_error != "IGNORE" and on_error not in OUTCOMES:
            raise ControlError(f"{control_id}: ON_ERROR must be IGNORE or one of {OUTCOMES}")
        examples = module["EXAMPLES"] or []
        if not isinstance(examples, list) or not all(
                isinstance(e, dict) and {"event", "features"} <= set(e) for e in examples):
            raise ControlError(f"{control_id}: EXAMPLES must be a list of dicts with event, "
                               "features and outcome")
        mode = module["MODE"] or "ACTIVE"
        percent = module["CANARY_PERCENT"]
        if mode not in MODES:
            raise ControlError(f"{control_id}: MODE must be one of {MODES}")
        if mode == "CANARY" and not (isinstance(percent, int) and 0 < percent < 100):
            raise ControlError(f"{control_id}: a CANARY needs CANARY_PERCENT between 1 and 99")
        frozen = module.freeze()
        version = hashlib.sha256(source.encode()).hexdigest()[:12]
        return cls(control_id, version, source, frozen, frozenset(applies or ()),
                   None if on_error == "IGNORE" else on_error, tuple(examples),
                   _Budget(budget_ms), mode, percent if isinstance(percent, int) else 0)

    def decides_for(self, entity_key: str) -> bool:
        """Whether this control's result counts for ``entity_key`` (deterministic)."""
        if self.mode == "ACTIVE":
            return True
        if self.mode == "SHADOW":
            return False
        bucket = int(hashlib.sha256(f"{self.control_id}|{entity_key}".encode())
                     .hexdigest()[:8], 16) % 100
        return bucket < self.canary_percent

    def applies(self, event_type: str) -> bool:
        return not self.applies_to or event_type in self.applies_to

    def run(self, event: Mapping[str, Any], features: Mapping[str, Any],
            entity_key: str = "") -> ControlResult:
        """One bounded call; errors become the result's ``error`` and the fail policy.
        ``entity_key`` decides whether a canary's result counts."""
        start = time.perf_counter_ns()
        self.budget.deadline = start + self.budget.budget_ns
        error = None
        try:
            out = self.module.call_with(self.budget.options, "evaluate", event, features).value
            outcome, reason, actions, score = self._parse(out)
        except Exception as exc:
            error = str(exc)
            if "cancelled" in error:
                error = f"exceeded its {self.budget.budget_ns / 1e6:g} ms budget"
            elif "call stack" in error.lower() or "recursion" in error.lower():
                error = f"exceeded the call depth limit of {MAX_CALL_DEPTH}"
            else:
                error = _summary(exc)
            outcome, actions, score = self.on_error, (), 0.0
            reason = (f"control failed ({error}); fail policy {self.on_error}"
                      if self.on_error else "")
        return ControlResult(self.control_id, self.version, outcome, reason, actions, score,
                             error, (time.perf_counter_ns() - start) // 1000, self.mode,
                             self.mode == "ACTIVE" or self.decides_for(entity_key))

    def _parse(self, out: Any) -> tuple[str | None, str, tuple[str, ...], float]:
        if out is None:
            return None, "", (), 0.0
        if not isinstance(out, dict) or out.get("outcome") not in OUTCOMES:
            raise ControlError(f"returned {out!r}; expected None or a dict with an outcome "
                               f"in {OUTCOMES}")
        return (out["outcome"], str(out.get("reason", "")), tuple(out.get("actions", ())),
                float(out.get("score", 1.0)))

    def check_examples(self) -> list[ExampleFailure]:
        """Run the control's own examples; the failures (empty: all pass)."""
        failures = []
        for i, ex in enumerate(self.examples):
            got = self.run(ex["event"], ex["features"])
            want = ex.get("outcome")
            if got.error is not None or got.outcome != want:
                failures.append(ExampleFailure(self.control_id, i, want, got.outcome,
                                               got.error))
        return failures


def _summary(exc: Exception) -> str:
    """Starlark's ``error: ...`` line and its ``--> file:line:col``, else the last line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    what = next((ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")), None)
    where = next((ln[3:].strip() for ln in lines if ln.startswith("-->")), None)
    if what is None:
        return f"{type(exc).__name__}: {(lines or [''])[-1][:300]}"
    return f"{what} at {where}" if where else what


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
    def from_dir(cls, directory: Path = LIBRARY, budget_ms: float = DEFAULT_BUDGET_MS) \
            -> ControlSet:
        paths = sorted(Path(directory).glob("*.star"))
        if not paths:
            raise ControlError(f"no .star controls in {directory}")
        return cls(Control.compile(p.stem, p.read_text(), budget_ms) for p in paths)

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
                 features: Mapping[str, Any], entity_key: str = "") -> list[ControlResult]:
        """Every control for the event type; shadow and out-of-canary results are
        returned with ``applied=False``."""
        return [c.run(event, features, entity_key) for c in self.for_type(event_type)]

    def check_examples(self) -> list[ExampleFailure]:
        return [f for c in self.controls for f in c.check_examples()]
