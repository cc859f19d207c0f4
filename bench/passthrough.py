"""Consume → produce pass-through cost per event on the real broker.

Compares, in one run against one broker:
  * confluent-kafka batched loop, raw bytes (the baseline);
  * confluent-kafka batched loop with fastavro decode + encode;
  * tripwire's hot path: BatchLoop (one transaction per batch) + DecisionPath;
  * a faust-streaming agent relaying each message with ``await topic.send()``.

CPU is measured from /proc for the client process and, for the local broker,
the broker JVM too. Each case runs ``--repeats`` times; medians are printed.

    .venv/bin/python -m bench passthrough --events 100000 --faust-events 20000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from bench.common import bench_cluster, proc_cpu
from tripwire.broker import KafkaCluster
from tripwire.connectors.kafka import consumer, producer
from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.topics import TopicSpec, create_topics

__all__ = ["main"]

@dataclass
class Result:
    name: str
    events: int
    wall: float
    client_cpu: float
    broker_cpu: float | None

    @property
    def rate(self) -> float:
        return self.events / self.wall

    def us(self, cpu: float) -> float:
        return cpu / self.events * 1e6


def _topics(bootstrap: str, ns: str, names: list[str], partitions: int) -> None:
    create_topics(bootstrap, ns, [TopicSpec(n, n, "bench", partitions=partitions)
                                  for n in names])


def _preload(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    p = producer(bootstrap, **{"linger.ms": 20, "batch.num.messages": 10000})
    for i, v in enumerate(payloads):
        while True:
            try:
                p.produce(topic, v, str(i % 997).encode())
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def _wait_count(bootstrap: str, topic: str, n: int, timeout: float,
                proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> float:
    """Wait until ``topic``'s end offsets sum to ``n``; returns when that was seen.
    Fails early, with the end of its log, when the producing process ``proc`` died."""
    c = consumer(bootstrap, f"bench-watch-{uuid.uuid4().hex[:6]}")
    md = c.list_topics(topic, timeout=10)
    tps = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            total = sum(c.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in tps)
            if total >= n:
                return time.monotonic()
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                raise RuntimeError(f"relay exited with {proc.returncode}:\n{tail}")
            time.sleep(0.02)
    finally:
        c.close()
    raise TimeoutError(f"{topic}: fewer than {n} messages after {timeout}s")


def confluent_loop(bootstrap: str, src: str, dst: str, n: int,
                   transform: Callable[[bytes], bytes] | None) -> tuple[float, float]:
    """A plain batched consume(1000) → produce loop; returns (wall, client CPU)."""
    c = consumer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}", **{"isolation.level":
                                                                 "read_uncommitted"})
    p = producer(bootstrap, **{"linger.ms": 5, "batch.num.messages": 10000})
    c.subscribe([src])
    seen = 0
    start_wall = start_cpu = 0.0
    while seen < n:
        msgs = c.consume(1000, 0.5)
        if not msgs:
            continue
        if seen == 0:
            start_wall, start_cpu = time.monotonic(), time.process_time()
        for m in msgs:
            if m.error():
                continue
            v = m.value() or b""
            while True:
                try:
                    p.produce(dst, transform(v) if transform else v, m.key())
                    break
                except BufferError:
                    p.poll(0.01)
            seen += 1
        p.poll(0)
        c.commit(asynchronous=True)
    p.flush(60)
    wall, cpu = time.monotonic() - start_wall, time.process_time() - start_cpu
    c.close()
    return wall, cpu


def tripwire_hot_path(bootstrap: str, src: str, ns: str, n: int) -> tuple[float, float]:
    marks: dict[str, float] = {}

    class Timed(DecisionPath):
        def process(self, batch: Any, now_ms: int, state: Any) -> Any:
            if "wall" not in marks:
                marks["wall"], marks["cpu"] = time.monotonic(), time.process_time()
            return super().process(batch, now_ms, state)

    base = DecisionPath.default()
    loop = BatchLoop(bootstrap, f"bench-hot-{uuid.uuid4().hex[:8]}", [src],
                     Timed(base.codec, base.controls), namespace=ns, batch_size=1000,
                     state_dir=Path(os.environ.get("TMPDIR", "/tmp")) / f"{ns}state")
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    t.start()
    while loop.stats.consumed < n:
        time.sleep(0.01)
    wall, cpu = time.monotonic() - marks["wall"], time.process_time() - marks["cpu"]
    stop.set()
    t.join(30)
    return wall, cpu


def faust_relay(bootstrap: str, ns: str, payloads: list[bytes]) -> tuple[float, float]:
    src, dst = f"{ns}faust-in", f"{ns}faust-out"
    _topics(bootstrap, "", [src, dst], 1)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"{ns}faust-relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tripwire.streams.faust_app", "relay", "--bootstrap",
             bootstrap, "--source", src, "--sink", dst, "--app-id", f"{ns}relay"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _preload(bootstrap, src, [b"warm-up"])
        _wait_count(bootstrap, dst, 1, 120, proc, log)
        cpu0, wall0 = proc_cpu(proc.pid), time.monotonic()
        _preload(bootstrap, src, payloads)
        done = _wait_count(bootstrap, dst, len(payloads) + 1, 600, proc, log)
        return done - wall0, proc_cpu(proc.pid) - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(cluster: KafkaCluster, broker_cpu: Callable[[], float | None], events: int,
        faust_events: int,
        repeats: int, say: Callable[[str], None]) -> list[list[Result]]:
    codec = AvroCodec(SchemaStore.default())
    payloads = [codec.encode(CARD_SCHEMA, e)
                for e in normal_card_payments(1, int(time.time() * 1000) - 3_600_000, events)]
    say(f"payload: {statistics.mean(map(len, payloads)):.0f} bytes avg (Avro card payment)")
    schema = codec.store.get(CARD_SCHEMA)

    def avro(v: bytes) -> bytes:
        _, rec = codec.decode(v)
        return codec.encode(schema.name, rec)

    bootstrap = cluster.bootstrap
    rounds: list[list[Result]] = []
    for r in range(repeats):
        ns = f"bench-{uuid.uuid4().hex[:6]}."
        _topics(bootstrap, ns, ["in", "out", "out2"], 3)
        create_topics(bootstrap, ns, partitions=3)
        _preload(bootstrap, f"{ns}in", payloads)
        results = []
        cases: list[tuple[str, int, Callable[[], tuple[float, float]]]] = [
            ("confluent-kafka raw", events,
             partial(confluent_loop, bootstrap, f"{ns}in", f"{ns}out", events, None)),
            ("confluent-kafka + fastavro", events,
             partial(confluent_loop, bootstrap, f"{ns}in", f"{ns}out2", events, avro)),
            ("tripwire hot path (txn)", events,
             partial(tripwire_hot_path, bootstrap, f"{ns}in", ns, events)),
            ("faust agent relay", faust_events,
             partial(faust_relay, bootstrap, ns, payloads[:faust_events])),
        ]
        for name, n, fn in cases:
            b0 = broker_cpu()
            wall, cpu = fn()
            b1 = broker_cpu()
            bcpu = b1 - b0 if b0 is not None and b1 is not None else None
            res = Result(name, n, wall, cpu, bcpu)
            results.append(res)
            say(f"  round {r + 1}: {name:28} {res.rate:>9,.0f} msg/s "
                f"{res.us(cpu):7.1f} µs CPU/msg (client)")
        rounds.append(results)
    return rounds


def report(rounds: list[list[Result]]) -> str:
    names = [r.name for r in rounds[0]]
    med = {}
    for i, name in enumerate(names):
        rs = [rnd[i] for rnd in rounds]
        med[name] = (
            statistics.median(r.rate for r in rs),
            statistics.median(r.us(r.client_cpu) for r in rs),
            statistics.median(r.us(r.client_cpu + (r.broker_cpu or 0)) for r in rs)
            if rs[0].broker_cpu is not None else float("nan"),
            rs[0].events,
        )
    base = med[names[0]]
    lines = [f"{'case':30} {'events':>7} {'msg/s':>9} {'µs CPU client':>14} "
             f"{'µs CPU +broker':>15} {'x baseline CPU':>15}"]
    for name in names:
        rate, cl, tot, n = med[name]
        lines.append(f"{name:30} {n:>7} {rate:>9,.0f} {cl:>14.1f} {tot:>15.1f} "
                     f"{cl / base[1]:>15.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench passthrough")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--faust-events", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with bench_cluster() as (cluster, broker_cpu):
        rounds = run(cluster, broker_cpu, args.events, args.faust_events, args.repeats, print)
    print(f"\nmedians of {args.repeats} rounds "
          f"(command: python -m bench passthrough {' '.join(argv or sys.argv[2:])})")
    print(report(rounds))
