"""Cost of the validation stage per event, as a ratio to raw Avro decode measured
in the same run (no broker: the stage is a pure function).

Cases, per event over a mix of card payments, logins and FPS messages:
  decode                      the baseline: Avro single-object decode
  decode + validate           plus the semantic validator (IDs, dates, amounts, ...)
  decision path (rocksdict)   the whole pure stage: decode, validate, dedup in a
                              RocksDB store, features, controls, decision encode

    .venv/bin/python -m bench validation --events 30000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    FPS_SCHEMA,
    LOGIN_SCHEMA,
    fps_messages,
    logins,
    normal_card_payments,
)
from tripwire.schemas.records import InRecord
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath

__all__ = ["main"]


def _payloads(path: DecisionPath, n: int, t0: int) -> list[InRecord]:
    third = n // 3
    enc = path.codec.encode
    values = [enc(CARD_SCHEMA, e) for e in normal_card_payments(1, t0, third)]
    values += [enc(LOGIN_SCHEMA, e) for e in logins(2, t0, third)]
    values += [enc(FPS_SCHEMA, e) for e in fps_messages(3, t0, third // 2)]
    return [InRecord("bench", 0, i, b"k", v, t0) for i, v in enumerate(values)]


def _time_each(records: list[InRecord], fn: Callable[[InRecord], object]) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for r in records:
        t = clock()
        fn(r)
        out.append(clock() - t)
    return out


def _one(path: DecisionPath, now: int, state: StateManager, r: InRecord) -> object:
    return path.process([r], now, state)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench validation")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    path = DecisionPath.default()
    t0 = int(time.time() * 1000) - 3_600_000
    records = _payloads(path, args.events, t0)
    now = t0 + 3_600_000
    decode, validator = path.codec.decode, path.validator

    def validate(r: InRecord) -> object:
        schema, ev = decode(r.value)
        return validator.validate(schema.name, ev, now)

    rounds: dict[str, list[list[int]]] = {"decode": [], "decode + validate": [],
                                          "decision path (rocksdict)": []}
    for _ in range(args.repeats):
        rounds["decode"].append(_time_each(records, lambda r: decode(r.value)))
        rounds["decode + validate"].append(_time_each(records, validate))
        with tempfile.TemporaryDirectory() as d:
            state = StateManager(path.name, list(path.stores), root=Path(d))
            state.open_partition(("bench", 0))
            rounds["decision path (rocksdict)"].append(
                _time_each(records, partial(_one, path, now, state)))
            state.close()

    def stats(samples: list[list[int]]) -> tuple[float, float, float]:
        means = [statistics.fmean(s) / 1000 for s in samples]
        p99s = [sorted(s)[int(len(s) * 0.99)] / 1000 for s in samples]
        p50s = [statistics.median(s) / 1000 for s in samples]
        return statistics.median(means), statistics.median(p50s), statistics.median(p99s)

    base_mean, _, base_p99 = stats(rounds["decode"])
    print(f"{len(records)} events (cards, logins, FPS), {args.repeats} rounds, medians; "
          f"{os.cpu_count()} cores; command: python -m bench validation "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"{'case':28} {'events/s':>10} {'mean µs':>8} {'p50 µs':>7} {'p99 µs':>7} "
          f"{'x decode':>9} {'p99 added µs':>13}")
    for name, samples in rounds.items():
        mean, p50, p99 = stats(samples)
        print(f"{name:28} {1e6 / mean:>10,.0f} {mean:>8.1f} {p50:>7.1f} {p99:>7.1f} "
              f"{mean / base_mean:>9.2f} {p99 - base_p99:>13.1f}")
