"""What one Kafka transaction costs the loop that waits for it.

A transactional producer sends a record to each of N partitions, adds consumer
offsets and commits, over and over: back to back (what a loop committing every
batch does) and with a gap between commits (what a loop committing every
``commit_interval_ms`` in the background does). librdkafka's default retry
backoff (100 ms) is the baseline: a transaction begun just after a commit meets
CONCURRENT_TRANSACTIONS until the broker has written the commit markers, and the
client waits its backoff before trying again.

    .venv/bin/python -m bench txn --transactions 120 --partitions 1,14
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import bench_cluster
from tripwire.streams.topics import TopicSpec, create_topics
from tripwire.streams.txn import TXN_RETRY

__all__ = ["main"]

CASES: list[tuple[str, dict[str, Any], float]] = [  # name, producer settings, gap (s)
    ("librdkafka defaults, back to back (baseline)", {}, 0.0),
    ("tripwire's retry backoff, back to back", TXN_RETRY, 0.0),
    ("tripwire's retry backoff, 50 ms between commits", TXN_RETRY, 0.05),
]


def _latencies(bootstrap: str, outputs: list[str], source: str, n: int,
               conf: dict[str, Any], gap: float, broker_cpu: Any) -> tuple[list[float], float]:
    """Latencies (ms) of the measured transactions, and the broker's CPU (ms) per
    transaction over them (nan when the broker is not a local process of ours)."""
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-txn-{uuid.uuid4()}",
                      "enable.auto.commit": False})
    group.subscribe([source])
    group.poll(3)  # join: the group metadata must name a live generation
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex,
                  "linger.ms": 2, **conf})
    p.init_transactions(30)
    out = []
    skip = min(20, n // 5)  # the first ones are not counted (connections, JIT)
    b0 = float("nan")
    for i in range(n):
        if i == skip:
            b0 = broker_cpu() or float("nan")
        started = time.perf_counter()
        p.begin_transaction()
        for name in outputs:
            p.produce(name, b"x" * 100, b"k")
        p.send_offsets_to_transaction([TopicPartition(source, 0, i + 1)],
                                      group.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(gap)
    b1 = broker_cpu() or float("nan")
    group.close()
    return out[skip:], (b1 - b0) / max(n - skip, 1) * 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench txn")
    ap.add_argument("--transactions", type=int, default=120)
    ap.add_argument("--partitions", default="1,14",
                    help="partitions written per transaction, comma list")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.partitions.split(",")]
    with bench_cluster() as (cluster, broker_cpu):
        ns = f"bench-txn-{uuid.uuid4().hex[:6]}."
        names = [f"out-{i}" for i in range(max(counts))]
        create_topics(cluster.bootstrap, ns, [TopicSpec(n, n, "bench", partitions=1)
                                              for n in [*names, "in"]])
        rows = []
        for parts in counts:
            base = float("nan")
            for i, (name, conf, gap) in enumerate(CASES):
                lat, bms = _latencies(cluster.bootstrap, [ns + x for x in names[:parts]],
                                      ns + "in", args.transactions, conf, gap, broker_cpu)
                q = statistics.quantiles(lat, n=100)
                if i == 0:  # the first case is the baseline
                    base = q[49]
                rows.append((parts, name, q[49], q[98], q[49] / base, bms))
                print(f"  {parts} partition(s), {name}: p50 {q[49]:.1f} ms, broker "
                      f"{bms:.1f} ms CPU per transaction", flush=True)
    print(f"\ncommand: python -m bench txn {' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"{'partitions':>10}  {'case':50} {'p50 ms':>7} {'p99 ms':>7} {'x baseline p50':>15} "
          f"{'broker CPU ms/txn':>18}")
    for parts, name, p50, p99, ratio, bms in rows:
        print(f"{parts:>10}  {name:50} {p50:>7.1f} {p99:>7.1f} {ratio:>15.2f} {bms:>18.1f}")


if __name__ == "__main__":
    main()
