"""The inline decide API, measured: decide latency at fixed offered rates through
``POST /v1/decide``, next to the asynchronous path's latency in the same run.

    .venv/bin/python -m bench decide --rates 20,60 --seconds 15 --repeats 3

One pipeline worker (`tripwire run stage all`'s combined loop, eager answers) and
``tripwire decide serve --workers N`` run as processes of their own; each round
offers, at each rate, fresh card payments

* **asynchronous path (baseline):** produced to the input topic; latency from the
  moment each is sent to the moment a reader of the decisions topic sees its
  decision (what an upstream system consuming decisions waits);
* **through the API:** signed requests sent at the same rate (open loop: each
  at its scheduled time, whatever the others are waiting for); latency from its
  scheduled time to the answer, and how many answers were stand-ins (the
  deadline, ``--deadline-ms``, is set high to measure the round trip); the CPU
  the API's processes and the pipeline worker used per request.

The API's own overhead is the ratio of the two. Both share the machine with the
broker and the pipeline: compare ratios, not milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import Rounds, bench_cluster, calibrate, proc_cpu
from bench.path import COMBINED, Decisions, _offer, _start_workers
from tripwire.broker.scratch import release, scratch_home
from tripwire.connectors.kafka import producer
from tripwire.connectors.sdk import sign
from tripwire.connectors.simulator import CARD_SCHEMA, as_json, normal_card_payments
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.topics import create_topics

CODEC = AvroCodec(SchemaStore.default())
KEY_ID, SECRET = "bench", b"bench-secret-0123456789"


def _cards(seed: int, n: int, rate: int) -> list[dict[str, Any]]:
    """``n`` card payments timed as offered from now at ``rate`` per second."""
    now = int(time.time() * 1000)
    out = []
    for i, e in enumerate(normal_card_payments(seed, now, n)):
        e["event_time"] = now + i * 1000 // rate
        out.append(e)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def asynchronous(bootstrap: str, ns: str, reader: Decisions, events: list[dict[str, Any]],
                 rate: int) -> list[float]:
    p = producer(bootstrap, **{"linger.ms": 1})
    encoded = [("card_payments", e["card_token"].encode(), CODEC.encode(CARD_SCHEMA, e),
                e["event_id"]) for e in events]
    sent: dict[str, float] = {}
    _offer(p, ns, encoded, rate, sent)
    deadline = time.monotonic() + 60
    while any(e not in reader.seen for e in sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    missing = [e for e in sent if e not in reader.seen]
    if missing:
        raise RuntimeError(f"{len(missing)} events without a decision; e.g. {missing[:3]}")
    return [(reader.seen[e] - t) * 1000 for e, t in sent.items()]


async def _through_api(url: str, events: list[dict[str, Any]], rate: int) \
        -> tuple[list[float], int]:
    bodies = [orjson.dumps(as_json("CardPayment", e)) for e in events]
    latencies: list[float] = []
    stand_ins = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        start = time.monotonic()

        async def one(i: int, body: bytes) -> None:
            nonlocal stand_ins
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            ts = str(int(time.time()))
            r = await client.post(f"{url}/v1/decide", content=body, headers={
                "Content-Type": "application/json", "X-Tripwire-Key-Id": KEY_ID,
                "X-Tripwire-Timestamp": ts, "X-Tripwire-Signature": sign(SECRET, ts, body)})
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
            latencies.append((time.monotonic() - due) * 1000)
            stand_ins += bool(r.json()["stand_in"])

        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return latencies, stand_ins


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (uvicorn's workers)."""
    total = proc_cpu(pid)
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            total += _tree_cpu(int(child))
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(bootstrap: str, ns: str, workers: int, deadline_ms: int, home: Path) \
        -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TRIPWIRE_TOPIC_NAMESPACE": ns,
           "TRIPWIRE_INGEST_KEYS": f"{KEY_ID}:{SECRET.decode()}",
           "TRIPWIRE_DECIDE_DEADLINES": f"CardPayment={deadline_ms}",
           "PROMETHEUS_MULTIPROC_DIR": str(home)}
    api = subprocess.Popen([sys.executable, "-m", "tripwire", "decide", "serve", "--port",
                            str(port), "--workers", str(workers)], env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return api, url
        except httpx.HTTPError:
            pass
        if api.poll() is not None or time.monotonic() > deadline:
            api.kill()
            raise RuntimeError("the decide API did not start")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench decide")
    ap.add_argument("--rates", default="20,60", help="offered events per second (comma list)")
    ap.add_argument("--seconds", type=float, default=15.0, help="per rate and path")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--deadline-ms", type=int, default=5_000)
    ap.add_argument("--warm-s", type=float, default=20.0)
    args = ap.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    rounds = Rounds()
    with bench_cluster() as (cluster, _broker_cpu):
        print(f"this machine: {calibrate(CODEC):.1f} µs per Avro decode of a card payment")
        bootstrap = cluster.bootstrap
        ns = f"bench-decide-{uuid.uuid4().hex[:6]}."
        create_topics(bootstrap, ns, partitions=2)
        workers = _start_workers(bootstrap, ns, [COMBINED], 100, "eager")
        reader = Decisions(bootstrap, ns, CODEC)
        home = scratch_home("bench-decide-metrics")
        api, url = _serve(bootstrap, ns, args.api_workers, args.deadline_ms, home)
        try:
            seed = 1
            warm = _cards(seed, int(args.warm_s * rates[0]), rates[0])
            asynchronous(bootstrap, ns, reader, warm[: len(warm) // 2], rates[0])
            asyncio.run(_through_api(url, warm[len(warm) // 2:], rates[0]))
            for r in range(args.repeats):
                for rate in rates:
                    n = int(args.seconds * rate)
                    seed += 2
                    w0 = sum(proc_cpu(x.pid) for x in workers.procs)
                    base = asynchronous(bootstrap, ns, reader, _cards(seed, n, rate), rate)
                    w1, a1 = sum(proc_cpu(x.pid) for x in workers.procs), _tree_cpu(api.pid)
                    lat, stood = asyncio.run(_through_api(url, _cards(seed + 1, n, rate), rate))
                    w2, a2 = sum(proc_cpu(x.pid) for x in workers.procs), _tree_cpu(api.pid)
                    rounds.add(f"pipeline CPU µs/event {rate}/s, async", (w1 - w0) / n * 1e6)
                    rounds.add(f"pipeline CPU µs/event {rate}/s, API", (w2 - w1) / n * 1e6)
                    rounds.add(f"API workers CPU µs/request {rate}/s", (a2 - a1) / n * 1e6)
                    for name, v in ((f"async {rate}/s p50 ms", _pct(base, 0.5)),
                                    (f"async {rate}/s p99 ms", _pct(base, 0.99)),
                                    (f"API {rate}/s p50 ms", _pct(lat, 0.5)),
                                    (f"API {rate}/s p99 ms", _pct(lat, 0.99)),
                                    (f"API / async {rate}/s p50", _pct(lat, 0.5) / _pct(base, 0.5)),
                                    (f"API / async {rate}/s p99",
                                     _pct(lat, 0.99) / _pct(base, 0.99)),
                                    (f"stand-ins {rate}/s %", 100 * stood / n)):
                        rounds.add(name, v)
                rounds.round_done(r, ",.2f")
        finally:
            api.terminate()
            api.wait(30)
            reader.close()
            workers.close()
            release(home)
    rounds.medians("python -m bench decide " + " ".join(argv or sys.argv[2:]), args.repeats)


if __name__ == "__main__":
    main()
