"""The inline control network in a supervised child process: a control that
crashes Starlark (SIGSEGV), aborts it (a huge allocation), or stalls inside one
builtin costs that control, never the worker.

Starlark bounds a call's steps and depth but not its memory, nor the stack its
Rust code uses on deeply nested values, nor one long builtin: any of them ends or
stalls the process it runs in. So a worker runs its tier-0 and tier-1 controls
in a child with an address-space cap, one round trip per batch of events
(:meth:`ControlProcess.evaluate_many`: the trip, not the pickling, is what costs),
bounded in wall-clock time. When the
child dies or stalls, a new one is started and the event's network is run again
one control call at a time, so exactly the culprit gets an error result (its
``ON_ERROR`` outcome is proposed, its execution record says why) and every other
control its own result. Results are the in-process ones: the same code runs on
the same inputs.

>>> box = ControlProcess(ControlSet.from_dir())                      # doctest: +SKIP
>>> box.evaluate("CardPayment", event, features, "acc-1").outcome    # doctest: +SKIP
'ALLOW'
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from typing import Any

from tripwire.controls.engine import Control, ControlSet, pick
from tripwire.controls.results import ControlResult, Verdict
from tripwire.controls.sandbox import abort_note, ended, limit_memory, start_apart

__all__ = ["ControlProcess", "Item"]

Item = tuple[str, Mapping[str, Any], Mapping[str, Any], str]  # type, event, features, key

logger = logging.getLogger(__name__)


def _serve(conn: Any, sources: list[tuple[str, str, float, frozenset[str]]],
           stopped: list[str], memory_mb: int, remember: int, sent_max: int) -> None:
    """The child: cap the address space, compile, answer until told to stop."""
    limit_memory(memory_mb)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # a crash's backtrace: the result says it
    controls = ControlSet([Control.compile(cid, src, budget, reads)
                           for cid, src, budget, reads in sources], remember)
    controls.emergency_stop(stopped)
    by_id = controls.by_id()
    sent: dict[int, tuple[int, ControlResult]] = {}  # see _flat
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg[0] == "events":
            # a remembering set gives the same results again and again: each is sent
            # once, then by its number, until the table is full; otherwise, once a reply
            afresh = not remember or len(sent) >= sent_max
            if afresh:
                sent.clear()
            conn.send((afresh, [_flat(controls.evaluate(*item), sent) for item in msg[1]]))
        elif msg[0] == "deferred":
            conn.send([r.values() for r in controls.evaluate_deferred(*msg[1:])])
        else:  # one control: ("call", control id, event, features, entity key, extra)
            _, cid, event, features, key, extra = msg
            conn.send(by_id[cid].run(event, features, key, **extra))


def _flat(v: Verdict, sent: dict[int, tuple[int, ControlResult]]) -> tuple[Any, ...]:
    """A verdict as plain values: a third of the time to send and rebuild. A result
    already in ``sent`` (by its id; kept alive there, so that no other takes its id)
    is sent as its number; a new one as its field values, numbered in the order
    sent (:func:`_verdict` numbers them alike)."""
    results: list[Any] = []
    for r in v.results:
        known = sent.get(id(r))
        if known is None:
            sent[id(r)] = (len(sent), r)
            results.append(r.values())
        else:
            results.append(known[0])
    return v.outcome, v.actions, v.reason, results


def _verdict(flat: tuple[Any, ...], made: list[ControlResult]) -> Verdict:
    """The verdict of :func:`_flat`'s values; ``made``: the results sent so far (since
    the child last began afresh), by number."""
    outcome, actions, reason, values = flat
    results = []
    for r in values:
        if r.__class__ is int:
            results.append(made[r])
        else:
            result = ControlResult.of(r)
            made.append(result)
            results.append(result)
    return Verdict(outcome, actions, reason, results)


class _Lost(Exception):
    """The child died or stalled."""


class ControlProcess:
    """A child process running the inline controls of ``controls``; restarted, and
    the event run again control by control, when a control kills or stalls it."""

    EVENT_S = 2.0  # one event's whole network, at most (its calls have 1-5 ms budgets)
    PER_EVENT_S = 0.02  # and this much more per event of a batch
    CALL_S = 1.0  # one control call, when the event is run again control by control
    START_S = 60.0
    SENT_MAX = 16_384  # results a remembering child refers to by number, at most

    def __init__(self, controls: ControlSet, memory_mb: int = 1024) -> None:
        self.memory_mb = memory_mb
        self.restarts = 0
        self.controls = controls
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._read: frozenset[str] = frozenset()
        self._conn: Any = None
        self._start()

    def _shape(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.controls.versions().items())) + tuple(
            ("stopped", cid) for cid in sorted(self.controls.stopped)) + (
            ("remember", str(self.controls.remember)),)

    def _start(self) -> None:
        self._stop()
        sources = [(c.control_id, c.source, c.budget.budget_ns / 1e6, c.reads)
                   for c in self.controls.controls]
        # what any control can read or match on: all of an event the child is sent
        self._read = frozenset().union(*(c.reads | {k for k, _ in c.when}
                                         for c in self.controls.controls))
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, name="tripwire-controls", daemon=True,
                                 args=(child, sources, sorted(self.controls.stopped),
                                       self.memory_mb, self.controls.remember,
                                       self.SENT_MAX))
        start_apart(proc)
        child.close()
        self._proc, self._conn, self._running = proc, parent, self._shape()
        self._made: list[ControlResult] = []  # the results it sent, by number (_verdict)
        self._picks: dict[tuple[str, ...], tuple[str, ...]] = {}  # for _only
        try:
            if not parent.poll(self.START_S):
                raise RuntimeError(f"the control process did not start in {self.START_S:g} s")
            parent.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError("the control process ended while compiling the controls "
                               f"(exit {proc.exitcode})") from None

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
            self._conn.close()
            self._proc = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(2)
            except OSError:
                pass
        self._stop()

    def sync(self, controls: ControlSet) -> None:
        """Run ``controls`` from now on (a release, a stop, a resume: the decider
        calls it after each; nothing checks between calls)."""
        self.controls = controls
        if self._shape() != self._running:
            self._start()

    def _ask(self, msg: tuple[Any, ...], timeout_s: float) -> Any:
        try:
            self._conn.send(msg)
            if self._conn.poll(timeout_s):
                return self._conn.recv()
            why = f"stalled for more than {timeout_s:g} s"
        except (EOFError, OSError):
            self._proc.join(5)
            code = self._proc.exitcode
            why = f"killed its process ({ended(code)}){abort_note(code, self.memory_mb)}"
        self.restarts += 1
        self._start()
        raise _Lost(why)

    def evaluate_many(self, items: Sequence[Item]) -> list[Verdict]:
        """:meth:`evaluate` of each (event type, event, features, entity key), in one
        round trip; when a control kills or stalls the child, each event again on
        its own (and that one control by control)."""
        if not items:
            return []
        try:
            return self._verdicts(self._ask(("events", [(t, self._only(e), self._only(f), k)
                                                        for t, e, f, k in items]),
                                             self.EVENT_S + self.PER_EVENT_S * len(items)))
        except _Lost as lost:
            logger.error("controls on a batch of %d events: %s; each event again",
                         len(items), lost)
        return [self.evaluate(*item) for item in items]

    def _verdicts(self, reply: tuple[bool, list[tuple[Any, ...]]]) -> list[Verdict]:
        afresh, flats = reply
        made = self._made
        if afresh:
            made.clear()
        return [_verdict(f, made) for f in flats]

    def _only(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The fields (or features) some control can read, in their order: the
        controls are given the same, and the request is half the size."""
        return pick(values, self._read, self._picks)

    def evaluate(self, event_type: str, event: Mapping[str, Any],
                 features: Mapping[str, Any], entity_key: str = "") -> Verdict:
        """:meth:`ControlSet.evaluate` for one event, in the child."""
        try:
            return self._verdicts(self._ask(("events", [(event_type, self._only(event),
                                                        self._only(features), entity_key)]),
                                            self.EVENT_S))[0]
        except _Lost as lost:
            logger.error("controls on %s %s: %s; run again control by control", event_type,
                         event.get("event_id"), lost)
        return self.controls.evaluate(event_type, event, features, entity_key, self._call)

    def evaluate_deferred(self, event_type: str, event: Mapping[str, Any],
                          features: Mapping[str, Any], entity_key: str = "") \
            -> list[ControlResult]:
        """:meth:`ControlSet.evaluate_deferred` (tier 2, in line: replays and
        backtests) in the child; control by control when one kills or stalls it."""
        try:
            flats = self._ask(("deferred", event_type, dict(event), dict(features),
                               entity_key), self.EVENT_S)
            return [ControlResult.of(r) for r in flats]
        except _Lost as lost:
            logger.error("tier-2 controls on %s %s: %s; control by control", event_type,
                         event.get("event_id"), lost)
        return [self._call(c, event, features, entity_key, {})
                for c in self.controls.for_type(event_type, deferred=True) if c.wanted(event)]

    def _call(self, control: Control, event: Mapping[str, Any],
              features: Mapping[str, Any] | None, entity_key: str,
              extra: dict[str, Any]) -> ControlResult:
        try:
            result: ControlResult = self._ask(
                ("call", control.control_id, dict(event),
                 None if features is None else dict(features), entity_key, extra),
                self.CALL_S)
            return result
        except _Lost as lost:
            logger.error("control %s %s", control.control_id, lost)
            return control.failed(str(lost), event, features or {}, entity_key)
