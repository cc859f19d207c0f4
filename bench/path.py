"""The whole decision path on the real broker: validate → features → controls →
decision, with the default features and controls, events of a bank-like mix
(cards, logins, FPS) at bank-like cardinalities, with an attack inside.

  1. saturation: N events preloaded; worker processes (one consumer group, the
     one-process decision path per partition) decide them all; events/s from
     the first decision to the last, CPU per event of the workers and the broker,
     next to a raw confluent-kafka hop of the same messages (baseline); with
     ``--catch-up`` also a backlog: the settled workers suspended while every
     event is published, then resumed (every partition full, as after an outage);
  2. open loop: events offered at a fixed rate (not waiting for answers), the
     latency of each from its send to its decision being readable (committed),
     p50 / p99 / max, next to the same offer through bare relays of the
     pipeline's shape (baseline, :func:`_relay`): what the hops alone cost on
     this machine.

    .venv/bin/python -m bench path --events 30000 --workers 3 --partitions 3 --rate 3000

Each run compares how answers leave the loop (``--modes``, see ``MODES``):
``per-batch`` puts answers inside the transaction, committed continuously (the
baseline); ``eager`` (tripwire's default) sends them — and, in the split
pipeline, the messages between stages — at once and commits state and offsets
every second in the background; ``eager-100ms`` every 100 ms;
``eager-continuous`` as often as the committer can; ``committed-hops`` sends
answers at once but the split pipeline's internal messages with each stage's
commit, every 100 ms (``TRIPWIRE_HOPS=committed``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import pickle
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
from fastavro.io.binary_decoder import BinaryDecoder

from bench.ab import at_commit, site_of
from bench.common import bench_cluster, calibrate, proc_cpu, thread_cpu
from tripwire.broker.scratch import release, scratch_home
from tripwire.connectors.kafka import consume_available, consumer, produce_waiting, producer
from tripwire.connectors.simulator import magstripe_contactless_attack, mixed_traffic
from tripwire.controls.decider import DECISION_SCHEMA
from tripwire.schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, DecodeError
from tripwire.schemas.models import EVENT_MODELS
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.topics import create_topics, topic

__all__ = ["main"]

def _events(codec: AvroCodec, n: int, t0: int, seed: int) -> list[tuple[str, bytes, bytes, str]]:
    """(topic key, key, value, event id) in event-time order."""
    traffic = [(f"tripwire.events.{k}", e) for k, e in mixed_traffic(
        seed, t0, n, accounts=max(8, n // 3), devices=max(5, n // 4), ips=max(4, n // 5),
        payees=max(5, n // 10), merchants=max(6, n // 50))]
    traffic += [("tripwire.events.CardPayment", e)
                for e in magstripe_contactless_attack(seed + 1, t0, n // 50)]
    traffic.sort(key=lambda se: se[1]["event_time"])
    out = []
    for schema, e in traffic:
        model = EVENT_MODELS[schema]
        key = str(e.get(model.key_field) or e["event_id"]).encode()
        out.append((model.topic_key, key, codec.encode(schema, e), e["event_id"]))
    return out


MODES = {  # how answers leave the loop: (eager, commit interval ms, internal messages at once)
    "per-batch": (False, 0, False),  # answers inside the transaction, committed continuously
    "eager": (True, 1000, True),  # the default: answers and hops at once; state every second
    "eager-continuous": (True, 0, True),  # ... state + offsets committed continuously
    "eager-100ms": (True, 100, True),  # ... state + offsets every 100 ms (the default before)
    "committed-hops": (True, 100, False),  # answers at once, internal messages with the commit
}


# how long a worker's loop waits for input before it ticks: `tripwire run stage`'s
# (--poll-timeout; answers do not wait for it: consume_available)
POLL_S = 0.1

ONE = ("path",)  # a worker of the one-process path
COMBINED = ("combined",)  # a worker running every stage in one loop


def offer_of(codec: AvroCodec, rate: int, seconds: float) \
        -> list[tuple[str, bytes, bytes, str]]:
    """``seconds`` of events to offer at ``rate`` per second (open loop). Their
    times end 5 min ago: within the allowed clock skew however long the offer."""
    return _events(codec, int(rate * seconds), int(time.time() * 1000) - 25 * 60_000, 47)


def _worker(bootstrap: str, ns: str, state_dir: str, batch: int, mode: str,
            stages: tuple[str, ...], ready: Any, stop: Any, poll_s: float,
            tally_to: str = "") -> None:
    from tripwire.controls import engine
    from tripwire.features.engine import FeatureLibrary
    from tripwire.streams.loop import BatchLoop, tune_gc
    from tripwire.streams.runner import combined_loop, stage_loop
    from tripwire.streams.stages import PATH, Parts

    eager, interval, hops = MODES[mode]
    tally = None
    if tally_to:  # a counting round (bench.primitives): every primitive counted
        from bench.primitives import install
        tally, _ = install()
    # as `tripwire run stage` builds them at this commit (an A/B's other may not remember)
    controls = engine.ControlSet.from_dir()
    if getattr(engine, "REMEMBER", 0):
        controls = controls.remembering(engine.REMEMBER)
    if stages == ONE:
        path = PATH.build(Parts(AvroCodec(SchemaStore.default()), controls))
        loops = {"path": BatchLoop(bootstrap, f"{ns}path", [topic(k, ns) for k in PATH.inputs(())],
                                   path, namespace=ns, batch_size=batch,
                                   poll_timeout=poll_s, state_dir=Path(state_dir),
                                   commit_interval_ms=interval, eager=eager)}
    else:  # the live pipeline's stages, as `tripwire run stage ...` runs them
        common: dict[str, Any] = dict(
            codec=AvroCodec(SchemaStore.default()), controls=controls,
            library=FeatureLibrary(), state_dir=Path(state_dir), batch_size=batch,
            commit_interval_ms=interval, eager=eager, eager_hops=hops, poll_timeout=poll_s)
        loops = {"all": combined_loop(bootstrap, ns, **common)} if stages == COMBINED else \
            {s: stage_loop(s, bootstrap, ns, **common) for s in stages}
    tune_gc()  # as `tripwire run stage` does
    done = threading.Event()
    threads = [threading.Thread(target=lp.run, args=(done,), daemon=True)
               for lp in loops.values()]
    for t in threads:
        t.start()
    while any(lp.assigned_at is None for lp in loops.values()):
        time.sleep(0.01)
    ready.set()
    stop.wait()
    done.set()
    for t in threads:
        t.join(30)
    # per event the worker's first stage read (a decide-only worker: per gather record)
    events = next(iter(loops.values())).stats.consumed
    if tally is not None:
        for lp in loops.values():
            tally.records_read += lp.stats.consumed
            tally.records_written += sum(lp.stats.produced.values()) + \
                lp.stats.changelog_records
        Path(tally_to, f"{os.getpid()}.tally").write_bytes(pickle.dumps(tally))
    by_thread = sorted(thread_cpu().items(), key=lambda kv: -kv[1])
    print(f"  worker {os.getpid()} CPU µs per event by thread: " + ", ".join(
        f"{name} {sec / max(events, 1) * 1e6:.0f}" for name, sec in by_thread if sec > 0),
        flush=True)
    for name, lp in loops.items():
        st = lp.stats
        phases = ", ".join(f"{k} {v / max(st.commits, 1) * 1000:.1f}"
                           for k, v in st.commit_phases.items())
        print(f"  worker {os.getpid()} {name}: {st.consumed} records in {st.batches} batches "
              f"({st.consumed / max(st.batches, 1):.0f} per batch), {st.commits} commits; "
              f"process {st.process_seconds / max(st.batches, 1) * 1000:.1f} ms per batch "
              f"(CPU {st.process_cpu_seconds / max(st.batches, 1) * 1000:.2f}; the loop's "
              f"thread {st.thread_cpu_seconds / max(st.batches, 1) * 1000:.2f}), "
              f"commit {st.commit_seconds / max(st.commits, 1) * 1000:.1f} ms per "
              f"transaction ({phases}), "
              f"waited {st.wait_seconds:.2f} s for the committer; changelogs "
              f"{st.changelog_records / max(st.consumed, 1):.1f} records, "
              f"{st.changelog_bytes / max(st.consumed, 1):,.0f} bytes per record read",
              flush=True)


RELAY = "relay"  # the open loop's baseline: a bare relay chain instead of the workers
_STAND_IN_ID = b"\x0arelay"  # an Avro string, "relay", spliced in as a decision_id


def stand_in_decision(event: bytes) -> bytes:
    """What a bare relay answers: the event with a decision_id ("relay") spliced in
    after its 10-byte header. Events start with event_id, decisions with
    decision_id then event_id, so :func:`_decision_event_id` reads the event's id
    from it as from a decision."""
    return event[:10] + _STAND_IN_ID + event[10:]


def _relay(bootstrap: str, ns: str, batch: int, direct: bool, ready: Any, stop: Any) -> None:
    """The floor of the split pipeline's shape: a worker that forwards every event
    along the critical path of its hops — input → feature topic → gather topic →
    decisions (``direct``, the one-process path's shape: input → decisions) — and
    does nothing else (no decoding, validation, features, controls
    or state; offsets committed every second, outside any transaction). Same
    consumer subscription and assignment as a one-loop worker, same producers for
    the hops (idempotent, ``HOPS``) and the answers (``answer_producer``), one
    record per event and hop (tripwire packs them per partition). What reaches the
    decisions topic is the event with a stand-in decision_id spliced in front of
    its body (:func:`stand_in_decision`)."""
    from tripwire.connectors.kafka import answer_producer
    from tripwire.streams.topics import INPUTS
    from tripwire.streams.txn import HOPS

    inputs = [topic(k, ns) for k in INPUTS]
    feats, gather, decisions = (topic(k, ns) for k in ("features", "gather", "decisions"))
    following = {**{t: feats for t in inputs}, feats: gather}
    answered = set(inputs) if direct else {gather}
    c = consumer(bootstrap, f"{ns}relay", **{"partition.assignment.strategy": "range"})
    hops = producer(bootstrap, **HOPS)
    answers = answer_producer(bootstrap)
    assigned = threading.Event()
    c.subscribe(inputs if direct else [*inputs, feats, gather],
                on_assign=lambda *_: assigned.set())
    committed = time.monotonic()
    while not stop.is_set():
        for m in consume_available(c, batch, 0.005):
            if m.error() is not None:
                continue
            value, name = m.value() or b"", m.topic() or ""
            if name in answered:
                answers.produce(decisions, stand_in_decision(value), m.key())
            else:
                hops.produce(following[name], value, m.key())
        hops.poll(0)
        answers.poll(0)
        if assigned.is_set() and not ready.is_set():
            ready.set()
        if time.monotonic() - committed >= 1.0:
            committed = time.monotonic()
            with contextlib.suppress(KafkaException):  # nothing consumed yet
                c.commit(asynchronous=True)
    hops.flush(10)
    answers.flush(10)
    c.close()


def _decision_event_id(value: bytes) -> str:
    """A decision's event id, read from its first bytes without decoding the rest
    (1.7 KB: 35 µs to decode whole, 1 µs for the prefix; at 3,000 decisions/s the
    whole decode took a tenth of a core from what the harness measures). The
    Decision schema starts with two strings, decision_id and event_id (checked by
    :func:`_check_decision_prefix`)."""
    body = io.BytesIO(value)
    body.seek(10 if value[:2] == SINGLE_OBJECT_MAGIC else 5)  # else Confluent framing
    decoder = BinaryDecoder(body)
    decoder.read_utf8()  # decision_id
    return str(decoder.read_utf8())


def _check_decision_prefix(codec: AvroCodec) -> None:
    fields = codec.store.get(DECISION_SCHEMA).parsed["fields"][:2]
    if [(f["name"], f["type"]) for f in fields] != [("decision_id", "string"),
                                                     ("event_id", "string")]:
        raise RuntimeError(f"the Decision schema no longer starts with decision_id and "
                           f"event_id: {fields}; update bench.path._decision_event_id")


def _read_answer(codec: AvroCodec, answer: bytes | None) -> tuple[str | None, bool]:
    """The event an answer is for — a decision's, or the one a quarantine record
    refused (None when the refused bytes are no event at all) — and whether it is
    a decision taken without a feature node that did not answer in time."""
    if answer is None:
        return None, False
    rec = codec.decode(answer)[1]
    if "original" in rec:
        try:
            return str(codec.decode(rec["original"])[1]["event_id"]), False
        except DecodeError:
            return None, False
    partial = any(e.startswith("no answer") for e in rec["feature_errors"].values())
    return str(rec["event_id"]), partial


class Decisions:
    """Reads committed answers (decisions and quarantine records) as they appear;
    notes when each event's arrives — or, with ``count_only``, just counts them
    (no decoding: the harness should not take CPU from what it measures; a
    decision's event id is read from its first bytes)."""

    def __init__(self, bootstrap: str, ns: str, codec: AvroCodec,
                 count_only: bool = False) -> None:
        self.codec = codec
        self.count_only = count_only
        self.count = 0
        self.last = 0.0
        self.seen: dict[str, float] = {}
        self.decisions = topic("decisions", ns)
        _check_decision_prefix(codec)
        self.c = consumer(bootstrap, f"bench-reader-{uuid.uuid4().hex[:8]}")
        assign = []
        for key in ("decisions", "quarantine"):  # every event gets one or the other
            name = topic(key, ns)
            parts = self.c.list_topics(name, timeout=10).topics[name].partitions
            assign += [TopicPartition(name, p, OFFSET_BEGINNING) for p in parts]
        self.c.assign(assign)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for m in consume_available(self.c, 1000, 0.05):
                if m.error() is None and self.count_only:
                    self.count += 1
                    self.last = time.monotonic()
                elif m.error() is None:
                    now = time.monotonic()
                    value = m.value() or b""
                    eid = _decision_event_id(value) if m.topic() == self.decisions \
                        else _read_answer(self.codec, value)[0]
                    if eid is not None:
                        self.seen.setdefault(eid, now)

    def close(self) -> None:
        self.stop.set()
        self.t.join(10)
        self.c.close()


Layout = list[tuple[str, ...]]  # the stages of each worker process


def layout_of(spec: str, pipeline: str, workers: int) -> Layout:
    """``--layout``: worker processes separated by commas, each its stages joined by
    ``+`` (``intake+features,decide``, a loop per stage); ``per-stage``: ``workers``
    processes each running every stage, a loop each; empty or ``combined``:
    ``workers`` processes each running every stage in one loop (split; the one-process
    path with ``--pipeline one``)."""
    from tripwire.streams.runner import STAGES

    if not spec and pipeline == "one":
        return [ONE] * workers
    if spec in ("", COMBINED[0]):  # every stage in one loop per worker (the default)
        return [COMBINED] * workers
    if spec == "per-stage":
        spec = ",".join(["+".join(STAGES)] * workers)
    layout = [tuple(s for s in w.split("+") if s) for w in spec.split(",")]
    if pipeline == "one":
        raise ValueError("--layout places the split pipeline's stages: use it with "
                         "--pipeline split")
    if any(s not in STAGES for w in layout for s in w) or \
            {s for w in layout for s in w} != set(STAGES):
        raise ValueError(f"--layout {spec!r}: the split pipeline's stages ({', '.join(STAGES)}) "
                         "each in one worker or more")
    return layout


@dataclass
class _Workers:
    procs: list[Any]
    stop: Any  # a multiprocessing Event
    homes: list[Path]  # their state folders (RocksDB), deleted when they stop

    def close(self) -> None:
        self.stop.set()
        for x in self.procs:
            x.join(30)
        for home in self.homes:
            release(home)


def _start_workers(bootstrap: str, ns: str, layout: Layout, batch: int, mode: str,
                   rev: str | None = None, tally_to: str = "") -> _Workers:
    """One worker process per entry of ``layout`` (the stages it runs), their state in
    the same kind of scratch folder as the benchmark's broker (memory where there is
    room, see tripwire.broker.scratch); with ``mode`` RELAY, as many bare relays.
    ``rev``: the workers run that commit's tripwire (:mod:`bench.ab`), this harness.
    ``tally_to``: a folder where each worker leaves the primitives it counted
    (:mod:`bench.primitives`); today's workers only."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    procs = []
    homes = [] if mode == RELAY else [scratch_home("bench-worker") for _ in layout]
    for i, stages in enumerate(layout):
        ready = ctx.Event()
        if mode == RELAY:
            p = ctx.Process(target=_relay, args=(bootstrap, ns, batch, stages == ONE, ready,
                                                 stop), daemon=True)
        else:
            args = (bootstrap, ns, str(homes[i]), batch, mode, stages, ready, stop, POLL_S)
            p = ctx.Process(target=_worker, args=(*args, tally_to), daemon=True) \
                if rev is None else \
                ctx.Process(target=at_commit, args=(str(site_of(rev)), __name__, "_worker",
                                                    *args), daemon=True)
        p.start()
        procs.append((p, ready))
    workers = _Workers([p for p, _ in procs], stop, homes)
    for _, ready in procs:
        if not ready.wait(120):
            workers.close()
            raise RuntimeError("a worker did not start")
    return workers


def saturation(bootstrap: str, codec: AvroCodec, events: list[tuple[str, bytes, bytes, str]],
               layout: Layout, partitions: int, batch: int, mode: str,
               broker_cpu: Any, backlog: bool = False, rev: str | None = None,
               tally_to: str = "") -> dict[str, float]:
    """Workers join and settle first; then every event is offered at once and the
    rate is taken from the start of the offer to the last answer (the same origin
    for every mode: answers inside a transaction appear only at its commit).

    ``backlog``: the settled workers are suspended (SIGSTOP) while every event is
    published, then resumed: every partition is full when they go on, as after an
    outage; the rate and CPU are taken from the resume to the last answer."""
    ns = f"bench-path-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns, partitions=partitions)
    reader = Decisions(bootstrap, ns, codec, count_only=True)
    ws = _start_workers(bootstrap, ns, layout, batch, mode, rev, tally_to)
    procs = ws.procs
    time.sleep(3)  # the group settles: no rebalance inside the measurement
    if backlog:
        for x in procs:
            os.kill(x.pid, signal.SIGSTOP)
    cpu0 = [proc_cpu(x.pid) for x in procs]
    b0 = broker_cpu() or 0.0
    p = producer(bootstrap, **{"linger.ms": 20, "queue.buffering.max.messages": 2_000_000})
    start = time.monotonic()
    for tk, key, value, _ in events:
        p.produce(topic(tk, ns), value, key)
        p.poll(0)
    p.flush(120)
    if backlog:
        b0 = broker_cpu() or 0.0  # the publishing's share of the broker left out
        start = time.monotonic()
        for x in procs:
            os.kill(x.pid, signal.SIGCONT)
    while reader.count < len(events):  # one answer per event: decision or quarantine
        if time.monotonic() - start > 600:
            raise RuntimeError(f"only {reader.count} of {len(events)} answered in 600 s")
        time.sleep(0.01)
    last = reader.last
    cpu = sum(proc_cpu(x.pid) - c for x, c in zip(procs, cpu0, strict=True))
    bcpu = (broker_cpu() or 0.0) - b0
    ws.close()
    reader.close()
    n = len(events)
    return {"rate": n / max(last - start, 1e-9), "cpu_us": cpu / n * 1e6,
            "broker_us": bcpu / n * 1e6}


def _offer(p: Any, ns: str, events: list[tuple[str, bytes, bytes, str]], rate: int,
           sent: dict[str, float] | None = None) -> None:
    """Offer ``events`` at ``rate`` per second (every 5 ms, what is due by then),
    noting when each was sent."""
    tick = 0.005
    start = time.monotonic()
    i = 0
    while i < len(events):
        due = min(len(events), int((time.monotonic() - start) * rate) + 1)
        while i < due:
            tk, key, value, eid = events[i]
            p.produce(topic(tk, ns), value, key)
            if sent is not None:
                sent[eid] = time.monotonic()
            i += 1
        p.poll(0)
        time.sleep(tick)
    p.flush(60)


def _answered(bootstrap: str, ns: str, codec: AvroCodec) -> tuple[set[str], set[str]]:
    """Every event id with an answer on the topics now (decision or quarantine),
    and those decided without a feature node that did not answer in time."""
    from tripwire.connectors.events import read_to_end

    ids, partial = set(), set()
    for key in ("decisions", "quarantine"):
        for m in read_to_end(bootstrap, topic(key, ns)):
            eid, late = _read_answer(codec, m.value())
            if eid is not None:
                ids.add(eid)
                if late:
                    partial.add(eid)
    return ids, partial


def open_loop(bootstrap: str, codec: AvroCodec, events: list[tuple[str, bytes, bytes, str]],
              layout: Layout, partitions: int, batch: int, rate: int, mode: str,
              broker_cpu: Any, warm_s: float, figures: dict[str, float] | None = None,
              tally_to: str = "") -> list[float]:
    """Latency (ms) of every event offered at ``rate`` per second, after ``warm_s``
    seconds of the same offer, unmeasured: the group settles, the stores open and
    the broker's JIT compiles the paths this traffic takes (raw traffic does not
    warm them: after 30 s of it, C2 still took 40 % of a core here). ``tally_to``:
    as :func:`saturation`'s (the tallies cover the warm-up's events too)."""
    ns = f"bench-open-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns, partitions=partitions)
    reader = Decisions(bootstrap, ns, codec)
    ws = _start_workers(bootstrap, ns, layout, batch, mode, tally_to=tally_to)
    procs = ws.procs
    time.sleep(3)  # the group settles
    p = producer(bootstrap, **{"linger.ms": 1})
    n_warm = max(int(rate * warm_s), min(500, len(events) // 5))
    warm, events = events[:n_warm], events[n_warm:]
    _offer(p, ns, warm, rate)
    deadline = time.monotonic() + 120
    while len(reader.seen) < len(warm) and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu0 = [proc_cpu(x.pid) for x in procs]
    b0 = broker_cpu()
    sent: dict[str, float] = {}
    _offer(p, ns, events, rate, sent)
    deadline = time.monotonic() + 60
    while len(reader.seen) < len(warm) + len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)  # (the reader's answers include the warm-up's)
    cpu = sum(proc_cpu(x.pid) - c for x, c in zip(procs, cpu0, strict=True))
    b1 = broker_cpu()
    broker = "" if b0 is None or b1 is None else \
        f", the broker {(b1 - b0) / max(len(sent), 1) * 1e6:.0f}"
    if figures is not None:  # CPU per event over the measured offer
        figures["cpu_us"] = cpu / max(len(sent), 1) * 1e6
        figures["broker_us"] = float("nan") if b0 is None or b1 is None else \
            (b1 - b0) / max(len(sent), 1) * 1e6
    ws.close()
    reader.close()
    if mode == RELAY:  # stand-in decisions: nothing to read again
        later: set[str] = set()
        print(f"  open loop, {mode} (baseline): relays used "
              f"{cpu / max(len(sent), 1) * 1e6:.0f} µs CPU per event{broker}")
    else:
        later, late = _answered(bootstrap, ns, codec)  # read again, whole, after the run
        partial = sum(1 for e in sent if e in late)
        print(f"  open loop, {mode}: workers used {cpu / max(len(sent), 1) * 1e6:.0f} µs "
              f"CPU per event{broker}; {partial} of {len(sent)} decided without a feature "
              "node (timed out)")
    missing = [(tk, eid) for tk, _, _, eid in warm + events if eid not in reader.seen]
    if missing:
        kinds = Counter(tk for tk, _ in missing)
        warmed = sum(1 for _, eid in missing if eid not in sent)
        raise RuntimeError(f"{ns}: {len(missing)} events without an answer in time ({dict(kinds)}; "
                           f"{warmed} of the warm-up; "
                           f"{sum(1 for _, e in missing if e in later)} found on the topics "
                           f"afterwards); e.g. {missing[:3]}")
    return sorted((reader.seen[e] - t) * 1000 for e, t in sent.items())


def _raw_round(bootstrap: str, events: list[tuple[str, bytes, bytes, str]], partitions: int,
               broker_cpu: Any) -> dict[str, float]:
    """The baseline: a raw confluent-kafka consume → produce hop of the same messages."""
    from bench.passthrough import confluent_loop

    ns = f"bench-raw-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns, partitions=partitions)
    p = producer(bootstrap, **{"linger.ms": 20})
    for _tk, key, value, _ in events:
        produce_waiting(p, f"{ns}raw-in", value, key)  # a round larger than the queue
        p.poll(0)
    p.flush(60)
    b0 = broker_cpu() or 0.0
    wall, cpu = confluent_loop(bootstrap, f"{ns}raw-in", f"{ns}raw-out", len(events), None)
    return {"rate": len(events) / wall, "cpu_us": cpu / len(events) * 1e6,
            "broker_us": ((broker_cpu() or 0.0) - b0) / len(events) * 1e6}


def main(argv: list[str] | None = None) -> None:
    global POLL_S
    ap = argparse.ArgumentParser(prog="python -m bench path")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--pipeline", choices=("one", "split"), default="one",
                    help="one: the one-process path per partition; split: the live "
                         "intake → features → decide pipeline (exact for any partitioning)")
    ap.add_argument("--layout", default="",
                    help="split pipeline: '' or 'combined' (the default): --workers "
                         "processes each running every stage in one loop; 'per-stage': "
                         "--workers processes each running every stage, a loop each; or the "
                         "stages of each worker process, a loop each, e.g. "
                         "'intake+features,decide'")
    ap.add_argument("--modes", default="per-batch,eager",
                    help=f"how answers leave the loop, compared in one run: {', '.join(MODES)}")
    ap.add_argument("--rate", type=int, default=3000, help="open loop: events offered per s")
    ap.add_argument("--seconds", type=int, default=20, help="open loop: how long")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--catch-up", action="store_true",
                    help="each round also suspends the settled workers while every event is "
                    "published, then resumes them: the rate of working through a backlog, "
                    "next to saturation's")
    ap.add_argument("--warm-up", type=float, default=30.0,
                    help="open loop: seconds of the same offer before measuring")
    ap.add_argument("--poll-timeout", type=float, default=POLL_S,
                    help="seconds a worker's loop waits for input before it ticks "
                         "(default: tripwire run stage's)")
    args = ap.parse_args(argv)
    POLL_S = args.poll_timeout
    try:
        layout = layout_of(args.layout, args.pipeline, args.workers)
    except ValueError as exc:
        ap.error(str(exc))
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown mode(s) {sorted(unknown)}; modes: {', '.join(MODES)}")
    codec = AvroCodec(SchemaStore.default())
    t0 = int(time.time() * 1000) - 3_600_000
    events = _events(codec, args.events, t0, 31)
    speed = calibrate(codec)
    print("pipeline 'split' is the live one (exact features for any partitioning); 'one' "
          "keeps feature state per input partition (exact only within one topic-partition)")
    print(f"{len(events)} events (cards, logins, FPS; an attack inside); "
          f"{len(layout)} worker process(es) ({', '.join('+'.join(w) for w in layout)}), "
          f"pipeline {args.pipeline!r}, on "
          f"{args.partitions} partitions; {os.cpu_count()} cores; machine: {speed:.1f} µs "
          "per Avro decode")
    raws: list[dict[str, float]] = []
    sats: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    catches: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    lats: dict[str, list[float]] = {}
    with bench_cluster() as (cluster, broker_cpu):
        for _ in range(args.repeats):  # 0: the open loop only
            raws.append(_raw_round(cluster.bootstrap, events, args.partitions, broker_cpu))
            for mode in modes:  # alternating, so drift hits every mode alike
                sat = saturation(cluster.bootstrap, codec, events, layout,
                                 args.partitions, args.batch, mode, broker_cpu)
                sats[mode].append(sat)
                print(f"  round {mode}: raw {raws[-1]['rate']:,.0f}/s; path "
                      f"{sat['rate']:,.0f}/s ({sat['cpu_us']:.0f} µs worker CPU, "
                      f"{sat['broker_us']:.0f} µs broker)", flush=True)
                if args.catch_up:
                    caught = saturation(cluster.bootstrap, codec, events, layout,
                                        args.partitions, args.batch, mode, broker_cpu,
                                        backlog=True)
                    catches[mode].append(caught)
                    print(f"  round {mode}: catching up a backlog {caught['rate']:,.0f}/s "
                          f"({caught['cpu_us']:.0f} µs worker CPU)", flush=True)
        if args.seconds:  # 0: saturation only
            offered = offer_of(codec, args.rate, args.seconds + args.warm_up)
            for mode in [RELAY, *modes]:
                lats[mode] = open_loop(cluster.bootstrap, codec, offered, layout,
                                       args.partitions, args.batch, args.rate, mode,
                                       broker_cpu, args.warm_up)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows) if rows else float("nan")

    print(f"\nmedians of {args.repeats} rounds; command: python -m bench path "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"{'case':48} {'events/s':>9} {'µs CPU/event':>13} {'+broker µs':>11} "
          f"{'x raw CPU':>10} {'x first mode rate':>18}")
    base = med(raws, "cpu_us")
    print(f"{'raw confluent-kafka hop (same messages)':48} {med(raws, 'rate'):>9,.0f} "
          f"{base:>13.1f} {med(raws, 'broker_us'):>11.1f} {1:>10.2f} {'':>18}")
    first = med(sats[modes[0]], "rate") if modes and sats[modes[0]] else float("nan")
    for mode in modes:
        for what, rows in ((f"decision path ({args.pipeline}), {mode}", sats[mode]),
                           (f"  catching up a backlog, {mode}", catches[mode])):
            if rows:
                print(f"{what:48} {med(rows, 'rate'):>9,.0f} {med(rows, 'cpu_us'):>13.1f} "
                      f"{med(rows, 'broker_us'):>11.1f} {med(rows, 'cpu_us') / base:>10.2f} "
                      f"{med(rows, 'rate') / first:>18.2f}")
    floor: list[float] | None = None  # the relay chain's p50, p99
    for mode, lat in lats.items():
        if len(lat) < 2:
            print(f"open loop, {mode}: too few events to measure ({len(lat)}); offer more "
                  "with --rate and --seconds")
            continue
        q = statistics.quantiles(lat, n=100)
        name = "bare relays of the same shape (baseline)" if mode == RELAY else mode
        ratio = "" if floor is None else \
            f" (x baseline: p50 {q[49] / floor[0]:.1f}, p99 {q[98] / floor[1]:.1f})"
        print(f"open loop, {name}, {args.rate}/s for {args.seconds} s ({len(lat)} events): "
              f"event → readable answer p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
              f"max {lat[-1]:.1f} ms{ratio}")
        if mode == RELAY:
            floor = [q[49], q[98]]


if __name__ == "__main__":
    main()
