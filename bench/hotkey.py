"""Hot keys: one entity key with millions of events in its window, next to cold
keys with a few events each, measured in the same run (issue 18).

The hot key is the whole system at ``--rate`` events/s for ``--seconds`` of event
time (5,000/s for 12 minutes: 3 million events in a 10-minute window), through the
system's features and two more on it (a sum and a distinct), in process (the
feature node's own work, no broker). Events arrive as a catching-up pipeline
delivers them: most on time, 2 % from a partition a minute behind, 1 % jittered
by up to 2 s. The baseline: the same features on cold keys, 30 events each.

Reported: CPU per event once the window is full (median of ``--repeats`` runs of
the last part, and the ratio to the cold keys), the buckets kept against events
in the window, and what a commit every ``--commit-events`` events writes (pages
of a second: their count and bytes) against the key's whole state as one value.

    .venv/bin/python -m bench hotkey --rate 5000 --seconds 720
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Any

from tripwire.features.engine import FeatureLibrary, encode_state, state_records
from tripwire.features.library import DEFAULT_FEATURES
from tripwire.features.spec import FeatureSpec

__all__ = ["main"]

AUTH = {"event_type": "CardPayment", "kind": "AUTHORISATION"}
EXTRA = (
    FeatureSpec("system_auth_amount_10m", "system", "sum", "10m", field="amount_gbp_minor",
                where=AUTH),
    FeatureSpec("system_distinct_cards_10m", "system", "distinct", "10m", field="card_token",
                where=AUTH),
)


def _events(rate: int, seconds: int, seed: int) -> list[tuple[int, dict[str, Any]]]:
    rng = random.Random(seed)
    t0 = 1_780_000_000_000
    out = []
    for i in range(rate * seconds):
        t = t0 + i * 1000 // rate
        r = rng.random()
        if r < 0.02:
            t -= 60_000  # a partition a minute behind
        elif r < 0.03:
            t -= rng.randrange(2000)
        abroad = rng.random() < 0.05
        out.append((t, {**AUTH, "card_token": f"tok-{rng.randrange(200_000)}",
                        "amount_gbp_minor": rng.randrange(100, 20_000),
                        "entry_mode": "MAGSTRIPE_CONTACTLESS" if abroad else "CHIP",
                        "domestic": not abroad}))
    return out


def _hot(lib: FeatureLibrary, events: list[tuple[int, dict[str, Any]]],
         measure_from: int, commit_every: int) -> dict[str, Any]:
    state: dict[str, Any] = {}
    writes: list[int] = []
    records = 0
    biggest = 0
    cpu = 0.0
    started = None
    for n, (t, view) in enumerate(events):
        if n == measure_from:
            started = time.process_time()
        lib.compute("system", state, view, t)
        if n % commit_every == commit_every - 1:
            if started is not None:
                cpu += time.process_time() - started
            out = state_records(b"system|*", state)
            writes.append(sum(len(v or b"") for _, v in out))
            records += len(out)
            biggest = max([biggest, *(len(v or b"") for _, v in out)])
            if started is not None:
                started = time.process_time()
    if started is not None:
        cpu += time.process_time() - started
    measured = len(events) - measure_from
    columns = {k: v for k, v in state.items() if k != "wm"}
    return {"us_per_event": cpu / measured * 1e6, "memory": _footprint(columns),
            "buckets": {k: len(v.times) for k, v in columns.items()},
            "distinct_values_kept": sum(len(b) for b in
                                        state["system_distinct_cards_10m@1"].vals),
            "commit_bytes_median": statistics.median(writes[len(writes) // 2:]),
            "records_per_commit": records / len(writes),
            "largest_record": biggest,
            "one_value_bytes": len(encode_state(state))}


def _footprint(columns: dict[str, Any]) -> dict[str, int]:
    """Bytes each column holds: its lists, the integers in them (small ones are
    shared) and, for distinct, the buckets' lists and each value once."""
    out = {}
    for name, col in columns.items():
        n = sys.getsizeof(col.times) + sys.getsizeof(col.vals)
        n += sum(sys.getsizeof(t) for t in col.times)
        seen: set[int] = set()
        for b in col.vals:
            if isinstance(b, list):
                n += sys.getsizeof(b)
                for v in b:
                    if id(v) not in seen:
                        seen.add(id(v))
                        n += sys.getsizeof(v)
            elif not -5 <= b <= 256:
                n += sys.getsizeof(b)
        out[name] = n
    return out


def _cold(lib: FeatureLibrary, events: list[tuple[int, dict[str, Any]]],
          per_key: int) -> float:
    keys = len(events) // per_key
    states: list[dict[str, Any]] = [{} for _ in range(keys)]
    started = time.process_time()
    for n, (t, view) in enumerate(events):
        lib.compute("system", states[n % keys], view, t)
    return (time.process_time() - started) / len(events) * 1e6


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench hotkey")
    ap.add_argument("--rate", type=int, default=5000, help="events/s of event time")
    ap.add_argument("--seconds", type=int, default=720, help="event time to run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--commit-events", type=int, default=500,
                    help="events between two writes of the state (a commit)")
    args = ap.parse_args(argv)
    specs = [s for s in DEFAULT_FEATURES if s.entity == "system"] + list(EXTRA)
    lib = FeatureLibrary(specs)
    events = _events(args.rate, args.seconds, 1)
    window = max(s.window_ms for s in specs) // 1000
    measure_from = min(len(events) - 1, args.rate * (window + 30))
    in_window = args.rate * window
    print(f"hot key: {len(events):,} events at {args.rate:,}/s of event time "
          f"({in_window:,} in a {window // 60}-minute window), "
          f"{len(specs)} features: {', '.join(s.name for s in specs)}")
    hot, cold = [], []
    report: dict[str, Any] = {}
    for r in range(args.repeats):
        report = _hot(lib, events, measure_from, args.commit_events)
        hot.append(report["us_per_event"])
        cold.append(_cold(lib, events[:200_000], 30))
        print(f"  run {r + 1}: hot {hot[-1]:.1f} µs/event, cold {cold[-1]:.1f} µs/event")
    h, c = statistics.median(hot), statistics.median(cold)
    print(f"CPU per event, window full (median of {args.repeats}): hot key {h:.1f} µs, "
          f"cold keys (30 events each) {c:.1f} µs: x{h / c:.2f}")
    print(f"buckets kept per feature: {report['buckets']} "
          f"(at most {(window + 300) * 1000:,} for a window and 5 minutes of lateness)")
    print(f"distinct values kept: {report['distinct_values_kept']:,}; memory per feature: "
          + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in report["memory"].items()))
    print(f"a commit every {args.commit_events} events writes "
          f"{report['records_per_commit']:.1f} records, median "
          f"{report['commit_bytes_median'] / 1024:.0f} KiB, the largest record "
          f"{report['largest_record'] / 1024:.0f} KiB; the whole state as one value "
          f"would be {report['one_value_bytes'] / 2**20:.1f} MiB")
