"""Running the live pipeline's stages: each in its own thread here, or one
stage per process (``tripwire run intake|features|decide``) to scale out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tripwire.config import commit_interval_for
from tripwire.connectors.events import EventProducer
from tripwire.controls.actions import ActionPolicy
from tripwire.controls.decider import Decider
from tripwire.controls.deferred import DeferredRunner
from tripwire.controls.engine import ControlSet
from tripwire.controls.plane import ReleaseSource
from tripwire.controls.sandbox import DEFAULT_MEMORY_MB
from tripwire.features.batch import BatchTable
from tripwire.features.engine import FeatureLibrary
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import TP, InRecord, OutRecord
from tripwire.state.manager import StateManager
from tripwire.streams.gather import DecisionStage
from tripwire.streams.hops import NODE_TIMEOUT_MS
from tripwire.streams.loop import BatchLoop, LoopStats, tune_gc
from tripwire.streams.processor import Processor
from tripwire.streams.reconcile import DEFAULT_HOLD_MS, ReconcileStage
from tripwire.streams.stages import OUTCOMES, STAGES, Parts, Stage
from tripwire.streams.topics import topic

__all__ = ["STAGES", "Combined", "Pipeline", "applier_loop", "attach_deferred", "combined_loop",
           "processors_of", "reconcile_loop", "stage_group", "stage_loop", "stage_topics"]

logger = logging.getLogger(__name__)


def stage_topics(stage: str, namespace: str, entities: Sequence[str] | None = None,
                 outcome: bool = False) -> list[str]:
    """The topics a loop of ``stage`` consumes (``entities``: feature nodes served
    apart, each from its own topic; none: the shared feature topic; ``outcome``:
    a stage of :data:`~tripwire.streams.stages.OUTCOMES`)."""
    return [topic(k, namespace) for k in _stage(stage, outcome).inputs(entities or ())]


def _stage(name: str, outcome: bool = False) -> Stage:
    table = OUTCOMES if outcome else STAGES
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(table)}") from None


def stage_loop(stage: str, bootstrap: str, namespace: str, *, codec: AvroCodec,
               controls: ControlSet, library: FeatureLibrary, state_dir: Path | None,
               batch_size: int = 500, node_timeout_ms: int = NODE_TIMEOUT_MS,
               processor: Processor | None = None,
               entities: Sequence[str] | None = None,
               batch: BatchTable | None = None,
               sources: Sequence[ReleaseSource] = (), commit_interval_ms: int | None = None,
               eager: bool = True, eager_hops: bool = True,
               poll_timeout: float = 0.1, apart: Collection[str] = (),
               session_timeout_ms: int | None = None) -> BatchLoop:
    """A ready-to-run loop for one stage (``processor`` overrides the default one;
    ``apart``: the entities whose requests the intake sends to topics of their own
    (``TRIPWIRE_NODES_APART``); ``entities``: a features loop serves those nodes
    apart, from their own topics, instead of the shared one;
    ``sources``: where the decide stage takes control releases from; ``eager`` and
    ``commit_interval_ms``: how answers and state leave the loop, see
    :class:`~tripwire.streams.loop.BatchLoop`; ``eager_hops``: internal messages go
    out at once too, see :mod:`~tripwire.streams.hops`; the commit interval
    defaults to :func:`~tripwire.config.commit_interval_for` the hops;
    ``session_timeout_ms``: how long a worker that died keeps its partitions, see
    :class:`~tripwire.streams.loop.BatchLoop`)."""
    if commit_interval_ms is None:
        commit_interval_ms = commit_interval_for(eager_hops and eager)
    if processor is None:
        processor = _stage(stage).build(Parts(codec, controls, library, node_timeout_ms, batch,
                                              sources, eager_hops, apart))
    group = stage_group(stage, namespace)
    if entities:
        group += "." + "-".join(sorted(entities))
    return BatchLoop(bootstrap, group, stage_topics(stage, namespace, entities),
                     processor,
                     namespace=namespace, batch_size=batch_size, poll_timeout=poll_timeout,
                     state_dir=None if state_dir is None else state_dir / stage,
                     commit_interval_ms=commit_interval_ms, eager=eager,
                     peer_groups=() if entities else [stage_group("all", namespace)],
                     session_timeout_ms=session_timeout_ms)


def stage_group(stage: str, namespace: str) -> str:
    """The consumer group of one stage's loops (``all``: of the one-loop workers)."""
    return f"{namespace}tripwire.{stage}"


class Combined(Processor):
    """Every stage in one loop: one consumer (one group over the inputs, the feature
    topic and the gather topic, a worker getting the same partition numbers of
    each), one transaction per commit and one thread per worker process, instead
    of three of each. Records still cross Kafka between the stages, so features
    stay exact for any number of workers; each record goes to the stage its topic
    feeds, in the order intake, features, decide."""

    name = "all"

    def __init__(self, stages: Sequence[tuple[Processor, Sequence[str]]]) -> None:
        self.stages = [(p, frozenset(topics)) for p, topics in stages]
        self.stores = tuple(s for p, _ in stages for s in p.stores)
        # each input topic's stores: a stage's own (the state manager opens no others)
        self.stores_by_topic = {t: list(p.stores) for p, topics in stages for t in topics}
        # each input topic's changelogs are named after its stage, as when run alone
        self.owners = {t: p.name for p, topics in stages for t in topics}
        self.eager = frozenset().union(*(p.eager for p, _ in stages))
        self.routes = tuple(sorted({r for p, _ in stages for r in p.routes}))
        self.watches = tuple(sorted({w for p, _ in stages for w in p.watches}))
        self._partitions: dict[str, int] = {}
        self._watched: dict[str, int] = {}
        self._at_end: set[TP] = set()

    # what the loop sets is passed on to the stages that use it
    @property
    def partitions(self) -> dict[str, int]:
        """The output topics' partition counts, as the loop set them on every stage
        that routes its records itself."""
        return self._partitions

    @partitions.setter
    def partitions(self, counts: dict[str, int]) -> None:
        self._partitions = counts
        for p, _ in self.stages:
            if p.routes:
                p.partitions = counts

    @property
    def watched(self) -> dict[str, int]:
        """The watched input topics' partition counts, as the loop set them on every
        stage that orders its inputs (its ``watches``)."""
        return self._watched

    @watched.setter
    def watched(self, counts: dict[str, int]) -> None:
        self._watched = counts
        for p, _ in self.stages:
            if p.watches:
                p.watched = counts

    @property
    def at_end(self) -> set[TP]:
        """The loop's input partitions at the end of their log, shared with the stages."""
        return self._at_end

    @at_end.setter
    def at_end(self, tps: set[TP]) -> None:
        self._at_end = tps
        for p, _ in self.stages:
            p.at_end = tps

    def process(self, batch: Sequence[InRecord], now_ms: int,
                state: StateManager) -> list[OutRecord]:
        out: list[OutRecord] = []
        for p, topics in self.stages:
            mine = [r for r in batch if r.topic in topics]
            if mine:
                out += p.process(mine, now_ms, state)
        return out

    def tick(self, now_ms: int, state: StateManager) -> list[OutRecord]:
        return [o for p, _ in self.stages for o in p.tick(now_ms, state)]

    def safe_offsets(self, offsets: dict[TP, int]) -> dict[TP, int]:
        safe = dict(offsets)
        for p, topics in self.stages:
            safe.update(p.safe_offsets({tp: o for tp, o in offsets.items() if tp[0] in topics}))
        return safe

    def drop(self, tps: Sequence[TP]) -> None:
        for p, topics in self.stages:
            p.drop([tp for tp in tps if tp[0] in topics])


def processors_of(processor: Processor) -> list[Processor]:
    """The stage processors a loop runs: the stages of a :class:`Combined`, or itself."""
    return [p for p, _ in processor.stages] if isinstance(processor, Combined) else [processor]


def combined_loop(bootstrap: str, namespace: str, *, codec: AvroCodec,
                  controls: ControlSet, library: FeatureLibrary, state_dir: Path | None,
                  batch_size: int = 500, node_timeout_ms: int = NODE_TIMEOUT_MS,
                  batch: BatchTable | None = None, sources: Sequence[ReleaseSource] = (),
                  commit_interval_ms: int | None = None, eager: bool = True,
                  eager_hops: bool = True, poll_timeout: float = 0.1,
                  apart: Collection[str] = (), session_timeout_ms: int | None = None) \
        -> BatchLoop:
    """Every stage in one loop (:class:`Combined`); the arguments as
    :func:`stage_loop`'s. Its group is its own (``tripwire.all``), its changelogs
    the stages' own: a namespace can move between the layouts (stop one, start the
    other; each starts from the furthest offsets either committed and restores
    the same state), but must not run both at once."""
    if commit_interval_ms is None:
        commit_interval_ms = commit_interval_for(eager_hops and eager)
    parts = Parts(codec, controls, library, node_timeout_ms, batch, sources, eager_hops, apart)
    processor = Combined([(s.build(parts), stage_topics(name, namespace))
                          for name, s in STAGES.items()])
    return BatchLoop(bootstrap, stage_group("all", namespace),
                     sorted(processor.owners), processor,
                     namespace=namespace, batch_size=batch_size, poll_timeout=poll_timeout,
                     state_dir=None if state_dir is None else state_dir / "all",
                     commit_interval_ms=commit_interval_ms, eager=eager,
                     peer_groups=[stage_group(s, namespace) for s in STAGES],
                     session_timeout_ms=session_timeout_ms)


def applier_loop(bootstrap: str, namespace: str, *, codec: AvroCodec,
                 policy: ActionPolicy | None = None, state_dir: Path | None,
                 batch_size: int = 500, poll_timeout: float = 0.1,
                 commit_interval_ms: int = 100, session_timeout_ms: int | None = None) \
        -> BatchLoop:
    """The decisions carried out (:data:`~tripwire.streams.stages.OUTCOMES`): the
    actions and apply stages in one loop whose outputs all go inside its
    transactions (exactly once, visible to read-committed readers at the commit)."""
    parts = Parts(codec, policy=policy or ActionPolicy())
    processor = Combined([(s.build(parts), stage_topics(name, namespace, outcome=True))
                          for name, s in OUTCOMES.items()])
    processor.name = "applier"
    return BatchLoop(bootstrap, stage_group("applier", namespace), sorted(processor.owners),
                     processor, namespace=namespace, batch_size=batch_size,
                     poll_timeout=poll_timeout,
                     state_dir=None if state_dir is None else state_dir / "applier",
                     commit_interval_ms=commit_interval_ms, eager=False,
                     session_timeout_ms=session_timeout_ms)


def reconcile_loop(bootstrap: str, namespace: str, *, codec: AvroCodec,
                   state_dir: Path | None, batch_size: int = 500, poll_timeout: float = 0.1,
                   commit_interval_ms: int = 100, hold_ms: int = DEFAULT_HOLD_MS,
                   session_timeout_ms: int | None = None) -> BatchLoop:
    """The inline decide API's late decisions set beside their stand-ins
    (:mod:`tripwire.streams.reconcile`), in a loop whose outputs go inside its
    transactions. The two topics must have as many partitions each: a stand-in
    and the decision of its event are matched on the same partition number."""
    from tripwire.connectors.kafka import admin

    names = [topic("decisions", namespace), topic("decide_answers", namespace)]
    md = admin(bootstrap).list_topics(timeout=30).topics
    counts = {n: len(md[n].partitions) for n in names if n in md}
    if len(counts) == 2 and len(set(counts.values())) != 1:
        raise ValueError(f"reconcile: {names[0]} has {counts[names[0]]} partitions and "
                         f"{names[1]} {counts[names[1]]}; give both the same count")
    processor = ReconcileStage(codec, namespace, hold_ms)
    return BatchLoop(bootstrap, stage_group("reconcile", namespace), names, processor,
                     namespace=namespace, batch_size=batch_size, poll_timeout=poll_timeout,
                     state_dir=None if state_dir is None else state_dir / "reconcile",
                     commit_interval_ms=commit_interval_ms, eager=False,
                     session_timeout_ms=session_timeout_ms)


def attach_deferred(decider: Decider, bootstrap: str, namespace: str, codec: AvroCodec,
                    memory_mb: int = DEFAULT_MEMORY_MB) -> DeferredRunner:
    """Run the decider's tier-2 controls off the decision path, writing their
    execution records with a producer of their own."""
    out = EventProducer(bootstrap, codec)
    name = topic("control_executions", namespace)

    def send(records: list[OutRecord]) -> None:
        for r in records:
            out.send_raw(name, r.value, r.key)
        out.poll(0)

    runner = DeferredRunner(lambda: decider.controls, decider.executions, send, memory_mb,
                            flush=lambda: out.drain(5))
    decider.deferred = runner
    return runner


@dataclass
class Pipeline:
    """Stage loops running in threads of this process."""

    loops: dict[str, BatchLoop]
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    stats: dict[str, LoopStats] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    deferred: list[DeferredRunner] = field(default_factory=list)  # tier-2 runners

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Block until every loop has joined its group and been given partitions."""
        deadline = time.monotonic() + timeout
        while any(loop.assigned_at is None for loop in self.loops.values()):
            if self.errors:
                raise RuntimeError(f"stage failed while starting: {self.errors}")
            if time.monotonic() > deadline:
                raise TimeoutError("stages were not assigned partitions in time")
            time.sleep(0.05)

    @classmethod
    def start(cls, loops: dict[str, BatchLoop],
              deferred: Sequence[DeferredRunner] = ()) -> Pipeline:
        p = cls(loops, deferred=list(deferred))
        for name, loop in loops.items():
            def run(loop: BatchLoop = loop, name: str = name) -> None:
                try:
                    p.stats[name] = loop.run(p.stop_event)
                except Exception as exc:
                    logger.exception("stage %s failed", name)
                    p.errors[name] = exc
                    p.stop_event.set()  # one stage down: stop the others, fail loudly
            t = threading.Thread(target=run, name=f"stage-{name}", daemon=True)
            t.start()
            p.threads.append(t)
        return p

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)
        for runner in self.deferred:
            runner.close()

    @classmethod
    def build(cls, bootstrap: str, namespace: str, *, codec: AvroCodec, controls: ControlSet,
              library: FeatureLibrary, state_dir: Path | None,
              stages: Sequence[str] | None = None,
              one_loop: bool = True, entities: Sequence[str] | None = None,
              batch_size: int = 500, node_timeout_ms: int = NODE_TIMEOUT_MS,
              batch: BatchTable | None = None, sources: Sequence[ReleaseSource] = (),
              commit_interval_ms: int | None = None, eager: bool = True,
              eager_hops: bool = True, apart: Collection[str] = (),
              isolate_mb: int | None = DEFAULT_MEMORY_MB, tune: bool = False,
              applier: bool = False, policy: ActionPolicy | None = None,
              reconcile: bool = False, session_timeout_ms: int | None = None) -> Pipeline:
        """``stages`` (None: every one) running in threads of this process, as
        `tripwire run stage` runs them: every stage in one loop (when all run and
        ``one_loop``) or a loop each (``entities``: the feature nodes a features loop
        serves apart). The decide stage's tier-2 controls run off the path, and its
        tiers 0 and 1 in a supervised child with ``isolate_mb`` of memory (None: in
        this process). ``tune``: :func:`~tripwire.streams.loop.tune_gc` once built.
        ``applier``: the decisions carried out too, in a loop of their own
        (:func:`applier_loop`, by ``policy``); ``reconcile``: the inline API's late
        decisions set beside their stand-ins (:func:`reconcile_loop`). The other
        arguments are
        :func:`stage_loop`'s."""
        stages = tuple(STAGES) if stages is None else tuple(stages)
        common: dict[str, Any] = dict(
            codec=codec, controls=controls, library=library, state_dir=state_dir,
            batch_size=batch_size, node_timeout_ms=node_timeout_ms, batch=batch,
            sources=sources, commit_interval_ms=commit_interval_ms, eager=eager,
            eager_hops=eager_hops, apart=apart, session_timeout_ms=session_timeout_ms)
        if one_loop and stages == tuple(STAGES) and not entities:
            loops = {"all": combined_loop(bootstrap, namespace, **common)}
        else:
            loops = {s: stage_loop(s, bootstrap, namespace, **common,
                                   entities=entities if s == "features" else None)
                     for s in stages}
        if applier:
            loops["applier"] = applier_loop(
                bootstrap, namespace, codec=codec, policy=policy, state_dir=state_dir,
                batch_size=batch_size, commit_interval_ms=100 if commit_interval_ms is None
                else commit_interval_ms, session_timeout_ms=session_timeout_ms)
        if reconcile:
            loops["reconcile"] = reconcile_loop(bootstrap, namespace, codec=codec,
                                                state_dir=state_dir, batch_size=batch_size,
                                                session_timeout_ms=session_timeout_ms)
        deciders = [p.decider for loop in loops.values() for p in processors_of(loop.processor)
                    if isinstance(p, DecisionStage)]
        deferred = [attach_deferred(d, bootstrap, namespace, codec) for d in deciders]
        if isolate_mb is not None:  # tiers 0 and 1: a crashing control costs itself
            for d in deciders:
                d.isolate(isolate_mb)
        if tune:
            tune_gc()
        return cls.start(loops, deferred)
