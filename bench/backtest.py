"""Backtest speed, in events per second, against the CLI of an earlier commit
measured in the same run (no broker: a pure replay of the simulator's labelled
traffic, the same events for every way):

  * ``the CLI at <commit>`` (the baseline, ``--against``; default the commit of
    the morning issue 25 was filed, 2026-12-03): that commit's own code
    (:mod:`bench.ab`), its controls in a supervised child, as its
    `tripwire backtest` ran them;
  * ``one process``: today's code, as `tripwire backtest --workers 1` runs it;
  * ``two processes (the CLI now)``: as `tripwire backtest` runs it on two cores:
    intake and features in a second process, batches ahead of the decisions, and
    the controls' child asked a batch or two ahead of them too;
  * ``two, in-process controls``: the same without isolating the controls;
  * the floor of one core, for the record: decoding every event once, and the
    control network alone, on the same events.

Each way replays in a fresh Python of its own (the same for all), timed around
the replay alone; the ways take turns, round after round, and each round's
ratios to its own baseline are reported too (the machine's speed drifts).
Every way of today's code gives the same decisions (checked); the baseline's
are compared with them and reported.

    .venv/bin/python -m bench backtest --days 7 --customers 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a replay runs at another commit's tripwire too
    from tripwire.schemas.codec import AvroCodec
    from tripwire.schemas.records import InRecord

__all__ = ["main"]

DAY = 86_400_000


def _replay(argv: list[str]) -> None:
    """One timed replay of the events in a file, by whichever tripwire this Python
    imports (today's or :mod:`bench.ab`'s commit): one JSON line out."""
    import orjson

    from tripwire.controls.engine import ControlSet
    from tripwire.schemas.codec import AvroCodec
    from tripwire.schemas.records import InRecord
    from tripwire.streams.backtest import backtest, comparable

    ap = argparse.ArgumentParser(prog="python -m bench backtest --replay")
    ap.add_argument("file", type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--isolate-mb", type=int, default=0, help="0: controls in process")
    args = ap.parse_args(argv)
    records = [InRecord(*r) for r in pickle.loads(args.file.read_bytes())]
    codec = AvroCodec.from_url(None)
    controls = ControlSet.from_dir()
    extra = {"workers": args.workers} if "workers" in inspect.signature(backtest).parameters \
        else {}
    started = time.perf_counter()
    run = backtest(controls, records, codec=codec, isolate_mb=args.isolate_mb or None, **extra)
    took = time.perf_counter() - started
    decisions = orjson.dumps([comparable(d) for d in run.decisions],
                             option=orjson.OPT_SORT_KEYS)
    print(json.dumps({"seconds": took, "events": len(records),
                      "decisions": hashlib.sha256(decisions).hexdigest()}))


def _run(rev: str | None, file: Path, workers: int, isolate: int) -> tuple[float, str]:
    from bench.ab import run_python

    out = run_python(rev, ["-m", "bench", "backtest", "--replay", str(file), "--workers",
                           str(workers), "--isolate-mb", str(isolate)])
    got = json.loads(out.strip().splitlines()[-1])
    return got["events"] / got["seconds"], got["decisions"]


def _floors(records: list[InRecord], codec: AvroCodec) -> dict[str, float]:
    from tripwire.streams.backtest import backtest
    from tripwire.streams.decision_path import DecisionPath

    out = {}
    started = time.perf_counter()
    decoded = [codec.decode(r.value) for r in records]
    out["decode each event once"] = len(records) / (time.perf_counter() - started)
    path = DecisionPath.default()
    controls = path.controls
    samples = []
    run = backtest(controls, records, codec=codec)
    for d in run.decisions:
        samples.append((d["event_type"].rsplit(".", 1)[1], d["features"], d["entity_key"]))
    events = [rec for _, rec in decoded]
    started = time.perf_counter()
    for (kind, features, key), event in zip(samples, events, strict=True):
        controls.evaluate(kind, event, features, key)
    out["the control network alone"] = len(records) / (time.perf_counter() - started)
    return out


def main(argv: list[str]) -> None:
    if argv[:1] == ["--replay"]:
        _replay(argv[1:])
        return
    from bench.ab import FILED, resolve
    from tripwire.connectors.labelled import labelled_traffic
    from tripwire.schemas.codec import AvroCodec
    from tripwire.schemas.records import InRecord

    ap = argparse.ArgumentParser(prog="python -m bench backtest")
    ap.add_argument("--days", type=float, default=7.0,
                    help="the span replayed (default a week; the gain grows with it: "
                    "the baseline's garbage collector walked all it kept)")
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--against", default=FILED, metavar="COMMIT",
                    help=f"the baseline's commit (default {FILED}: the CLI when issue 25 "
                    "was filed)")
    args = ap.parse_args(argv)
    against = resolve(args.against)[:10]
    codec = AvroCodec.from_url(None)
    traffic = labelled_traffic(1, 1_790_000_000_000 // DAY * DAY, args.days, args.customers)
    records = [InRecord("file", 0, i, b"k", codec.encode(f"tripwire.events.{kind}", e),
                        e["event_time"]) for i, (kind, e) in enumerate(traffic.events)]
    print(f"{len(records)} events ({args.days:g} days, {args.customers} customers), "
          f"{args.repeats} repeats, medians; each way in a fresh Python")
    baseline = f"the CLI at {against} (baseline)"
    ways: dict[str, tuple[str | None, int, int]] = {
        baseline: (against, 1, 512), "one process": (None, 1, 512),
        "two processes (the CLI now)": (None, 2, 512), "two, in-process controls": (None, 2, 0)}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    digests: dict[str, set[str]] = {k: set() for k in ways}
    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        file = Path(tmp) / "events.pickle"
        file.write_bytes(pickle.dumps([(r.topic, r.partition, r.offset, r.key, r.value,
                                        r.timestamp_ms) for r in records]))
        for _ in range(args.repeats):
            for name, (rev, workers, isolate) in ways.items():
                rate, digest = _run(rev, file, workers, isolate)
                rates[name].append(rate)
                digests[name].add(digest)
    today = set().union(*(d for name, d in digests.items() if name != baseline))
    assert len(today) == 1, f"today's ways gave different decisions: {digests}"
    base = statistics.median(rates[baseline])
    print(f"  {'':36} {'median':>8}           ratio of medians, median of each round's ratio")
    for name, got in rates.items():
        m = statistics.median(got)
        paired = statistics.median(g / b for g, b in zip(got, rates[baseline], strict=True))
        print(f"  {name:36} {m:8.0f} events/s  {m / base:4.2f}x  {paired:4.2f}x")
    print("each round's ratio to its own baseline:")
    for name, got in rates.items():
        if name != baseline:
            print(f"  {name:36} " + " ".join(
                f"{g / b:.2f}" for g, b in zip(got, rates[baseline], strict=True)))
    same = digests[baseline] == today
    print(f"decisions: today's ways identical; {against}'s "
          f"{'identical too' if same else 'differ (its code decides otherwise)'}")
    print("one core's floor, same events:")
    for name, rate in _floors(records, codec).items():
        print(f"  {name:36} {rate:8.0f} events/s")
