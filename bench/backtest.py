"""Backtest speed, in events per second, against today's path measured in the same
run (no broker: a pure replay of the simulator's labelled traffic).

  * ``as the CLI ran it`` (the baseline): the controls in a supervised child
    (``TRIPWIRE_CONTROLS_ISOLATED``, the default), and the outputs decoded back
    for the report, as `tripwire backtest` did before 2026-12-03;
  * ``one process``: the replay as the CLI ran it on 2026-12-03 (the controls
    isolated; the outputs' records taken as the path made them, not decoded again);
  * ``two processes``: as the CLI runs it now (``--workers 2``): intake and
    features in a second process, batches ahead of the decisions, and the next
    batch's trip to the controls' child while this one is decided;
  * ``... in-process controls``: the same without isolating the controls;
  * the floor of one core, for the record: decoding every event once, the
    features alone, and the control network alone, on the same events.

Every run gives the same decisions (checked).

    .venv/bin/python -m bench backtest --days 1 --customers 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from tripwire.connectors.labelled import labelled_traffic
from tripwire.controls.engine import ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.streams.backtest import backtest, comparable

__all__ = ["main"]

DAY = 86_400_000


def _run(records: list[InRecord], codec: AvroCodec, isolate: int | None,
         decode_again: bool, workers: int) -> tuple[float, list[dict[str, Any]]]:
    import contextlib
    from unittest import mock

    from tripwire.streams import backtest as bt

    controls = ControlSet.from_dir()
    original = bt.DecisionPath.decide

    def plain(self: Any, *args: Any) -> list[OutRecord]:
        return [OutRecord(o.topic_key, o.key, o.value, o.partition)
                for o in original(self, *args)]

    with mock.patch.object(bt.DecisionPath, "decide", plain) if decode_again \
            else contextlib.nullcontext():
        started = time.perf_counter()
        run = backtest(controls, records, codec=codec, isolate_mb=isolate, workers=workers)
        took = time.perf_counter() - started
    return len(records) / took, [comparable(d) for d in run.decisions]


def _floors(records: list[InRecord], codec: AvroCodec) -> dict[str, float]:
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
    ap = argparse.ArgumentParser(prog="python -m bench backtest")
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    codec = AvroCodec.from_url(None)
    traffic = labelled_traffic(1, 1_790_000_000_000 // DAY * DAY, args.days, args.customers)
    records = [InRecord("file", 0, i, b"k", codec.encode(f"tripwire.events.{kind}", e),
                        e["event_time"]) for i, (kind, e) in enumerate(traffic.events)]
    print(f"{len(records)} events ({args.days:g} days, {args.customers} customers), "
          f"{args.repeats} repeats, medians")
    ways = {"as the CLI ran it (baseline)": (512, True, 1), "one process": (512, False, 1),
            "two processes (the CLI now)": (512, False, 2),
            "two, in-process controls": (None, False, 2)}
    rates: dict[str, list[float]] = {k: [] for k in ways}
    reference = None
    for _ in range(args.repeats):
        for name, (isolate, again, workers) in ways.items():
            rate, decisions = _run(records, codec, isolate, again, workers)
            if reference is None:
                reference = decisions
            assert decisions == reference, f"{name}: different decisions"
            rates[name].append(rate)
    base = statistics.median(rates["as the CLI ran it (baseline)"])
    for name, got in rates.items():
        m = statistics.median(got)
        print(f"  {name:32} {m:8.0f} events/s  {m / base:4.2f}x")
    print("one core's floor, same events:")
    for name, rate in _floors(records, codec).items():
        print(f"  {name:32} {rate:8.0f} events/s")
