"""What running controls gives: each control's result, the network's verdict,
a failed example; and the outcomes, least to most severe."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any

import orjson

__all__ = ["OUTCOMES", "ControlError", "ControlResult", "ExampleFailure", "Verdict",
           "most_severe"]

OUTCOMES = ("ALLOW", "STEP_UP", "MANUAL_REVIEW", "DENY")  # least to most severe
_SEVERITY = {o: i for i, o in enumerate(OUTCOMES)}


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
    stage: str = "DETECTOR"
    signal: str | None = None  # a detector's finding; None: nothing seen
    inputs: Mapping[str, Any] = field(default_factory=dict)  # what the control was given
    inputs_json: str | None = None  # ... as JSON (None: never made, the run ended first)
    # True: not called; an earlier call's result for exactly these inputs (a control is
    # a pure function of them: ControlSet.remember), its duration that call's
    remembered: bool = False

    @property
    def fired(self) -> bool:
        return self.signal is not None or self.outcome is not None

    @classmethod
    def of(cls, values: Iterable[Any]) -> ControlResult:
        """The result of its field values in order (what :meth:`values` gives), at
        half the cost of the frozen ``__init__``: results are made by the thousand."""
        result = object.__new__(cls)
        result.__dict__.update(zip(_RESULT_FIELDS, values, strict=True))
        return result

    def as_remembered(self) -> ControlResult:
        """This result, marked as given again without a call (its duration the call's)."""
        again = object.__new__(ControlResult)
        again.__dict__.update(self.__dict__, remembered=True)  # fields first, in order
        return again

    def values(self) -> tuple[Any, ...]:
        """Its field values in order: it pickles as a third of itself."""
        return tuple(islice(self.__dict__.values(), len(_RESULT_FIELDS)))  # fields come first

    @functools.cached_property
    def output_json(self) -> str | None:
        """What it gave, as its execution record carries it (None for a failure): made
        once for a result given again and again (a remembering set's)."""
        if self.error:
            return None
        return orjson.dumps({"signal": self.signal, "score": self.score, "reason": self.reason}
                            if self.stage == "DETECTOR" else
                            {"outcome": self.outcome, "actions": list(self.actions),
                             "reason": self.reason}).decode()


_RESULT_FIELDS = tuple(f.name for f in fields(ControlResult))


@dataclass(frozen=True)
class Verdict:
    """The network's answer for one event, with every control's result in run order."""

    outcome: str
    actions: tuple[str, ...]
    reason: str
    results: list[ControlResult]


@dataclass(frozen=True)
class ExampleFailure:
    control_id: str
    index: int
    expected: str | None
    got: str | None
    error: str | None


def most_severe(proposals: Iterable[ControlResult]) -> tuple[str, tuple[str, ...], str]:
    """The fallback selection: the most severe outcome, every proposed action."""
    chosen = list(proposals)
    outcome = max((p.outcome for p in chosen if p.outcome), key=_SEVERITY.__getitem__,
                  default="ALLOW")
    actions: list[str] = []
    for p in chosen:
        actions.extend(a for a in p.actions if a not in actions)
    return outcome, tuple(actions), "; ".join(p.reason for p in chosen if p.reason)
