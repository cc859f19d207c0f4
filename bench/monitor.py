"""The system-wide monitor, measured: decisions per second through its core and
through its worker on Kafka, next to baselines in the same run.

    .venv/bin/python -m bench monitor --days 1 --scale 0.3

* **decode:** the Avro decode of each decision: what reading the decisions topic
  costs any consumer (the monitor's own cost is shown as a ratio to it).
* **core, broker-free:** each decision made an observation and given to every
  tripwire (:class:`~tripwire.controls.monitor.SystemMonitor`), in event-time
  order: the monitor's own cost per decision.
* **worker through Kafka:** the decisions on the decisions topic (three
  partitions), one monitor worker (decode, watermark, tripwires, state cells and
  outputs in transactions) until it has counted all of them.
* **bare consumer:** the same records read by a plain confluent-kafka consumer,
  no decode: the floor.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from typing import Any

from bench import scenarios as sc
from bench.common import Rounds, bench_cluster, calibrate
from tripwire.connectors.events import EventProducer
from tripwire.connectors.kafka import consume_available, consumer
from tripwire.controls.monitor import SystemMonitor, default_tripwires, observation_of
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.monitor import MonitorLoop
from tripwire.streams.topics import create_topics, topic

CODEC = AvroCodec(SchemaStore.default())
DECISION = "tripwire.decisions.Decision"


def decode(encoded: list[bytes]) -> float:
    started = time.perf_counter()
    for b in encoded:
        CODEC.decode(b)
    return (time.perf_counter() - started) / len(encoded) * 1e6


def core(decisions: list[dict[str, Any]], scale: float) -> float:
    ordered = sorted(decisions, key=lambda d: (d["event_time"], d["decision_id"]))
    m = SystemMonitor(default_tripwires(sc.policy(scale)))
    started = time.perf_counter()
    for d in ordered:
        obs = observation_of(DECISION, d)
        if obs is not None:
            m.observe(obs)
    return (time.perf_counter() - started) / len(ordered) * 1e6


def worker(bootstrap: str, decisions: list[dict[str, Any]], scale: float) -> tuple[float, float]:
    ns = f"bench-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns, partitions=3)
    prod = EventProducer(bootstrap, CODEC)
    for d in decisions:
        prod.send(topic("decisions", ns), DECISION, d, d["entity_key"])
    prod.flush()
    loop = MonitorLoop(bootstrap, lambda k: topic(k, ns), CODEC,
                       SystemMonitor(default_tripwires(sc.policy(scale))),
                       group=f"{ns}monitor", idle_s=0.0)  # empty partitions hold nothing
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop, 1.0), daemon=True)
    started = time.perf_counter()
    t.start()
    while loop.stats.read < len(decisions):  # each record counted as it is read, but
        time.sleep(0.01)  # the newest ones, which wait for the idle partitions
    rate = loop.stats.counted / (time.perf_counter() - started)
    t.join(600)
    assert loop.stats.counted == len(decisions), (loop.stats.counted, len(decisions))
    c = consumer(bootstrap, f"raw-{uuid.uuid4().hex[:6]}")
    c.subscribe([topic("decisions", ns)])
    done, first = 0, None
    while done < len(decisions):
        msgs = [m for m in consume_available(c, 2000, 0.5) if m.error() is None]
        if msgs and first is None:
            first = time.perf_counter()
        done += len(msgs)
    floor = done / (time.perf_counter() - (first or time.perf_counter()))
    c.close()
    return rate, floor


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench monitor")
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=0.3, help="1.0: 400 alerts in a "
                    "daytime ten minutes, about 150,000 decisions a day")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = random.Random(1)
    t0 = (int(time.time() * 1000) - int((args.days + 1) * sc.DAY)) // 60_000 * 60_000
    days = sc.normal_days(t0, args.days, args.scale, rng)
    sc.card_wave(days, t0 + int(args.days * sc.DAY) - 3 * sc.HOUR, 20, 200 * args.scale, rng)
    decisions = days.decisions
    encoded = [CODEC.encode(DECISION, d) for d in decisions]
    print(f"machine: {calibrate(CODEC):.1f} µs per Avro decode (card payment); "
          f"{len(decisions):,} decisions")
    rows = Rounds()
    with bench_cluster() as (cluster, _):
        for r in range(args.repeats):
            d_us, c_us = decode(encoded), core(decisions, args.scale)
            rows.add("decode a decision (µs)", d_us)
            rows.add("monitor core per decision (µs)", c_us)
            rows.add("  core / decode", c_us / d_us)
            rate, floor = worker(cluster.bootstrap, decisions, args.scale)
            rows.add("worker through Kafka (decisions/s)", rate)
            rows.add("bare consumer, same topic (records/s)", floor)
            rows.round_done(r, ",.1f")
    rows.medians(f"python -m bench monitor --days {args.days} --scale {args.scale} "
                 f"--repeats {args.repeats}", args.repeats)
