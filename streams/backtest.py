"""Backtesting: recorded events replayed through the same decision path the live
workers run (features recomputed in event time, the same controls code), and a
report per control.

The replay is :class:`~tripwire.streams.decision_path.DecisionPath` over one
in-memory state for all its inputs (:class:`~tripwire.state.manager.OneLogState`:
an entity's windows count its events from every topic, as the live pipeline's
feature nodes do), fed in the recorded order. For the same events, arriving in
the same order, and the same control versions, its decisions are the live
decisions (only ``decided_at`` and ``latency_us``, which measure the run,
differ). Events of any age are accepted: history is the point.

>>> run = backtest(ControlSet.from_dir(), records)                   # doctest: +SKIP
>>> run.controls["card_testing"].precision                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import pickle
import queue
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, ParamSpec, TypeVar

import orjson

from tripwire.controls.decider import DECISIONS_STORE
from tripwire.controls.engine import ControlSet
from tripwire.controls.results import Verdict
from tripwire.features.engine import FeatureLibrary
from tripwire.features.kinds import EVENT_KINDS
from tripwire.schemas.codec import AvroCodec, DecodeError
from tripwire.schemas.models import parse_event
from tripwire.schemas.records import InRecord
from tripwire.schemas.validate import ValidationPolicy, Validator
from tripwire.state.manager import OneLogState
from tripwire.streams.decision_path import DecisionPath, Prepared
from tripwire.streams.intake import DEDUP_STORE, Admitted
from tripwire.streams.nodes import FEATURES_STORE
from tripwire.streams.stages import PATH, Parts

__all__ = ["CAUGHT_WITHIN", "TIMING_FIELDS", "Backtest", "ControlStats", "Labels",
           "TypologyStats", "backtest", "comparable", "prepared", "records_from_jsonl"]

T = TypeVar("T")
P = ParamSpec("P")
PREPARE_STORES = (DEDUP_STORE, FEATURES_STORE)  # the first half's (DecisionPath.prepare)
TIMING_FIELDS = ("decided_at", "latency_us")  # measure the run, not the decision
# An attack stopped within its first this-many events counts as caught from its
# first event: a velocity control must see a few events before it can know.
CAUGHT_WITHIN = 10
# answers kept per control (ControlSet.remember): about two in three of a replay's
# calls repeat inputs already seen (a country, a card's small count); ~1.5 KB each at most
REMEMBER = 4096


@dataclass
class Labels:
    """What is known about events: fraud or genuine, and for fraud its typology and
    the attack it belongs to; for a genuine event, the look-alike it is (if any)."""

    fraud: dict[str, bool] = field(default_factory=dict)
    typology: dict[str, str] = field(default_factory=dict)
    attack: dict[str, str] = field(default_factory=dict)
    lookalike: dict[str, str] = field(default_factory=dict)


@dataclass
class TypologyStats:
    """One typology against the labels. ``flagged``: events on which a detector
    raised a signal of this typology (its ``TYPOLOGIES``); precision is the share of
    them labelled fraud. ``events``: events labelled with this typology; recall is
    the share stopped (any outcome but ALLOW), where an attack stopped within its
    first ``within`` events counts as stopped from its first; ``event_recall``
    counts each event on its own."""

    typology: str
    within: int = CAUGHT_WITHIN
    attacks: int = 0
    attacks_caught: int = 0  # stopped within their first ``within`` events
    events: int = 0
    caught: int = 0
    stopped: int = 0
    flagged: int = 0
    true_flags: int = 0

    @property
    def precision(self) -> float | None:
        return self.true_flags / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.caught / self.events if self.events else None

    @property
    def event_recall(self) -> float | None:
        return self.stopped / self.events if self.events else None


def comparable(decision: Mapping[str, Any]) -> dict[str, Any]:
    """A decision without the fields that time the run."""
    return {k: v for k, v in decision.items() if k not in TIMING_FIELDS}


@dataclass
class ControlStats:
    control_id: str
    version: str
    stage: str
    mode: str
    runs: int = 0
    hits: int = 0
    errors: int = 0
    true_hits: int = 0  # hits on events labelled fraud
    hits_per_day: Counter[str] = field(default_factory=Counter)
    labelled_fraud: int = 0  # set once labels are known
    labelled: bool = False  # whether there were labels at all

    @property
    def precision(self) -> float | None:
        return self.true_hits / self.hits if self.hits and self.labelled else None

    @property
    def recall(self) -> float | None:
        return self.true_hits / self.labelled_fraud if self.labelled_fraud else None

    @property
    def alerts_per_day(self) -> float:
        return self.hits / len(self.hits_per_day) if self.hits_per_day else 0.0


@dataclass
class Backtest:
    decisions: list[dict[str, Any]] = field(default_factory=list)
    quarantined: Counter[str] = field(default_factory=Counter)  # reason code → count
    controls: dict[str, ControlStats] = field(default_factory=dict)
    outcomes_per_day: dict[str, Counter[str]] = field(default_factory=lambda:
                                                      defaultdict(Counter))
    labels: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    known: Labels = field(default_factory=Labels)  # the labels' typologies and attacks
    flags: dict[str, set[str]] = field(default_factory=dict)  # event id → typologies raised

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(d["outcome"] for d in self.decisions)

    def decision_quality(self) -> tuple[float | None, float | None]:
        """(precision, recall) of 'not ALLOW' against the labels."""
        flagged = [d for d in self.decisions if d["outcome"] != "ALLOW" and not d["repeat"]]
        fraud = sum(self.labels.values())
        tp = sum(self.labels.get(d["event_id"], False) for d in flagged)
        return (tp / len(flagged) if flagged else None, tp / fraud if fraud else None)

    def typologies(self, within: int = CAUGHT_WITHIN) -> dict[str, TypologyStats]:
        """Precision and recall per typology (:class:`TypologyStats`): every typology
        the labels name or a detector raised."""
        out: dict[str, TypologyStats] = {}

        def stats(name: str) -> TypologyStats:
            return out.setdefault(name, TypologyStats(name, within))

        by_attack: dict[tuple[str, str], list[bool]] = defaultdict(list)
        for d in self.decisions:
            if d["repeat"]:
                continue
            eid = d["event_id"]
            for name in self.flags.get(eid, ()):
                st = stats(name)
                st.flagged += 1
                st.true_flags += self.labels.get(eid, False)
            name = self.known.typology.get(eid, "")
            if name and self.labels.get(eid, False):
                st = stats(name)
                st.events += 1
                st.stopped += d["outcome"] != "ALLOW"
                by_attack[(name, self.known.attack.get(eid) or eid)].append(
                    d["outcome"] != "ALLOW")
        for (name, _), stopped in by_attack.items():
            st = stats(name)
            st.attacks += 1
            first = stopped.index(True) if True in stopped else within
            if first < within:
                st.attacks_caught += 1
                st.caught += first + sum(stopped[first:])
            else:
                st.caught += sum(stopped)
        return dict(sorted(out.items()))

    def lookalikes(self) -> dict[str, Counter[str]]:
        """Outcomes per look-alike (genuine events labelled as one)."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for d in self.decisions:
            kind = self.known.lookalike.get(d["event_id"])
            if kind and not d["repeat"]:
                out[kind][d["outcome"]] += 1
        return dict(sorted(out.items()))

    def diff(self, baseline: Backtest) -> tuple[Counter[tuple[str, str]], list[tuple[str, str,
                                                                                       str]]]:
        """Outcome changes against ``baseline``: counts per (old, new), and the events."""
        before = {d["event_id"]: d["outcome"] for d in baseline.decisions if not d["repeat"]}
        changes = [(d["event_id"], before[d["event_id"]], d["outcome"]) for d in self.decisions
                   if not d["repeat"] and d["event_id"] in before
                   and before[d["event_id"]] != d["outcome"]]
        return Counter((o, n) for _, o, n in changes), changes


def records_from_jsonl(lines: Iterable[bytes], codec: AvroCodec) \
        -> tuple[list[InRecord], list[tuple[int, str]]]:
    """Events from JSON Lines (``event_type`` per line) as input records; and the
    lines that are not events at all, with why (reported, never skipped quietly)."""
    out, bad = [], []
    for n, raw in enumerate(lines, start=1):
        raw = raw.strip()
        if not raw:
            continue
        try:
            model = parse_event(raw)
        except Exception as exc:  # pydantic's ValidationError or bad JSON
            bad.append((n, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            continue
        rec = model.to_avro()
        out.append(InRecord("file", 0, n, model.key.encode(),
                            codec.encode(model.schema_name, rec), rec["event_time"]))
    return out, bad


def _collector_paused(replay: Callable[P, T]) -> Callable[P, T]:
    """``replay`` with Python's cyclic garbage collector off (reference counting frees
    its garbage): a replay makes no cycles (one of a day's traffic leaves 6
    unreachable objects), yet every collection walks all it keeps, each decision
    and window, more the longer the replay: a fifth of its CPU, measured. A
    process it forks inherits the pause."""
    @functools.wraps(replay)
    def paused(*args: P.args, **kwargs: P.kwargs) -> T:
        was = gc.isenabled()
        gc.disable()
        gc.freeze()  # what exists now is not the replay's: out of every later walk
        try:
            return replay(*args, **kwargs)
        finally:
            gc.unfreeze()
            if was:
                gc.enable()
    return paused


@_collector_paused
def backtest(controls: ControlSet, records: list[InRecord], *,
             codec: AvroCodec | None = None, labels: Mapping[str, bool] | Labels | None = None,
             library: FeatureLibrary | None = None, batch_size: int = 500,
             progress: Callable[[int, int], None] = lambda done, total: None,
             isolate_mb: int | None = None, workers: int = 1) -> Backtest:
    """Replay ``records`` in order through the decision path with ``controls``
    (``isolate_mb``: in a supervised child with that much memory, as live workers
    run them). ``workers`` 2 or more: intake and features run in a second process,
    batches ahead of the decisions (:func:`prepared`); the results are the same."""
    codec = codec or AvroCodec.from_url(None)
    controls = controls.remembering(REMEMBER)  # most of a replay's calls are repeats
    path = PATH.build(Parts(codec, controls, library or FeatureLibrary(), validator=Validator(
        ValidationPolicy(max_event_age_ms=None))))  # events of any age: history
    assert isinstance(path, DecisionPath)
    path.decider.records_only = True  # read from OutRecord.meta below; nothing is sent
    known = labels if isinstance(labels, Labels) else Labels(dict(labels or {}))
    run = Backtest(labels=dict(known.fraud), known=known)
    started = time.monotonic()
    batches = prepared(path, records, batch_size, workers)  # started before the child box
    # With two workers, the controls' child is asked a batch or two ahead, on a
    # thread of its own, while this one decides (its answers remembered, the child
    # costs less than the features: one is enough). Tier-2 controls share the
    # decider's child with the decisions: asked in turn then.
    box = None if isolate_mb is None else path.decider.isolate(isolate_mb)
    judged: Iterator[tuple[Prepared, list[Verdict]]] = (
        (batch, path.verdicts(batch)) for batch in batches)
    if box is not None and workers >= 2 and not any(c.tier == 2 for c in controls.controls):
        judged = _judged(batches, path.verdicts)
    try:
        return _replayed(run, path, judged, len(records), progress, started)
    finally:
        if box is not None:
            box.close()


def _judged(batches: Iterable[Prepared], ask: Callable[[Prepared], list[Verdict]]) \
        -> Iterator[tuple[Prepared, list[Verdict]]]:
    """Each batch with its verdicts, in order: asked on a thread of their own (so
    the child is asked one batch at a time), up to two batches ahead of the caller."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="backtest-controls")
    pending: deque[tuple[Prepared, Future[list[Verdict]]]] = deque()
    try:
        for batch in batches:
            pending.append((batch, pool.submit(ask, batch)))
            if len(pending) > 2:
                ready, verdicts = pending.popleft()
                yield ready, verdicts.result()
        while pending:
            ready, verdicts = pending.popleft()
            yield ready, verdicts.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _replayed(run: Backtest, path: DecisionPath, judged: Iterable[tuple[Prepared, list[Verdict]]],
              total: int, progress: Callable[[int, int], None], started: float) -> Backtest:
    """The decisions of the judged batches, counted into ``run``."""
    codec, versions = path.codec, path.controls.by_id()
    days: dict[str, str] = {}  # event id → its day (UTC), for volumes per day
    state = OneLogState(path.name, [DECISIONS_STORE])
    done = 0
    for batch, verdicts in judged:
        executions = []
        for o in path.decide(batch, state, verdicts):
            # what the path made, as it made it (OutRecord.meta); decoded otherwise
            meta = o.meta
            rec = meta[5] if o.topic_key == "decisions" and meta and len(meta) > 5 else \
                meta[2] if o.topic_key == "control_executions" and meta and len(meta) > 2 \
                else None
            if rec is None and o.topic_key == "quarantine" and meta:
                run.quarantined.update(meta[2])
                continue
            if rec is None:
                rec = codec.decode(o.value)[1]
            if o.topic_key == "decisions":
                run.decisions.append(rec)
                day = days[rec["event_id"]] = _day(rec["event_time"] // 86_400_000)
                run.outcomes_per_day[day][rec["outcome"]] += 1
            elif o.topic_key == "quarantine":
                run.quarantined.update(r["code"] for r in rec["reasons"])
            elif o.topic_key == "control_executions":
                executions.append(rec)
        for rec in executions:
            for ex in rec["executions"]:
                _count(run, ex, rec["event_id"], versions, days)
        done += len(batch.items)
        progress(done, total)
    fraud = sum(run.labels.values())
    for stats in run.controls.values():
        stats.labelled_fraud = fraud
        stats.labelled = bool(run.labels)
    run.seconds = time.monotonic() - started
    return run


def _now_ms() -> int:
    return int(time.time() * 1000)


def prepared(path: DecisionPath, records: Sequence[InRecord], batch_size: int = 500,
             workers: int = 1) -> Iterator[Prepared]:
    """The batches of ``records`` through intake and features
    (:meth:`DecisionPath.prepare`, over a state of its own), in order: here, or
    with ``workers`` 2 or more (and a platform that forks) in a child process
    that keeps a few batches ahead of the caller. A child that fails or dies
    raises here, with its traceback or its exit code."""
    chunks = range(0, len(records), batch_size)
    if workers < 2 or len(chunks) < 2 or not _CAN_FORK:
        return _prepare_here(path, records, batch_size)
    ctx = multiprocessing.get_context("fork")  # the records and path, not pickled
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_prepare_all, args=(path, records, batch_size, sender),
                        name="tripwire-backtest-features", daemon=True)
    child.start()  # now: before the caller starts threads or children of its own
    sender.close()
    return _received(child, receiver, len(chunks))


def _prepare_here(path: DecisionPath, records: Sequence[InRecord],
                  batch_size: int) -> Iterator[Prepared]:
    state = OneLogState(path.name, list(PREPARE_STORES))
    again = _repeated(path.codec, records)
    for i in range(0, len(records), batch_size):
        batch = path.prepare(records[i:i + batch_size], _now_ms(), state)
        state.batch_done()
        batch.unasked = frozenset(
            n for n, (tp, a, values, _) in enumerate(batch.items)
            if values is not None and isinstance(a, Admitted) and a.identity not in again)
        yield batch


def _repeated(codec: AvroCodec, records: Sequence[InRecord]) -> set[str]:
    """The identity of every event that more than one record carries: the decisions
    a replay must remember, to answer the repeats from memory. (Records on other
    partitions, and records the intake refuses, count too: more remembered than
    needed, never less.)"""
    seen: set[str] = set()
    again: set[str] = set()
    fields = {name: kind.identity_field for name, kind in EVENT_KINDS.items()}
    for rec in records:
        try:  # the identity alone, from the front of the record (it leads an event)
            schema, value = codec.leading(rec.value, fields)
            key = EVENT_KINDS[schema.name].identity_of(value)
        except (DecodeError, KeyError):
            continue  # not an event: quarantined, never remembered
        (again if key in seen else seen).add(key)
    return again


def _received(child: BaseProcess, receiver: Connection, batches: int) -> Iterator[Prepared]:
    def frames() -> Iterator[bytes]:  # read off the decisions' thread (it waits, GIL free)
        with contextlib.suppress(EOFError, OSError):
            while True:
                yield receiver.recv_bytes()

    got = 0
    try:
        for raw in _ahead(frames(), 4, "backtest-features-reader"):
            batch = pickle.loads(raw)
            if isinstance(batch, str):
                raise RuntimeError(f"the backtest's feature process failed:\n{batch}")
            got += 1
            yield batch
        if got < batches:
            child.join(5)
            raise RuntimeError(f"the backtest's feature process stopped (exit code "
                               f"{child.exitcode}) after {got} of {batches} batches")
    finally:
        if got >= batches:  # all sent: it is ending on its own (a terminate would
            child.join(5)  # race its exit)
        if child.is_alive():  # the caller stopped early, or it hangs
            child.terminate()
        child.join(5)
        receiver.close()


def _ahead(items: Iterator[T], depth: int, name: str) -> Iterator[T]:
    """``items``, made by a thread of their own up to ``depth`` ahead of the caller
    (for work that waits on another process: a pipe, the controls' child); what
    it raises is raised here."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((False, None))
        except BaseException as exc:  # raised in the caller
            q.put((False, exc))

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while True:
            more, item = q.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            q.get_nowait()  # a put waiting for room goes through, and the thread sees stop


_CAN_FORK = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


def _prepare_all(path: DecisionPath, records: Sequence[InRecord], batch_size: int,
                 sender: Connection) -> None:
    """The feature process of :func:`prepared`: every batch, pickled, in order; a
    failure as its traceback (a str)."""
    try:
        for batch in _prepare_here(path, records, batch_size):
            sender.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException:  # told to the parent, which raises it
        sender.send_bytes(pickle.dumps(traceback.format_exc()))
    finally:
        sender.close()


@functools.lru_cache(maxsize=4096)
def _output(output_json: str) -> dict[str, Any]:
    """An execution's output, parsed once: a remembered result gives the same
    string again (its hash kept), and the counts only read it."""
    out: dict[str, Any] = orjson.loads(output_json)
    return out


@functools.lru_cache(maxsize=4096)
def _day(day: int) -> str:
    """A day since the epoch as its date (UTC)."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


def _count(run: Backtest, ex: dict[str, Any], event_id: str, versions: Mapping[str, Any],
           days: Mapping[str, str]) -> None:
    cid = ex["control_id"]
    stats = run.controls.get(cid)
    if stats is None:
        c = versions.get(cid)
        stats = run.controls[cid] = ControlStats(cid, ex["control_version"], ex["stage"],
                                                 c.mode if c else ex["mode"])
    stats.runs += 1
    if ex["error"]:
        stats.errors += 1
        return
    out = _output(ex["output_json"] or "{}")
    fired = out.get("signal") is not None if ex["stage"] == "DETECTOR" else \
        ex["stage"] == "ACTION" and out.get("outcome") is not None
    if fired:
        c = versions.get(cid)
        typology = c.typology(out.get("signal")) if c is not None else None
        if typology:
            run.flags.setdefault(event_id, set()).add(typology)
        stats.hits += 1
        stats.true_hits += run.labels.get(event_id, False)
        stats.hits_per_day[days.get(event_id, "unknown")] += 1
