"""What librdkafka's producer threads burn while the broker does not answer.

An idempotent producer may have 5 requests in flight per partition. With more
messages queued than that and ``linger.ms`` past, librdkafka's broker thread
wakes up at once, finds it may not send, and goes round again: it spins until
an acknowledgement comes (``rd_kafka_toppar_producer_serve`` computes "batch
ready", which sets the wake-up to now, before the in-flight limit stops it).
On a machine where the broker shares the cores, the spin starves the broker
and makes the stall longer: the bad rounds of ``bench path`` (librdkafka
threads at ~1.2 ms of CPU per event, commits of 1 to 3 s; docs/performance.md).

The limit counts *messages*, not requests (``rktp_msgs_inflight``; librdkafka
PR #4989), so the spin does not need a stalled broker: whenever a request of 5
or more messages is in flight on a partition and more are queued, the thread
spins until the acknowledgement. tripwire's answers therefore go through a
producer that is not idempotent (``connectors.kafka.answer_producer``: acks=all,
one request in flight, so retries keep the order).

Two parts. **Frozen**: the broker is stopped (SIGSTOP) for ``--seconds`` while a
producer keeps sending bursts of decision-sized records; the CPU of librdkafka's
threads meanwhile is compared with a non-idempotent producer sending the same
bursts (the baseline: the same work without the in-flight limit), and with an
idle one. **Answering**: the broker runs; a decide stage's answers at 3,000
events/s (60 records every 10 ms) are sent for ``--seconds``, and librdkafka's
CPU per 1,000 records is compared between tripwire's answer producer (the
baseline) and an idempotent one.

    .venv/bin/python -m bench stall --seconds 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import bench_cluster, thread_cpu
from tripwire.connectors.kafka import answer_producer, producer
from tripwire.streams.topics import TopicSpec, create_topics

__all__ = ["main"]

_QUEUE = {"queue.buffering.max.messages": 2_000_000}
Make = Callable[[str], Any]  # bootstrap → producer


def _idempotent(bootstrap: str) -> Any:  # as tripwire's answers were before
    return producer(bootstrap, **{"linger.ms": 1, **_QUEUE})


def _not_idempotent(bootstrap: str) -> Any:
    return producer(bootstrap, **{"linger.ms": 1, "enable.idempotence": False, **_QUEUE})


def _answers(bootstrap: str) -> Any:  # tripwire's answer producer
    return answer_producer(bootstrap, **_QUEUE)


# name, producer, partitions, bursts while frozen
CASES: list[tuple[str, Make, int, bool]] = [
    ("not idempotent (acks=all), bursts (baseline)", _not_idempotent, 2, True),
    ("idempotent, bursts (answers before)", _idempotent, 2, True),
    ("idempotent, 8 partitions, bursts", _idempotent, 8, True),
    ("idempotent, nothing sent", _idempotent, 2, False),
    ("tripwire's answer producer, bursts", _answers, 2, True),
]
# the broker answering: name, producer
LIVE: list[tuple[str, Make]] = [
    ("tripwire's answer producer (baseline)", _answers),
    ("idempotent (answers before)", _idempotent),
]


def _rdk_cpu() -> float:
    return sum(v for k, v in thread_cpu().items() if k.startswith("rdk:"))


def _frozen(bootstrap: str, broker_pid: int, topic: str, make: Make,
            bursts: bool, seconds: float, burst: int, value: bytes) -> float:
    """Share of a core librdkafka's threads used while the broker was stopped."""
    p = make(bootstrap)
    p.produce(topic, b"warm")
    p.flush(30)
    c0, t0 = _rdk_cpu(), time.monotonic()
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        end = t0 + seconds
        while time.monotonic() < end:
            if bursts:
                for i in range(burst):
                    p.produce(topic, value, b"k%d" % i)
            p.poll(0)
            time.sleep(0.1)
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    share = (_rdk_cpu() - c0) / (time.monotonic() - t0)
    p.flush(120)
    return share


def _answering(bootstrap: str, topic: str, make: Make, seconds: float, burst: int,
               value: bytes) -> float:
    """librdkafka CPU microseconds per record sent while the broker answers."""
    p = make(bootstrap)
    p.produce(topic, b"warm")
    p.flush(30)
    c0, sent = _rdk_cpu(), 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i in range(burst):
            p.produce(topic, value, b"k%d" % i)
        sent += burst
        p.poll(0)
        time.sleep(0.01)
    p.flush(120)
    return (_rdk_cpu() - c0) / sent * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench stall")
    ap.add_argument("--seconds", type=float, default=3.0, help="how long the broker is frozen")
    ap.add_argument("--burst", type=int, default=2000,
                    help="records sent every 100 ms (a decide batch's answers)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    value = os.urandom(600) * 3  # a decision's size, not compressible
    with bench_cluster() as (cluster, _):
        if cluster.pid is None:
            sys.exit("bench stall freezes the broker: it needs its own local broker "
                     "(unset KAFKA_BOOTSTRAP_SERVERS)")
        create_topics(cluster.bootstrap, "", [TopicSpec(f"stall-{n}", f"stall-{n}", "bench",
                                                        partitions=n) for n in (2, 8)])
        rows: dict[str, list[float]] = {name: [] for name, *_ in CASES}
        live: dict[str, list[float]] = {name: [] for name, _ in LIVE}
        for _ in range(args.repeats):
            for name, make, partitions, bursts in CASES:
                rows[name].append(_frozen(cluster.bootstrap, cluster.pid, f"stall-{partitions}",
                                          make, bursts, args.seconds, args.burst, value))
            for name, make in LIVE:
                live[name].append(_answering(cluster.bootstrap, "stall-2", make,
                                             args.seconds, 60, value))
    print(f"\nbroker frozen {args.seconds:.0f} s; command: python -m bench stall "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    base = statistics.median(rows[CASES[0][0]])
    print(f"{'case':46} {'librdkafka CPU, share of a core':>33} {'x baseline':>11}")
    for name, shares in rows.items():
        rounds = "  ".join(f"{s:6.1%}" for s in shares)
        ratio = statistics.median(shares) / base if base > 0 else float("nan")
        print(f"{name:46} {rounds:>33} {ratio:>11.1f}")
    print(f"\nbroker answering, 60 records every 10 ms for {args.seconds:.0f} s")
    base = statistics.median(live[LIVE[0][0]])
    print(f"{'case':46} {'librdkafka CPU µs per 1,000 records':>37} {'x baseline':>11}")
    for name, costs in live.items():
        rounds = "  ".join(f"{c * 1000:8.0f}" for c in costs)
        print(f"{name:46} {rounds:>37} {statistics.median(costs) / base:>11.1f}")
