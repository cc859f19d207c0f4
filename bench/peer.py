"""tripwire next to a peer, on the same broker and the same events: Quix Streams
(built on confluent-kafka and RocksDB, like tripwire) computing one exact
sliding 10-minute count per card, exactly once, against tripwire's whole
decision path (every feature of the library, every control), each with 1 and
with 2 worker processes on a partitioned topic.

Both are measured the same way: the workers join and settle, are suspended
(SIGSTOP) while every card payment is published, then resumed; the rate is taken
from the resume to the end — for tripwire, the last decision readable; for Quix,
its group's committed offsets at the end of the input (it commits every second,
its outputs in the same transaction) — and the CPU of the workers and of the
broker over the same span. Rounds alternate, so drift hits both alike.

Quix pins confluent-kafka below the version tripwire uses, so it runs in a
virtual environment of its own, made on first use in tripwire's cache folder
(``bench/peer_quix.py`` is what it runs).

    .venv/bin/python -m bench peer --events 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import bench_cluster, calibrate, proc_cpu
from bench.features import TimedStage, intake_requests
from bench.path import layout_of, saturation
from tripwire.config import Settings
from tripwire.connectors.kafka import admin as kafka_admin
from tripwire.connectors.kafka import consumer, producer
from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.features.engine import FeatureLibrary
from tripwire.features.spec import FeatureSpec
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.loop import BatchLoop
from tripwire.streams.processor import Processor
from tripwire.streams.runner import Combined, stage_topics
from tripwire.streams.stages import STAGES, Parts
from tripwire.streams.topics import create_topics, topic

__all__ = ["main", "peer_lines", "peer_rounds"]

QUIX = "quixstreams[avro]==3.28.1"
# the peer's one feature, as a tripwire feature
ONE_FEATURE = FeatureLibrary([FeatureSpec("card_payments_10m", "card", "count", "10m",
                                          where={"event_type": "CardPayment"})])
SCRIPT = Path(__file__).with_name("peer_quix.py")
Events = list[tuple[str, bytes, bytes, str]]


def peer_python(cache: Path) -> Path:
    """The peer's interpreter, in a virtual environment made on first use."""
    home = cache / f"peer-{QUIX.replace('[avro]==', '-')}"
    python = home / "bin" / "python"
    if not python.exists():
        print(f"making the peer's virtual environment ({QUIX}) in {home} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
        # without PYTHONPATH: a checkout on it would show pip tripwire's metadata, and
        # pip would print tripwire's requirements as conflicts of the peer's venv
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", QUIX], check=True,
                       stdin=subprocess.DEVNULL, env=env)
    return python


def card_events(codec: AvroCodec, n: int, t0: int | None = None) -> Events:
    """(topic key, key, value, event id): card payments keyed by card, in event time,
    from ``t0`` (by default six hours ago)."""
    t0 = int(time.time() * 1000) - 6 * 3_600_000 if t0 is None else t0
    return [("card_payments", e["card_token"].encode(), codec.encode(CARD_SCHEMA, e),
             e["event_id"])
            for e in normal_card_payments(26, t0, n, cards=max(100, n // 20))]


def _group_ready(admin: AdminClient, group: str, partitions: int, timeout: float) -> None:
    """Until the group is stable with every input partition assigned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=5)
            assigned = sum(len(m.assignment.topic_partitions) for m in desc.members
                           if m.assignment is not None)
            if desc.state.name == "STABLE" and assigned >= partitions:
                return
        except Exception:  # not there yet: asked again
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the peer's group {group} did not settle in {timeout:.0f} s")


def quix_round(bootstrap: str, codec: AvroCodec, events: Events, partitions: int,
               workers: int, broker_cpu: Any, python: Path) -> dict[str, float]:
    """The peer's rate and CPU through a backlog of ``events`` (module docstring)."""
    ns = f"bench-peer-{uuid.uuid4().hex[:6]}"
    source, sink, group = f"{ns}.card_payments", f"{ns}.card_counts", f"{ns}.quix"
    admin = kafka_admin(bootstrap)
    for f in admin.create_topics([NewTopic(t, partitions, 1) for t in (source, sink)]).values():
        f.result(30)
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        schema = Path(tmp) / "card_payment.avsc"
        schema.write_text(json.dumps(codec.store.get(CARD_SCHEMA).source))
        procs = [subprocess.Popen(
            [str(python), str(SCRIPT), "--bootstrap", bootstrap, "--input", source,
             "--output", sink, "--group", group, "--schema", str(schema),
             "--state-dir", str(Path(tmp) / f"state-{i}")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(workers)]
        try:
            _group_ready(admin, group, partitions, 120)
            time.sleep(3)  # as tripwire's workers get: no rebalance inside the measurement
            for p in procs:
                os.kill(p.pid, signal.SIGSTOP)
            prod = producer(bootstrap, **{"linger.ms": 20,
                                          "queue.buffering.max.messages": 2_000_000})
            for _, key, value, _ in events:
                prod.produce(source, value, key)
                prod.poll(0)
            prod.flush(120)
            watch = consumer(bootstrap, group)  # reads the group's commits, never joins it
            tps = [TopicPartition(source, p) for p in range(partitions)]
            ends = {tp.partition: watch.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
            cpu0, b0, start = [proc_cpu(p.pid) for p in procs], broker_cpu() or 0.0, \
                time.monotonic()
            for p in procs:
                os.kill(p.pid, signal.SIGCONT)
            while True:
                done = watch.committed(tps, timeout=10)
                if all(tp.offset >= ends[tp.partition] for tp in done):
                    break
                if time.monotonic() - start > 600 or any(p.poll() is not None for p in procs):
                    raise RuntimeError("the peer did not finish: " + " | ".join(
                        (p.stderr.read().decode(errors="replace")[-1500:] if p.stderr and
                         p.poll() is not None else "running") for p in procs))
                time.sleep(0.05)
            wall = time.monotonic() - start
            cpu = sum(proc_cpu(p.pid) - c for p, c in zip(procs, cpu0, strict=True))
            bcpu = (broker_cpu() or 0.0) - b0
            watch.close()
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGCONT)
                    p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    n = len(events)
    return {"rate": n / wall, "cpu_us": cpu / n * 1e6, "broker_us": bcpu / n * 1e6}


class _TimedCombined(Combined):
    """Stages in one loop, noting on ``timed`` when the loop's first batch started."""

    def __init__(self, stages: Any, timed: TimedStage) -> None:
        super().__init__(stages)
        self.timed = timed

    def process(self, batch: Any, now_ms: int, state: Any) -> Any:
        self.timed.start_clock()
        return super().process(batch, now_ms, state)


def feature_round(bootstrap: str, codec: AvroCodec, events: Events, partitions: int,
                  broker_cpu: Any, with_intake: bool) -> dict[str, float]:
    """The peer's one feature through tripwire, one worker, in this process (a loop
    in a thread; the harness only sleeps meanwhile):

    * ``with_intake``: the intake and the feature stage in one loop, from the same
      card payments (validated, deduplicated, packed into requests) to the values
      on the gather topic: what Quix does, through tripwire;
    * otherwise the feature stage alone, on the intake's requests made beforehand
      (packed as the intake packs them, 500 events a batch).

    The rate from the first batch to the last event's value, as ``bench features``."""
    ns = f"bench-peer-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns, partitions=partitions)
    prod = producer(bootstrap, **{"linger.ms": 20, "queue.buffering.max.messages": 2_000_000})
    stage = TimedStage(codec, ONE_FEATURE, made_beforehand=not with_intake)
    processor: Processor = stage
    if with_intake:
        for tk, key, value, _ in events:
            prod.produce(topic(tk, ns), value, key)
            prod.poll(0)
        processor = _TimedCombined([(STAGES["intake"].build(Parts(codec, library=ONE_FEATURE)),
                                     stage_topics("intake", ns)),
                                    (stage, stage_topics("features", ns))], stage)
    else:
        records = [InRecord("card_payments", 0, i, key, value, 0)
                   for i, (_, key, value, _) in enumerate(events)]
        chunks, _ = intake_requests(codec, ONE_FEATURE, records, int(time.time() * 1000),
                                    500, partitions)
        for o in (o for outs in chunks for o in outs):
            prod.produce(topic(o.topic_key, ns), o.value, o.key, partition=o.partition or 0)
            prod.poll(0)
    prod.flush(120)
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as state:
        loop = BatchLoop(bootstrap, f"{ns}one-feature", sorted(processor.owners) if
                         with_intake else [topic("features", ns)], processor, namespace=ns,
                         batch_size=1000, state_dir=Path(state), commit_interval_ms=1000)
        wall, cpu, bcpu = stage.run(loop, len(events), broker_cpu)
    n = len(events)
    return {"rate": n / wall, "cpu_us": cpu / n * 1e6, "broker_us": bcpu / n * 1e6}


Rows = dict[tuple[str, int], list[dict[str, float]]]


def peer_rounds(bootstrap: str, broker_cpu: Any, codec: AvroCodec, events: Events,
                partitions: int, counts: list[int], repeats: int, python: Path) -> Rows:
    """Quix and tripwire alternated, ``repeats`` rounds of each worker count (with
    1 worker, tripwire's intake and feature stage and its feature stage alone
    too): each side's figures by (side, workers)."""
    rows: Rows = {}
    for r in range(repeats):
        for w in counts:  # alternating: drift hits both alike
            q = quix_round(bootstrap, codec, events, partitions, w, broker_cpu, python)
            t = saturation(bootstrap, codec, events, layout_of("", "split", w), partitions,
                           500, "eager", broker_cpu, backlog=True)
            rows.setdefault(("quix", w), []).append(q)
            rows.setdefault(("tripwire", w), []).append(t)
            if w == 1:
                for side, intake in (("intake", True), ("feature", False)):
                    rows.setdefault((side, 1), []).append(feature_round(
                        bootstrap, codec, events, partitions, broker_cpu, intake))
            print(f"peer round {r + 1}, {w} worker(s): Quix {q['rate']:,.0f}/s "
                  f"({q['cpu_us']:.0f} µs CPU); tripwire {t['rate']:,.0f}/s "
                  f"({t['cpu_us']:.0f} µs CPU)", flush=True)
    return rows


def peer_lines(rows: Rows, counts: list[int]) -> list[str]:
    """The peer's table (medians of the rounds), and each side's workers against
    the fewest. Lines to print."""
    def med(side: str, w: int, key: str) -> float:
        return statistics.median(x[key] for x in rows[(side, w)])

    lines = [f"{'case':70} {'events/s':>9} {'µs CPU/event':>13} {'+broker µs':>11} "
             f"{'x Quix rate':>12}"]
    names = {"quix": "Quix Streams: one sliding 10-min count per card (baseline)",
             "tripwire": "tripwire: the whole decision path",
             "intake": "tripwire's intake and feature stage, the same one count",
             "feature": "  ... its feature stage alone (requests made beforehand)"}
    for w in counts:
        for side in ("quix", "tripwire", "intake", "feature"):
            if (side, w) not in rows:
                continue
            ratio = med(side, w, "rate") / med("quix", w, "rate")
            name = f"{names[side]}, {w} worker(s)"
            lines.append(f"{name:70} {med(side, w, 'rate'):>9,.0f} "
                         f"{med(side, w, 'cpu_us'):>13.1f} {med(side, w, 'broker_us'):>11.1f} "
                         f"{ratio:>12.2f}")
    if len(counts) > 1:
        lo, hi = min(counts), max(counts)
        for side in ("quix", "tripwire"):
            lines.append(f"{side}: {hi} workers against {lo}: "
                         f"x{med(side, hi, 'rate') / med(side, lo, 'rate'):.2f} the rate")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench peer")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--workers", default="1,2", help="worker processes, compared (each side)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w]
    python = peer_python(Settings().cache_dir)
    codec = AvroCodec(SchemaStore.default())
    events = card_events(codec, args.events)
    print(f"{len(events)} card payments ({args.events // max(100, args.events // 20)} per "
          f"card), {args.partitions} partitions; {os.cpu_count()} cores; machine: "
          f"{calibrate(codec):.1f} µs per Avro decode; peer: {QUIX}")
    with bench_cluster() as (cluster, broker_cpu):
        rows = peer_rounds(cluster.bootstrap, broker_cpu, codec, events, args.partitions,
                           counts, args.repeats, python)
    print(f"\nmedians of {args.repeats} rounds; command: python -m bench peer "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    for line in peer_lines(rows, counts):
        print(line)


if __name__ == "__main__":
    main()
