"""Starlark controls run as a network, compiled and frozen once at load, called
per event with bounds.

Three kinds of control, told apart by the one function a ``.star`` file defines:

* **detectors** — ``detect(event, features)`` → ``None`` (nothing seen) or
  ``{"signal": name, "score": 0..1, "reason": text}``: is this suspicious, how,
  how sure;
* **action controls** — ``act(event, features, detections)`` → ``None`` or
  ``{"outcome", "actions", "reason"}``: a proposal from the detectors' findings
  (``detections``: detector id → its signal, score and reason; only detectors
  that fired and count for this event);
* **one selection control** — ``select(event, proposals)`` → the final
  ``{"outcome", "actions", "reason"}`` from the proposals (each with its
  ``control_id``). With no proposal at all the outcome is ALLOW and it is not
  called.

Per event (:meth:`ControlSet.evaluate`): detectors, then action controls (only
if a detector fired or a control failed), then selection. Optional globals:
``APPLIES_TO`` (event type names), ``MODE`` (``ACTIVE``; ``SHADOW``: runs and is
logged, never changes an outcome; ``CANARY`` with ``CANARY_PERCENT``: counts for
a deterministic share of accounts), ``TIER`` (0: inline and fast, 1 ms budget;
1: inline on precomputed features, the default; 2: asynchronous, never part of
the decision, stoppable with :meth:`ControlSet.emergency_stop`), ``ON_ERROR``
(``"IGNORE"`` by default, or the outcome a failure proposes — fail safe) and
``WHEN`` (event field → value or list of values: the control runs only on
events that match, e.g. ``{"kind": "TOPUP"}``; others cost nothing and leave no
execution record), ``TYPOLOGIES`` (detectors: signal → the typology it names,
for backtests per typology; a signal left out, such as a "possible" one, names
none) and ``EXAMPLES`` (inputs and the expected ``signal`` or
``outcome``, run by ``tripwire controls test`` and before a control is accepted).

A control has Starlark's standard globals and ``json`` (``json.encode``,
``json.decode``). It sees the event fields and features it names as string
literals in its source (``features.get("card_declines_10m")``): that is all it
is given, and it is what its execution record shows as its inputs. Each call has
a time budget (checked about every thousand Starlark steps) and a call-depth
limit. Errors are values: a failing control is recorded, the others still run,
and its ``ON_ERROR`` outcome is proposed. Starlark has no memory limit: one huge
allocation is not stopped (run controls in worker processes with an
address-space limit where that matters).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import time
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import starlark as sl

from tripwire.controls.results import (
    OUTCOMES,
    ControlError,
    ControlResult,
    ExampleFailure,
    Verdict,
    most_severe,
)

__all__ = ["CONTROL_STAGES", "LIBRARY", "MODES", "REMEMBER", "Control", "ControlSet", "load_dir",
           "pick"]

MODES = ("ACTIVE", "SHADOW", "CANARY")
CONTROL_STAGES = ("DETECTOR", "ACTION", "SELECTION")  # the order they run in
_FUNCTIONS = {"detect": "DETECTOR", "act": "ACTION", "select": "SELECTION"}
_FUNCTION_OF = {stage: fn for fn, stage in _FUNCTIONS.items()}
_SIGNATURES = "detect(event, features), act(event, features, detections) or " \
              "select(event, proposals)"
LIBRARY = Path(str(resources.files("tripwire.controls").joinpath("library")))
DEFAULT_BUDGET_MS = 5.0
TIER0_BUDGET_MS = 1.0
MAX_CALL_DEPTH = 64
# a call that returned after this long (and this many times its budget) failed all
# the same: far past any pause of the machine's, so replays agree
SLOW_CALL_NS = 100_000_000
SLOW_FACTOR = 50
# The engine calls a control through an entry point appended to its source (the
# version and every line number stay the source's): its inputs go in as one JSON
# object — the one its execution record shows — and the result comes back as one
# JSON string. starlark-pyo3 converts each argument and result through Python's
# json module; orjson here and Starlark's own json there cost about half as much
# per call (5-9 µs less on the shipped detectors; docs/performance.md, 2026-11-29
# session 4).
_ENTRY = "tripwire_engine_entry"
# one control's results by the JSON of their inputs (ControlSet.remember)
Memo = dict[str, ControlResult]
# answers a live worker keeps per control (TRIPWIRE_CONTROLS_REMEMBER): most calls
# repeat a few inputs (a country, a card's small count): 72 % of the bench's
# traffic's, 256 answers each already holding nearly all of them; ~1.3 KB each
REMEMBER = 1024
_PARAMETERS = {"DETECTOR": ("event", "features"), "ACTION": ("event", "features", "detections"),
               "SELECTION": ("event", "proposals")}
_GLOBALS = sl.Globals.extended_by([sl.LibraryExtension.Json])  # standard, and json


class _Budget:
    """One EvalOptions shared by every call; the deadline is set before each."""

    def __init__(self, budget_ms: float) -> None:
        self.budget_ns = int(budget_ms * 1e6)
        # a call that returns after this long failed all the same (Control.run)
        self.slow_ns = max(SLOW_CALL_NS, SLOW_FACTOR * self.budget_ns)
        self.deadline = 0
        self.options = sl.EvalOptions(check_cancelled=self._expired,
                                      max_callstack_size=MAX_CALL_DEPTH)

    def _expired(self) -> bool:
        return time.perf_counter_ns() > self.deadline


def literals(source: str) -> frozenset[str]:
    """The identifier-like string literals of a control: the names it can read."""
    names = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING:
                value = ast.literal_eval(tok.string)
                if isinstance(value, str) and value.isidentifier():
                    names.add(value)
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # Starlark that Python cannot tokenise: the compile error says more
    return frozenset(names)


def pick(values: Mapping[str, Any], names: frozenset[str],
         memo: dict[tuple[str, ...], tuple[str, ...]]) -> dict[str, Any]:
    """The entries of ``values`` named in ``names``; ``memo`` keeps, per shape of
    ``values``, which those are."""
    # in the order of ``values`` (the schema's): the same JSON in every process (a
    # frozenset's order follows string hashing, which differs between processes).
    # Which of an event type's fields (or features) are wanted is found once.
    keys = tuple(values)
    wanted = memo.get(keys)
    if wanted is None:
        if len(memo) >= 256:  # bounded, whatever the inputs
            memo.clear()
        wanted = memo[keys] = tuple(k for k in keys if k in names)
    return {k: values[k] for k in wanted}


@dataclass(frozen=True)
class Control:
    control_id: str
    version: str  # content hash of the source
    source: str
    module: Any = field(repr=False)
    applies_to: frozenset[str] = frozenset()  # event type short names; empty: all
    on_error: str | None = None  # outcome a failure proposes; None: no opinion
    examples: tuple[dict[str, Any], ...] = ()
    budget: _Budget = field(default_factory=lambda: _Budget(DEFAULT_BUDGET_MS), repr=False)
    mode: str = "ACTIVE"  # ACTIVE, SHADOW (logged, never decides) or CANARY
    canary_percent: int = 0  # CANARY: the share of entities it decides for
    stage: str = "DETECTOR"
    tier: int = 1
    reads: frozenset[str] = frozenset()  # event fields and features it may read
    when: tuple[tuple[str, frozenset[Any]], ...] = ()  # runs only on matching events
    typologies: tuple[tuple[str, str], ...] = ()  # signal → typology (detectors)

    @property
    def function(self) -> str:
        return _FUNCTION_OF[self.stage]

    @classmethod
    def compile(cls, control_id: str, source: str, budget_ms: float = DEFAULT_BUDGET_MS,
                reads: frozenset[str] | None = None) -> Control:
        """``reads``: the names the source can read (:func:`literals`), when found
        already (a controls' child is given its parent's: tokenising is a third of
        compiling)."""
        module = _evaluated(control_id, source)
        defined = [f for f in _FUNCTIONS if _defines_function(module, f)]
        if len(defined) != 1:
            raise ControlError(f"{control_id}: defines {'no' if not defined else 'more than one'}"
                               f" function of {_SIGNATURES}")
        if _defines_function(module, _ENTRY):
            raise ControlError(f"{control_id}: {_ENTRY} is the engine's name; use another")
        stage = _FUNCTIONS[defined[0]]
        applies = module["APPLIES_TO"]  # optional global: ["CardPayment", ...]
        if applies is not None and (not isinstance(applies, list)
                                    or not all(isinstance(a, str) for a in applies)):
            raise ControlError(f"{control_id}: APPLIES_TO must be a list of event type names")
        on_error = module["ON_ERROR"] or "IGNORE"
        if on_error != "IGNORE" and on_error not in OUTCOMES:
            raise ControlError(f"{control_id}: ON_ERROR must be IGNORE or one of {OUTCOMES}")
        examples = module["EXAMPLES"] or []
        needs = {"DETECTOR": {"event", "features"}, "ACTION": {"event", "features", "detections"},
                 "SELECTION": {"event", "proposals"}}[stage]
        if not isinstance(examples, list) or not all(
                isinstance(e, dict) and needs <= set(e) for e in examples):
            raise ControlError(f"{control_id}: EXAMPLES must be a list of dicts with "
                               f"{', '.join(sorted(needs))} and the expected "
                               f"{'signal' if stage == 'DETECTOR' else 'outcome'}")
        mode = module["MODE"] or "ACTIVE"
        percent = module["CANARY_PERCENT"]
        if mode not in MODES:
            raise ControlError(f"{control_id}: MODE must be one of {MODES}")
        if mode == "CANARY" and not (isinstance(percent, int) and 0 < percent < 100):
            raise ControlError(f"{control_id}: a CANARY needs CANARY_PERCENT between 1 and 99")
        tier = module["TIER"]
        tier = 1 if tier is None else tier
        if tier not in (0, 1, 2):
            raise ControlError(f"{control_id}: TIER must be 0, 1 or 2")
        if stage != "DETECTOR" and tier == 2:
            raise ControlError(f"{control_id}: only detectors can be TIER 2 (asynchronous)")
        if stage == "SELECTION" and mode != "ACTIVE":
            raise ControlError(f"{control_id}: the selection control must be ACTIVE")
        when = module["WHEN"] or {}
        if not isinstance(when, dict) or not all(isinstance(k, str) for k in when) or (
                stage == "SELECTION" and when):
            raise ControlError(f"{control_id}: WHEN must be a dict of event field to value or "
                               "list of values (not on the selection control)")
        conditions = tuple((k, frozenset(v if isinstance(v, list) else [v]))
                           for k, v in sorted(when.items()))
        typologies = module["TYPOLOGIES"] or {}
        if not isinstance(typologies, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v.isidentifier()
                for k, v in typologies.items()) or (stage != "DETECTOR" and typologies):
            raise ControlError(f"{control_id}: TYPOLOGIES must be a dict of signal to "
                               "typology name (on detectors only)")
        given = ", ".join(f'given["{p}"]' for p in _PARAMETERS[stage])
        frozen = _evaluated(control_id, f"{source}\n\ndef {_ENTRY}(inputs):\n"
                            f"    given = json.decode(inputs)\n"
                            f"    return json.encode({defined[0]}({given}))\n").freeze()
        version = hashlib.sha256(source.encode()).hexdigest()[:12]
        return cls(control_id, version, source, frozen, frozenset(applies or ()),
                   None if on_error == "IGNORE" else on_error, tuple(examples),
                   _Budget(TIER0_BUDGET_MS if tier == 0 else budget_ms), mode,
                   percent if isinstance(percent, int) else 0, stage, tier,
                   literals(source) if reads is None else reads,
                   conditions, tuple(sorted(typologies.items())))

    @classmethod
    def checked(cls, control_id: str, source: str, budget_ms: float = DEFAULT_BUDGET_MS) \
            -> Control:
        """What a release must pass before it may run: compiled, and its own examples
        run, first in a bounded child process (:mod:`tripwire.controls.isolate`: a
        hang, a crash or a huge allocation refuses it there), then compiled here.
        A ControlError says why (the first failing example)."""
        from tripwire.controls.isolate import check_apart

        check_apart([(control_id, source)], budget_ms)
        return cls.compile(control_id, source, budget_ms)

    @classmethod
    def checked_here(cls, control_id: str, source: str,
                     budget_ms: float = DEFAULT_BUDGET_MS) -> Control:
        """:meth:`checked` in this process (what the child runs)."""
        control = cls.compile(control_id, source, budget_ms)
        failures = control.check_examples()
        if failures:
            f = failures[0]
            raise ControlError(f"{control_id}: example {f.index}: expected {f.expected}, got "
                               f"{f.got}" + (f" ({f.error})" if f.error else "")
                               + f"; {len(failures)} example(s) fail")
        return control

    def decides_for(self, entity_key: str) -> bool:
        """Whether this control's result counts for ``entity_key`` (deterministic)."""
        if self.mode == "ACTIVE":
            return True
        if self.mode == "SHADOW":
            return False
        bucket = int(hashlib.sha256(f"{self.control_id}|{entity_key}".encode())
                     .hexdigest()[:8], 16) % 100
        return bucket < self.canary_percent

    @functools.cached_property
    def _picks(self) -> dict[tuple[str, ...], tuple[str, ...]]:
        """The names :meth:`inputs` takes from each shape of event (or features)."""
        return {}

    @functools.cached_property
    def _typology_of(self) -> dict[str, str]:
        return dict(self.typologies)

    def typology(self, signal: str | None) -> str | None:
        """The typology ``signal`` names (``TYPOLOGIES``), if any."""
        return self._typology_of.get(signal or "")

    def applies(self, event_type: str) -> bool:
        return not self.applies_to or event_type in self.applies_to

    def wanted(self, event: Mapping[str, Any]) -> bool:
        """Whether the event matches ``WHEN`` (always, without one)."""
        return all(event.get(key) in values for key, values in self.when)

    def inputs(self, event: Mapping[str, Any], features: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What this control is given: the fields and features it names, and the
        network's own input (detections or proposals)."""
        memo = self._picks
        given: dict[str, Any] = {"event": pick(event, self.reads, memo)}
        if features is not None:
            given["features"] = pick(features, self.reads, memo)
        if extra:
            given.update(extra)
        return given

    def run(self, event: Mapping[str, Any], features: Mapping[str, Any] | None = None,
            entity_key: str = "", memo: Memo | None = None, **extra: Any) -> ControlResult:
        """One bounded call with the inputs this control reads; errors become the
        result's ``error`` and the fail policy. ``entity_key`` decides whether a
        canary's result counts. ``extra``: ``detections`` or ``proposals``.
        ``memo``: this control's results by the JSON of their inputs (a control is
        a pure function of them); one found there is the result again without a
        call, marked ``remembered``, with the duration of the call that gave it
        (one object for every repeat, unless a canary decides by entity). Failures
        are never kept."""
        given = self.inputs(event, features, extra)
        start = time.perf_counter_ns()
        self.budget.deadline = start + self.budget.budget_ns
        error = signal = given_json = None
        try:
            given_json = orjson.dumps(given).decode()
            if memo is not None and (known := memo.get(given_json)) is not None:
                if self.mode != "CANARY":
                    return known
                return self._result(known.outcome, known.reason, known.actions, known.score,
                                    None, known.duration_us, entity_key, known.signal, given,
                                    given_json, remembered=True)
            out = self.module.call_with(self.budget.options, _ENTRY, given_json).value
            took = time.perf_counter_ns() - start
            if took > self.budget.slow_ns:
                # the budget is checked between Starlark steps: one builtin (a string
                # of 10**8 characters) can run long inside a single step
                raise ControlError(f"exceeded its {self.budget.budget_ns / 1e6:g} ms budget "
                                   f"inside one step ({took / 1e6:.0f} ms)")
            outcome, reason, actions, score, signal = self._parse(orjson.loads(out))
            result = self._result(outcome, reason, actions, score, None,
                                  (time.perf_counter_ns() - start) // 1000, entity_key,
                                  signal, given, given_json)
            if memo is not None:  # its repeats: the same, marked as not called
                memo[given_json] = result.as_remembered()
            return result
        except Exception as exc:
            error = str(exc)
            if isinstance(exc, ControlError) and error.startswith("exceeded its"):
                pass  # inside one step (above)
            elif "cancelled" in error:
                error = f"exceeded its {self.budget.budget_ns / 1e6:g} ms budget"
            elif "call stack" in error.lower() or "recursion" in error.lower():
                error = f"exceeded the call depth limit of {MAX_CALL_DEPTH}"
            else:
                error = _summary(exc)
            outcome, actions, score = self.on_error, (), 0.0
            reason = self.failure_reason(error)
        return self._result(outcome, reason, actions, score, error,
                            (time.perf_counter_ns() - start) // 1000, entity_key, signal,
                            given, given_json)

    def _result(self, outcome: str | None, reason: str, actions: tuple[str, ...], score: float,
                error: str | None, took_us: int, entity_key: str, signal: str | None,
                given: dict[str, Any], given_json: str | None,
                remembered: bool = False) -> ControlResult:
        return ControlResult.of((self.control_id, self.version, outcome, reason, actions,
                                 score, error, took_us, self.mode,
                                 self.mode == "ACTIVE" or self.decides_for(entity_key),
                                 self.stage, signal, given, given_json, remembered))

    def failure_reason(self, error: str) -> str:
        """Why a failed control proposes its fail-policy outcome (empty: IGNORE)."""
        return f"control failed ({error}); fail policy {self.on_error}" if self.on_error else ""

    def failed(self, error: str, event: Mapping[str, Any], features: Mapping[str, Any],
               entity_key: str = "") -> ControlResult:
        """The result of a run that ended outside the control (its process died)."""
        return ControlResult(self.control_id, self.version, self.on_error,
                             self.failure_reason(error), (), 0.0, error, 0, self.mode,
                             self.mode == "ACTIVE" or self.decides_for(entity_key), self.stage,
                             None, self.inputs(event, features))

    def _parse(self, out: Any) -> tuple[str | None, str, tuple[str, ...], float, str | None]:
        if self.stage == "DETECTOR":
            if out is None:
                return None, "", (), 0.0, None
            score = out.get("score") if isinstance(out, dict) else None
            if not isinstance(score, (int, float)) or not 0 <= score <= 1:
                raise ControlError(f"returned {out!r}; expected None or a dict with a score "
                                   "between 0 and 1")
            return (None, str(out.get("reason", "")), (), float(score),
                    str(out.get("signal") or self.control_id))
        if out is None and self.stage == "ACTION":
            return None, "", (), 0.0, None
        if not isinstance(out, dict) or out.get("outcome") not in OUTCOMES:
            raise ControlError(f"returned {out!r}; expected "
                               f"{'None or ' if self.stage == 'ACTION' else ''}a dict with "
                               f"an outcome in {OUTCOMES}")
        actions = out.get("actions", [])
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ControlError(f"returned actions {actions!r}; expected a list of names")
        return (out["outcome"], str(out.get("reason", "")), tuple(actions),
                float(out.get("score", 1.0)), None)

    def example_run(self, example: Mapping[str, Any]) -> ControlResult:
        extra = {"DETECTOR": {}, "ACTION": {"detections": example.get("detections", {})},
                 "SELECTION": {"proposals": example.get("proposals", [])}}[self.stage]
        return self.run(example["event"], None if self.stage == "SELECTION"
                        else example["features"], **extra)

    def check_examples(self) -> list[ExampleFailure]:
        """Run the control's own examples; the failures (empty: all pass)."""
        failures = []
        key = "signal" if self.stage == "DETECTOR" else "outcome"
        for i, ex in enumerate(self.examples):
            want = ex.get(key)
            if not self.wanted(ex["event"]):  # not run at all: no signal, no outcome
                if want is not None:
                    failures.append(ExampleFailure(self.control_id, i, want, None,
                                                   "the event does not match WHEN"))
                continue
            got = self.example_run(ex)
            have = got.signal if self.stage == "DETECTOR" else got.outcome
            if got.error is not None or have != want:
                failures.append(ExampleFailure(self.control_id, i, want, have, got.error))
        return failures


def _summary(exc: Exception) -> str:
    """Starlark's ``error: ...`` line and its ``--> file:line:col``, else the last line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    what = next((ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")), None)
    where = next((ln[3:].strip() for ln in lines if ln.startswith("-->")), None)
    if what is None:
        return f"{type(exc).__name__}: {(lines or [''])[-1][:300]}"
    return f"{what} at {where}" if where else what


def _evaluated(control_id: str, source: str) -> Any:
    try:
        module = sl.Module()
        sl.eval(module, sl.parse(f"{control_id}.star", source), _GLOBALS)
    except Exception as exc:
        raise ControlError(f"{control_id}: {exc}") from exc
    return module


def _defines_function(module: Any, name: str) -> bool:
    # starlark-pyo3 returns None for a missing name and refuses to convert a function.
    try:
        value = module[name]
    except sl.StarlarkError as exc:
        return "type `function`" in str(exc)
    return value is not None and callable(value)


class ControlSet:
    """The loaded network: detectors, action controls, one selection control."""

    def __init__(self, controls: Iterable[Control], remember: int = 0) -> None:
        """``remember``: keep up to this many answers of each control by its inputs
        and answer repeats from them (0: call every time). A control is a pure
        function of its inputs, so the results are the same (marked
        ``remembered``: their execution records say the control was not called);
        where most inputs recur (a card's count, a country), in a replay or live,
        each is called for once. A new release begins its memo empty."""
        self.remember = remember
        self._memos: dict[str, Memo] = {}
        self.controls = sorted(controls,
                               key=lambda c: (CONTROL_STAGES.index(c.stage), c.control_id))
        ids = [c.control_id for c in self.controls]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ControlError(f"control ids defined twice: {twice}")
        selection = [c for c in self.controls if c.stage == "SELECTION"]
        if len(selection) != 1:
            raise ControlError("a control set needs exactly one selection control "
                               f"(select(event, proposals)); found {len(selection)}")
        self.selection = selection[0]
        self.stopped: set[str] = set()  # emergency-stopped control ids
        self._by_type: dict[tuple[str, str], list[Control]] = {}

    @classmethod
    def from_dir(cls, directory: Path = LIBRARY, budget_ms: float = DEFAULT_BUDGET_MS) \
            -> ControlSet:
        return cls(load_dir(directory, budget_ms))

    def remembering(self, remember: int) -> ControlSet:
        """These controls (stopped ones stopped) with ``remember`` answers each kept."""
        again = ControlSet(self.controls, remember)
        again.stopped = set(self.stopped)
        return again

    def _run(self, control: Control, event: Mapping[str, Any],
             features: Mapping[str, Any] | None, entity_key: str,
             extra: dict[str, Any]) -> ControlResult:
        """One control, here: from its memo when this set remembers."""
        if not self.remember:
            return control.run(event, features, entity_key, **extra)
        memo = self._memos.setdefault(control.control_id, {})
        result = control.run(event, features, entity_key, memo, **extra)
        if len(memo) > self.remember:  # bounded: begun again when full
            memo.clear()
        return result

    def versions(self) -> dict[str, str]:
        return {c.control_id: c.version for c in self.controls}

    def by_id(self) -> dict[str, Control]:
        return {c.control_id: c for c in self.controls}

    def emergency_stop(self, control_ids: Iterable[str] = (), tier: int | None = None) \
            -> list[str]:
        """Stop controls now (by id, or every control of ``tier``); the ids stopped."""
        chosen = [c.control_id for c in self.controls
                  if c.control_id in set(control_ids) or (tier is not None and c.tier == tier)]
        if self.selection.control_id in chosen:
            raise ControlError("the selection control cannot be stopped")
        self.stopped.update(chosen)
        self._by_type.clear()
        return chosen

    def resume(self, control_ids: Iterable[str] | None = None) -> None:
        self.stopped -= set(self.stopped if control_ids is None else control_ids)
        self._by_type.clear()

    def for_type(self, event_type: str, stage: str = "DETECTOR", deferred: bool = False) \
            -> list[Control]:
        """The running controls of ``stage`` for events of ``event_type`` (short
        name): inline ones (tier 0 and 1), or with ``deferred`` the tier-2 ones."""
        key = (event_type, f"{stage}{'/2' if deferred else ''}")
        chosen = self._by_type.get(key)
        if chosen is None:
            chosen = self._by_type[key] = [
                c for c in self.controls if c.stage == stage and c.applies(event_type)
                and (c.tier == 2) == deferred and c.control_id not in self.stopped]
        return chosen

    def evaluate(self, event_type: str, event: Mapping[str, Any],
                 features: Mapping[str, Any], entity_key: str = "",
                 run: Runner | None = None) -> Verdict:
        """Detectors → action controls → selection for one event. Shadow and
        out-of-canary results are returned with ``applied=False`` and feed nothing.
        ``run``: how one control is called (default: here; the supervisor of
        :mod:`tripwire.controls.supervisor` calls each in its child)."""
        call = run or self._run
        results = [call(c, event, features, entity_key, {}) for c in self.for_type(event_type)
                   if not c.when or c.wanted(event)]
        detections = {r.control_id: {"signal": r.signal, "score": r.score, "reason": r.reason}
                      for r in results if r.signal is not None and r.applied}
        proposals = [r for r in results if r.outcome is not None and r.applied]  # fail policies
        if detections or proposals:
            for c in self.for_type(event_type, "ACTION"):
                if c.when and not c.wanted(event):
                    continue
                r = call(c, event, features, entity_key, {"detections": detections})
                results.append(r)
                if r.outcome is not None and r.applied:
                    proposals.append(r)
        if not proposals:
            return Verdict("ALLOW", (), "", results)
        offered = [{"control_id": p.control_id, "outcome": p.outcome, "actions": list(p.actions),
                    "reason": p.reason, "score": p.score} for p in proposals]
        chosen = call(self.selection, event, None, entity_key, {"proposals": offered})
        results.append(chosen)
        if chosen.error is None and chosen.outcome is not None:
            return Verdict(chosen.outcome, chosen.actions, chosen.reason, results)
        outcome, actions, reason = most_severe(proposals)
        return Verdict(outcome, actions, f"selection failed ({chosen.error}); most severe "
                       f"proposal applied: {reason}", results)

    def evaluate_deferred(self, event_type: str, event: Mapping[str, Any],
                          features: Mapping[str, Any], entity_key: str = "") \
            -> list[ControlResult]:
        """The tier-2 detectors for one event: logged, never part of its decision."""
        return [self._run(c, event, features, entity_key, {})
                for c in self.for_type(event_type, deferred=True) if c.wanted(event)]

    def check_examples(self) -> list[ExampleFailure]:
        return [f for c in self.controls for f in c.check_examples()]


# (control, event, features or None, entity key, detections or proposals) -> its result
Runner = Callable[[Control, Mapping[str, Any], "Mapping[str, Any] | None", str,
                   dict[str, Any]], ControlResult]


def load_dir(directory: Path, budget_ms: float = DEFAULT_BUDGET_MS) -> list[Control]:
    """Compile every ``*.star`` of a directory (a ControlError names the first broken
    one). Any directory but the shipped library is compiled, and its examples run,
    in a bounded child first (:mod:`tripwire.controls.isolate`)."""
    paths = sorted(Path(directory).glob("*.star"))
    if not paths:
        raise ControlError(f"no .star controls in {directory}")
    sources = [(p.stem, p.read_text()) for p in paths]
    if Path(directory).resolve() != LIBRARY.resolve():
        from tripwire.controls.isolate import check_apart

        check_apart(sources, budget_ms, examples="run")
    return [Control.compile(cid, source, budget_ms) for cid, source in sources]
