"""Decisions carried out, measured: actions per second through the applier and
alert deliveries per second through the sender, next to baselines in the same run.

    .venv/bin/python -m bench actions --decisions 20000 --alerts 5000

* **apply, broker-free:** the apply stage alone over the requests of ``decisions``
  decisions (two actions each), in memory: the applier's own cost per action.
* **applier through Kafka:** the decisions on the decisions topic, one applier
  loop (actions + apply, every output in its transactions) until every action
  record is readable: actions per second end to end, and the CPU per action of
  the worker's thread and of the broker.
* **raw hop:** the same number of records consumed and produced by a bare
  confluent-kafka loop (no decode, no transaction): the floor.
* **sender:** ``alerts`` customer alerts to a local HTTP gateway stand-in,
  outcomes recorded in transactions: deliveries per second, and the same
  gateway's requests per second from a plain client (its floor here).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import Rounds, bench_cluster, calibrate
from tripwire.connectors.alert_sender import AlertSender, SenderConfig
from tripwire.connectors.events import EventProducer, read_to_end
from tripwire.connectors.kafka import consume_available, consumer, producer
from tripwire.connectors.standin_gateway import Gateway
from tripwire.controls.actions import ACTION_SCHEMA, ALERT_SCHEMA, requests_of
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.streams.apply import ApplyStage
from tripwire.streams.runner import applier_loop
from tripwire.streams.topics import create_topics, topic

CODEC = AvroCodec(SchemaStore.default())
T0 = 1_790_000_000_000


def _decisions(n: int) -> list[dict[str, Any]]:
    return [{
        "decision_id": f"d{i}", "event_id": f"e{i}", "event_type": "tripwire.events.CardPayment",
        "entity_key": f"card-{i}", "event_time": T0 + i * 10, "decided_at": T0,
        "outcome": "DENY", "actions": ["BLOCK_CARD", "OPEN_CASE"],
        "rule_hits": [{"control_id": "card_testing", "control_version": "v", "reason": "r",
                       "score": 0.9}], "features": {}, "feature_errors": {},
        "feature_provenance": {}, "control_errors": {}, "control_versions": {},
        "engine_version": "bench", "latency_us": 0, "repeat": False,
        "subjects": {"card": f"card-{i}", "account": f"acct-{i}"},
        "typology": "card_testing"} for i in range(n)]


def apply_in_memory(decisions: list[dict[str, Any]]) -> float:
    stage = ApplyStage(CODEC)
    state = StateManager(stage.name, list(stage.stores))
    state.open_partition(("r", 0))
    recs = [InRecord("r", 0, i, None, CODEC.encode(ACTION_SCHEMA, r), T0)
            for i, r in enumerate(r for d in decisions for r in requests_of(d))]
    started = time.perf_counter()
    for i in range(0, len(recs), 500):
        stage.process(recs[i:i + 500], T0, state)
    return len(recs) / (time.perf_counter() - started)


def through_kafka(bootstrap: str, decisions: list[dict[str, Any]], broker_cpu: Any,
                  state_dir: Path) -> tuple[float, float, float | None]:
    ns = f"bench-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns)
    prod = EventProducer(bootstrap, CODEC)
    for d in decisions:
        prod.send(topic("decisions", ns), "tripwire.decisions.Decision", d, d["entity_key"])
    prod.flush()
    wanted = 2 * len(decisions)
    loop = applier_loop(bootstrap, ns, codec=CODEC, state_dir=state_dir, batch_size=500)
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    b0, started = broker_cpu(), time.perf_counter()
    t.start()
    while loop.stats.produced.get("actions", 0) < wanted:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    b1 = broker_cpu()
    stop.set()
    t.join(60)
    got = len(read_to_end(bootstrap, topic("actions", ns)))
    assert got == wanted, (got, wanted)
    cpu = loop.stats.thread_cpu_seconds
    return wanted / elapsed, cpu / wanted * 1e6, None if b0 is None else (b1 - b0) / wanted * 1e6


def raw_hop(bootstrap: str, n: int) -> float:
    src, dst = f"bench-raw-{uuid.uuid4().hex[:6]}", f"bench-raw-out-{uuid.uuid4().hex[:6]}"
    p = producer(bootstrap)
    for i in range(n):
        p.produce(src, b"x" * 300, str(i).encode())
    p.flush(60)
    c = consumer(bootstrap, f"raw-{uuid.uuid4().hex[:6]}")
    c.subscribe([src])
    out = producer(bootstrap)
    done, started = 0, None
    while done < n:
        msgs = consume_available(c, 500, 0.2)
        if msgs and started is None:
            started = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                out.produce(dst, m.value(), m.key())
                done += 1
        out.poll(0)
    out.flush(60)
    c.close()
    return n / (time.perf_counter() - (started or time.perf_counter()))


def sender(bootstrap: str, n: int) -> tuple[float, float]:
    ns = f"bench-{uuid.uuid4().hex[:6]}."
    create_topics(bootstrap, ns)
    prod = EventProducer(bootstrap, CODEC)
    now = int(time.time() * 1000)
    for i in range(n):
        prod.send(topic("customer_alerts", ns), ALERT_SCHEMA, {
            "alert_id": f"a{i}", "account_id": f"acct-{i % 1000}", "decision_id": f"d{i}",
            "channel": "SMS", "template": "fraud_check.card_testing", "parameters": {},
            "created_at": now}, f"acct-{i % 1000}")
    prod.flush()
    gw = Gateway()
    try:
        s = AlertSender(bootstrap, lambda k: topic(k, ns), CODEC, SenderConfig(gw.url),
                        f"{ns}sender")
        stop = threading.Event()
        t = threading.Thread(target=s.run, args=(stop,), daemon=True)
        started = time.perf_counter()
        t.start()
        while sum(s.stats.outcomes.values()) < n:
            time.sleep(0.05)
        rate = n / (time.perf_counter() - started)
        stop.set()
        t.join(60)
        # the same gateway from a plain client, 16 at a time: its own floor here
        with httpx.Client() as client:
            started = time.perf_counter()
            threads = [threading.Thread(target=lambda k=k: [
                client.post(gw.url, json={"i": j}, headers={"Idempotency-Key": f"f{k}-{j}"})
                for j in range(n // 16)]) for k in range(16)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            floor = (n // 16 * 16) / (time.perf_counter() - started)
        return rate, floor
    finally:
        gw.close()


def main(argv: list[str]) -> None:
    import tempfile

    ap = argparse.ArgumentParser(prog="bench actions")
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--alerts", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    decisions = _decisions(args.decisions)
    print(f"machine: {calibrate(CODEC):.1f} µs per Avro decode")
    rows = Rounds()
    with bench_cluster() as (cluster, broker_cpu), tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            rows.add("apply in memory (actions/s)", apply_in_memory(decisions))
            rate, cpu, bcpu = through_kafka(cluster.bootstrap, decisions, broker_cpu,
                                            Path(tmp) / str(r))
            rows.add("applier through Kafka (actions/s)", rate)
            rows.add("  worker thread CPU µs/action", cpu)
            if bcpu is not None:
                rows.add("  broker CPU µs/action", bcpu)
            rows.add("raw hop, same count (records/s)",
                     raw_hop(cluster.bootstrap, 2 * args.decisions))
            got, floor = sender(cluster.bootstrap, args.alerts)
            rows.add("alert sender (deliveries/s)", got)
            rows.add("plain client, same gateway (requests/s)", floor)
            rows.round_done(r)
    rows.medians(f"python -m bench actions --decisions {args.decisions} --alerts "
                 f"{args.alerts} --repeats {args.repeats}", args.repeats)
