"""What the pipeline costs with no traffic at all: ``tripwire run stage all``
workers on an idle namespace, CPU of each and of the broker over a quiet span
after start-up (their heartbeats, idle marks and commits are all that happens),
next to the same broker with no client at all, measured just before (baseline).
``--after N``: the quiet span comes after N events were decided (a bank at
night: the nodes have served entities, the loops have committed).

    .venv/bin/python -m bench idle --workers 2 --seconds 30 [--after 500]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import bench_cluster, proc_cpu
from tripwire.connectors.events import read_topic
from tripwire.connectors.sdk import TripwireProducer
from tripwire.connectors.simulator import envelope, mixed_traffic
from tripwire.streams.topics import create_topics, topic

__all__ = ["idle_round", "main"]


def idle_round(bootstrap: str, broker_cpu: Any, workers: int, partitions: int,
               settle: float, seconds: float, after: int = 0) -> dict[str, Any]:
    """CPU shares (of one core) over a quiet span: the broker with no client
    (``alone``), then ``workers`` idle workers (``workers``, each) and the broker
    beside them (``broker``); None for the broker when it is not a local process.
    ``after``: that many events decided first."""
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as state:
        ns = f"bench-idle-{uuid.uuid4().hex[:6]}."
        create_topics(bootstrap, ns, partitions=partitions)
        time.sleep(settle)
        base0, t0 = broker_cpu(), time.monotonic()
        time.sleep(seconds)
        base1, base_dt = broker_cpu(), time.monotonic() - t0
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "TRIPWIRE_TOPIC_NAMESPACE": ns}
        procs = [subprocess.Popen([sys.executable, "-m", "tripwire", "run", "stage", "all"],
                                  env={**env, "TRIPWIRE_STATE_DIR": str(Path(state) / str(i))},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(workers)]
        try:
            time.sleep(settle)
            if after:
                _decide(bootstrap, ns, after)
                time.sleep(settle)
            cpu0, b0, t0 = [proc_cpu(p.pid) for p in procs], broker_cpu(), time.monotonic()
            time.sleep(seconds)
            cpu1, b1, dt = [proc_cpu(p.pid) for p in procs], broker_cpu(), time.monotonic() - t0
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
    local = None not in (b0, b1, base0, base1)
    return {"workers": [(c1 - c0) / dt for c0, c1 in zip(cpu0, cpu1, strict=True)],
            "broker": (b1 - b0) / dt if local else None,
            "alone": (base1 - base0) / base_dt if local else None}


def _decide(bootstrap: str, ns: str, n: int) -> None:
    """Publish ``n`` events of a bank's traffic, and wait until each is answered."""
    out = TripwireProducer(bootstrap, namespace=ns)  # each to its topic, keyed as upstream
    # an hour ago: the producer refuses events from further ahead than clock skew allows
    for kind, ev in mixed_traffic(7, int(time.time() * 1000) - 3_600_000, n)[:n]:
        out.send(envelope(kind, ev))
    out.flush()
    got = read_topic(bootstrap, [topic("decisions", ns), topic("quarantine", ns)], n,
                     timeout=120)  # every event is decided or refused
    if len(got) < n:
        raise RuntimeError(f"{len(got)} of {n} events answered in 120 s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench idle")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--settle", type=float, default=15.0, help="start-up left out (s)")
    ap.add_argument("--seconds", type=float, default=30.0, help="the quiet span measured")
    ap.add_argument("--after", type=int, default=0, help="events decided before the quiet "
                    "span (default none)")
    args = ap.parse_args(argv)
    with bench_cluster() as (cluster, broker_cpu):
        got = idle_round(cluster.bootstrap, broker_cpu, args.workers, args.partitions,
                         args.settle, args.seconds, args.after)
    shares = ", ".join(f"{w * 100:.1f} %" for w in got["workers"])
    if got["broker"] is None:
        broker = "n/a (not a local broker)"
    else:
        used, alone = got["broker"] * 100, got["alone"] * 100
        broker = f"{used:.1f} % (with no client: {alone:.1f} %; x{used / max(alone, 0.01):.2f})"
    print(f"no traffic{f' after {args.after} events' if args.after else ''}, "
          f"{args.workers} workers, {args.partitions} partitions, "
          f"{args.seconds:.0f} s: workers {shares} of a core each; broker {broker}")


if __name__ == "__main__":
    main()
