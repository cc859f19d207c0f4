"""Cost of the feature stage with the starting library, next to a raw
confluent-kafka pass-through measured in the same run.

  1. raw pass-through: batched consume → produce of the same number of messages
     as the feature stage reads (the baseline);
  2. feature stage on the real broker: the feature nodes consume the requests the
     intake writes for N events, keep exact windows in RocksDB with changelogs,
     and write fragments; CPU per *event* (all its entity nodes);
  3. the stage's own work per event, in process (decode requests, state get,
     windows, put, encode fragments): median and p99 — what it adds to an
     event's latency besides the Kafka hop;
  4. state size: distinct card keys with a few events each, RocksDB on disk.

    .venv/bin/python -m bench features --events 20000 --state-keys 200000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import bench_cluster
from tripwire.connectors.kafka import producer
from tripwire.connectors.simulator import mixed_traffic
from tripwire.features.engine import FeatureLibrary, encode_state
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.state.rocks import RocksStore
from tripwire.streams.intake import IntakeStage
from tripwire.streams.loop import BatchLoop
from tripwire.streams.nodes import FeatureStage
from tripwire.streams.topics import create_topics, topic

__all__ = ["main"]


class TimedStage(FeatureStage):
    """The feature stage, noting when its first batch started and counting the
    entity requests it applied (a run ends when every one was).

    ``made_beforehand``: its requests were made here, from no input a loop watches.
    Were it told to order them by those inputs, it would hold every one for ever
    (and a bench that waited only for their reading, as this one did from issue 18
    to 26, would measure no feature at all)."""

    def __init__(self, codec: AvroCodec, lib: FeatureLibrary,
                 made_beforehand: bool = True) -> None:
        super().__init__(codec, lib)
        if made_beforehand:
            self.watches = ()
        self.marks: dict[str, float] = {}
        self.done = 0

    def start_clock(self) -> None:
        """Wall and this process's CPU time, at the first batch."""
        if "wall" not in self.marks:
            self.marks["wall"], self.marks["cpu"] = time.monotonic(), time.process_time()

    def _apply(self, *args: Any, **kwargs: Any) -> None:
        self.done += 1
        super()._apply(*args, **kwargs)

    def process(self, batch: Any, now_ms: int, state: Any) -> Any:
        self.start_clock()
        return super().process(batch, now_ms, state)

    def run(self, loop: BatchLoop, requests: int, broker_cpu: Callable[[], float | None]) \
            -> tuple[float, float, float]:
        """Run ``loop`` (which feeds this stage) in a thread until ``requests`` are
        applied: wall seconds and this process's CPU seconds from the first batch,
        and the broker's CPU seconds meanwhile."""
        stop = threading.Event()
        th = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        b0 = broker_cpu() or 0.0
        th.start()
        deadline = time.monotonic() + 600
        try:
            while self.done < requests:
                if not th.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the feature stage applied {self.done} of {requests} "
                                       "requests (see any error above)")
                time.sleep(0.01)
            return (time.monotonic() - self.marks["wall"],
                    time.process_time() - self.marks["cpu"], (broker_cpu() or 0.0) - b0)
        finally:
            stop.set()
            th.join(30)


def _traffic(codec: AvroCodec, n: int, t0: int) -> list[InRecord]:
    out = []
    # a bank's cardinalities: every account, device, IP, payee and merchant is seen
    # a few times; the system-wide key sees every event
    traffic = mixed_traffic(11, t0, n, accounts=max(8, n // 3), devices=max(5, n // 4),
                            ips=max(4, n // 5), payees=max(5, n // 10),
                            merchants=max(6, n // 50))
    for i, (kind, ev) in enumerate(traffic):
        value = codec.encode(f"tripwire.events.{kind}", ev)
        out.append(InRecord(f"in-{kind}", 0, i, b"k", value, t0))
    return out


def intake_requests(codec: AvroCodec, lib: FeatureLibrary, records: list[InRecord],
                    now: int, batch: int, partitions: int = 3) \
        -> tuple[list[list[OutRecord]], int]:
    """The intake's packed feature requests, one list per intake batch of
    ``batch`` events; and the number of entity requests they hold."""
    intake = IntakeStage(codec, lib)
    intake.partitions = dict.fromkeys(intake.routes, partitions)
    state = StateManager("bench-intake", list(intake.stores))
    chunks, n = [], 0
    for i in range(0, len(records), batch):
        outs = [o for o in intake.process(records[i:i + batch], now, state)
                if o.topic_key.startswith("features")]
        n += sum(codec.decode(o.value)[1]["count"] for o in outs)
        chunks.append(outs)
    return chunks, n


def _stage_in_process(codec: AvroCodec, lib: FeatureLibrary,
                      chunks: list[list[OutRecord]]) -> list[float]:
    """Time per intake batch (every event in it waits that long)."""
    stage = FeatureStage(codec, lib)
    stage.partitions = {"gather": 3}
    with tempfile.TemporaryDirectory() as d:
        state = StateManager(stage.name, list(stage.stores), root=Path(d))
        times = []
        clock = time.perf_counter_ns
        for outs in chunks:
            recs = [InRecord(o.topic_key, o.partition or 0, 0, o.key, o.value, 0)
                    for o in outs]
            t = clock()
            stage.process(recs, 0, state)
            times.append((clock() - t) / 1000)
            state.pending.clear()
        state.close()
    return times


def _state_size(lib: FeatureLibrary, keys: int, t0: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as d:
        store = RocksStore(Path(d) / "db")
        for i in range(keys):
            state: dict = {}
            for j in range(3):
                view = {"event_type": "CardPayment", "kind": "AUTHORISATION",
                        "merchant_id": f"m-{j}", "response": "APPROVED",
                        "amount_gbp_minor": 1000 + j, "card_not_present": j == 2,
                        "small_amount": False}
                lib.compute("card", state, view, t0 + j * 1000)
            store.put(f"card|tok-{i:09d}".encode(), encode_state(state))
        store.close()
        size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())
    return size, size / keys


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench features")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--state-keys", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--intake-batch", type=int, default=500,
                    help="events per intake batch (the loop's default batch size)")
    args = ap.parse_args(argv)
    from bench.passthrough import confluent_loop

    codec, lib = AvroCodec(SchemaStore.default()), FeatureLibrary()
    t0 = int(time.time() * 1000) - 3_600_000
    records = _traffic(codec, args.events, t0)
    chunks, n_req = intake_requests(codec, lib, records, t0 + 3_600_000, args.intake_batch)
    reqs = [o for outs in chunks for o in outs]
    print(f"{len(records)} events → {n_req} feature requests "
          f"({n_req / len(records):.2f} entity nodes per event) packed into {len(reqs)} "
          f"records (intake batches of {args.intake_batch}), {len(lib.specs)} features on "
          f"{len(lib.entities())} entities; {os.cpu_count()} cores")

    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)

    def cpu_of_broker() -> float:
        return broker_cpu() or 0.0

    with bench_cluster() as (cluster, broker_cpu):
        for _ in range(args.repeats):
            ns = f"bench-{uuid.uuid4().hex[:6]}."
            create_topics(cluster.bootstrap, ns, partitions=3)
            p = producer(cluster.bootstrap, **{"linger.ms": 20,
                                               "queue.buffering.max.messages": 1_000_000})
            for o in reqs:
                p.produce(topic(o.topic_key, ns), o.value, o.key, partition=o.partition or 0)
                # the same again, for the baseline
                p.produce(f"{ns}raw-in", o.value, o.key)
                p.poll(0)
            p.flush(60)

            b0 = cpu_of_broker()
            wall, cpu = confluent_loop(cluster.bootstrap, f"{ns}raw-in", f"{ns}raw-out",
                                       len(reqs), None)
            bcpu = cpu_of_broker() - b0
            rows["raw pass-through (same messages)"].append((len(records) / wall,
                                                             cpu / len(records) * 1e6,
                                                             bcpu / len(records) * 1e6))

            timed = TimedStage(codec, lib)
            state_dir = Path(tempfile.mkdtemp(prefix="bench-features-"))
            loop = BatchLoop(cluster.bootstrap, f"{ns}features",
                             [topic("features", ns)],
                             timed, namespace=ns, batch_size=1000,
                             state_dir=state_dir)
            wall, cpu, bcpu = timed.run(loop, n_req, broker_cpu)
            shutil.rmtree(state_dir, ignore_errors=True)
            rows["feature stage (Kafka, txn, rocksdict)"].append(
                (len(records) / wall, cpu / len(records) * 1e6, bcpu / len(records) * 1e6))

    small, _ = intake_requests(codec, lib, records, t0 + 3_600_000, 50)
    stage_times = [_stage_in_process(codec, lib, small) for _ in range(args.repeats)]
    size, per_key = _state_size(lib, args.state_keys, t0)

    print(f"\nmedians of {args.repeats} rounds; command: python -m bench features "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"{'case':40} {'events/s':>9} {'µs CPU/event':>13} {'+broker µs':>11} "
          f"{'x raw':>6}")
    base = statistics.median(r[1] for r in rows["raw pass-through (same messages)"])
    for name, rs in rows.items():
        rate = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        bro = statistics.median(r[2] for r in rs)
        print(f"{name:40} {rate:>9,.0f} {cpu:>13.1f} {bro:>11.1f} {cpu / base:>6.2f}")
    feat = statistics.median(r[1] for r in rows["feature stage (Kafka, txn, rocksdict)"])
    print(f"feature stage adds {feat - base:.1f} µs CPU per event over the raw hop "
          f"(target ≤ 100 µs)")
    p50 = statistics.median(statistics.median(t) for t in stage_times)
    p99 = statistics.median(sorted(t)[int(len(t) * 0.99)] for t in stage_times)
    print(f"stage work in process, batches of 50 events (the latency each event in a batch "
          f"waits): p50 {p50 / 1000:.2f} ms, p99 {p99 / 1000:.2f} ms; "
          f"{p50 / 50:.1f} µs per event at p50")
    print(f"state: {args.state_keys:,} card keys (3 events each) = {size / 1e6:.1f} MB on "
          f"disk, {per_key:.0f} B/key → {per_key * 1e6 / 1e9:.2f} GB per million keys")
