"""The decision path at the rates banks run, each figure next to a baseline
measured in the same run, on one broker (issue 26):

* **saturation:** the path's events/s and CPU per event, workers and broker,
  beside a raw confluent-kafka hop of the same messages, and in rounds
  alternated with the workers of another commit (``--against``, by default the
  code when this issue was filed; :mod:`bench.ab`): the A/B of both commits;
* **at each offered rate** (50, 1,000, 2,000 and 3,000 events/s by default): a
  bare relay chain of the path's shape (the baseline: the hops and nothing else)
  and the path, open loop: p50 and p99 from an event's publishing to its
  readable answer, CPU per event of the workers and of the broker, and the
  share of the cores they take. Ratios: p99 to the relays'; CPU per event to
  saturation's; at the lowest rate, the workers' and the broker's CPU to the
  relays';
* **the primitives:** the workers' CPU per event at saturation against the sum
  of the primitives they did (Avro, state, Starlark, the hops' client), each
  counted and timed in one more round (:mod:`bench.primitives`); and the same
  primitives counted at the offered rate nearest 1,000/s, each call's cost
  there against saturation's: how much dearer the same work runs at that rate
  on this machine, part of the floor of the CPU ratio;
* **no traffic:** the workers' and the broker's shares of a core, against the
  broker with no client at all;
* **a peer:** Quix Streams and tripwire on the same card payments, 1 and 2
  workers each (:mod:`bench.peer`; ``--peer 0`` leaves it out).

A rate the machine cannot carry is reported as such (the answers fell behind),
and the run goes on. About 12 minutes on 2 cores with the defaults (and the
peer's virtual environment, made on first use).

    .venv/bin/python -m bench rates
    .venv/bin/python -m bench rates --rates 50,1000 --seconds 15 --warm-up 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from bench.ab import FILED, resolve
from bench.common import bench_cluster, calibrate
from bench.idle import idle_round
from bench.path import RELAY, _events, _raw_round, layout_of, offer_of, open_loop, saturation
from bench.peer import QUIX, card_events, peer_lines, peer_python, peer_rounds
from bench.primitives import beside, counted, report
from tripwire.config import Settings
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore

__all__ = ["main"]

MODE = "eager"  # the live default: answers and hops at once, state every second
PEER_WORKERS = [1, 2]


def _quantiles(lat: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(lat, n=100)
    return q[49], q[98]


def _median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench rates")
    ap.add_argument("--rates", default="50,1000,2000,3000", help="events/s offered")
    ap.add_argument("--seconds", type=float, default=20.0, help="each rate: measured span")
    ap.add_argument("--warm-up", type=float, default=20.0, help="each rate: unmeasured first")
    ap.add_argument("--events", type=int, default=20_000, help="saturation: events")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--against", default=FILED, metavar="COMMIT",
                    help=f"saturation's A/B: that commit's workers, alternated with today's "
                    f"(default {FILED}: the code when this issue was filed; '' for none)")
    ap.add_argument("--ab-rounds", type=int, default=2,
                    help="saturation rounds of each commit, alternated (medians)")
    ap.add_argument("--peer", type=int, default=20_000, metavar="EVENTS",
                    help="Quix Streams beside tripwire (bench.peer: 1 and 2 workers, one "
                    "round each) on this many card payments; 0: not run")
    args = ap.parse_args(argv)
    against = resolve(args.against)[:10] if args.against else None
    rates = [int(r) for r in args.rates.split(",") if r]
    codec = AvroCodec(SchemaStore.default())
    python = peer_python(Settings().cache_dir) if args.peer else None  # made on first use
    layout = layout_of("", "split", args.workers)
    print(f"{args.workers} workers (every stage in one loop each), {args.partitions} "
          f"partitions; {os.cpu_count()} cores; machine: {calibrate(codec):.1f} µs per Avro "
          "decode", flush=True)
    sat_events = _events(codec, args.events, int(time.time() * 1000) - 3_600_000, 31)
    runs: dict[tuple[int, str], dict[str, Any]] = {}
    with bench_cluster() as (cluster, broker_cpu):
        idle = idle_round(cluster.bootstrap, broker_cpu, args.workers, args.partitions,
                          10.0, args.idle_seconds)
        raw = _raw_round(cluster.bootstrap, sat_events, args.partitions, broker_cpu)
        rounds: dict[str | None, list[dict[str, float]]] = {None: [], against: []}
        if against is not None:  # unmeasured: the broker's first round is its slowest
            saturation(cluster.bootstrap, codec, sat_events, layout, args.partitions, 500,
                       MODE, broker_cpu)
        for i in range(max(1, args.ab_rounds)):
            # alternated, today's first then the other's first (A B B A...): neither
            # always meets the broker's JIT still warming up, nor always a warm one
            for rev in list(rounds)[::1 if i % 2 == 0 else -1]:
                got = saturation(cluster.bootstrap, codec, sat_events, layout, args.partitions,
                                 500, MODE, broker_cpu, rev=rev)
                rounds[rev].append(got)
                print(f"saturation ({rev or 'today'}): {got['rate']:,.0f} events/s", flush=True)
        sat = _median_round(rounds[None])
        tally, counting = counted(cluster.bootstrap, codec, sat_events, layout,
                                  args.partitions, broker_cpu)
        counted_at = None  # the same primitives counted at the rate nearest 1,000/s
        nearest = min(rates, key=lambda r: abs(r - 1000))
        for rate in rates:
            offered = offer_of(codec, rate, args.seconds + args.warm_up)
            if rate == nearest:
                try:
                    counted_at = rate, len(offered), *counted(
                        cluster.bootstrap, codec, offered, layout, args.partitions,
                        broker_cpu, rate, args.warm_up)
                except RuntimeError as exc:  # fell behind: reported with the rate's row
                    print(f"counting round at {rate:,}/s: {str(exc)[:90]}", flush=True)
            for mode in (RELAY, MODE):
                figures: dict[str, Any] = {}
                try:
                    figures["lat"] = open_loop(cluster.bootstrap, codec, offered, layout,
                                               args.partitions, 500, rate, mode, broker_cpu,
                                               args.warm_up, figures)
                except RuntimeError as exc:  # answers fell behind: more than it can carry
                    figures["failed"] = str(exc).split(";")[0]
                runs[(rate, mode)] = figures
        peer = None if python is None else peer_rounds(
            cluster.bootstrap, broker_cpu, codec,
            card_events(codec, args.peer),
            args.partitions, PEER_WORKERS, 1, python)

    given = argv if argv is not None else sys.argv[2:]
    print(f"\ncommand: python -m bench rates {' '.join(given)}")
    sat_cpu = sat["cpu_us"] + sat["broker_us"]
    print(f"saturation: {sat['rate']:,.0f} events/s; {sat['cpu_us']:.0f} µs of worker CPU and "
          f"{sat['broker_us']:.0f} µs of broker CPU per event (a raw hop of the same messages: "
          f"{raw['rate']:,.0f}/s, {raw['cpu_us']:.1f} + {raw['broker_us']:.1f} µs)")
    print("tripwire's own CPU against its primitives (bench.primitives: one more saturation "
          f"round, {counting['rate']:,.0f} events/s, each primitive counted and timed in it):")
    for line in report(tally, len(sat_events), raw["cpu_us"], counting["cpu_us"]):
        print(f"  {line}")
    if counted_at is not None:
        rate, n, low_tally, low_figures = counted_at
        print(f"the same primitives at {rate:,}/s (one more round, open loop, counted as "
              "above): what each call cost there against saturation's")
        for line in beside(tally, len(sat_events), counting["cpu_us"], low_tally, n,
                           low_figures["cpu_us"], rate):
            print(f"  {line}")
    if against is not None:
        then = _median_round(rounds[against])
        # each round's pair ran back to back: the machine's drift (the broker's JIT
        # still warming over minutes, a shared host's slow spells) hits both alike
        paired = statistics.median(a["rate"] / b["rate"]
                                   for a, b in zip(rounds[None], rounds[against], strict=True))
        print(f"saturation, A/B of commits ({len(rounds[None])} rounds each, A B B A..., "
              f"medians): today {sat['rate']:,.0f} events/s, {against} {then['rate']:,.0f}: "
              f"x{sat['rate'] / then['rate']:.2f} (median of the rounds' pairs "
              f"x{paired:.2f}); CPU per event (workers + broker) today "
              f"{sat['cpu_us']:.0f} + {sat['broker_us']:.0f} µs, {against} "
              f"{then['cpu_us']:.0f} + {then['broker_us']:.0f} µs")
    print(f"{'offered/s':>9} {'relays p50/p99 ms':>18} {'path p50/p99 ms':>16} "
          f"{'p99 x relays':>12} {'workers µs/ev':>13} {'broker µs/ev':>12} "
          f"{'x saturation CPU':>16} {'cores':>6}")
    for rate in rates:
        relay, path = runs[(rate, RELAY)], runs[(rate, MODE)]
        if "failed" in relay or "failed" in path:
            print(f"{rate:>9,} not carried: {(path.get('failed') or relay['failed'])[:90]}")
            continue
        (r50, r99), (p50, p99) = _quantiles(relay["lat"]), _quantiles(path["lat"])
        per_event = path["cpu_us"] + path["broker_us"]
        cores = per_event * rate / 1e6
        behind = "  (fell behind: more CPU than the cores have)" \
            if cores > (os.cpu_count() or 1) else ""
        print(f"{rate:>9,} {f'{r50:.1f} / {r99:.1f}':>18} {f'{p50:.1f} / {p99:.1f}':>16} "
              f"{p99 / r99:>12.2f} {path['cpu_us']:>13.0f} {path['broker_us']:>12.0f} "
              f"{per_event / sat_cpu:>16.2f} {cores:>6.2f}{behind}")
    low = min(rates)
    relay, path = runs[(low, RELAY)], runs[(low, MODE)]
    if "failed" not in relay and "failed" not in path:
        print(f"at {low}/s against the bare relays: workers x{path['cpu_us'] / relay['cpu_us']:.2f}"
              f" the relays' CPU per event, broker x{path['broker_us'] / relay['broker_us']:.2f}")
    shares = " + ".join(f"{w * 100:.1f}" for w in idle["workers"])
    broker = "n/a (not a local broker)" if idle["broker"] is None else \
        f"{idle['broker'] * 100:.1f} % (x{idle['broker'] / max(idle['alone'], 1e-4):.2f} its " \
        f"{idle['alone'] * 100:.1f} % with no client)"
    print(f"no traffic: workers {shares} % of a core; broker {broker}")
    if peer is not None:
        print(f"next to a peer ({QUIX}, {args.peer:,} card payments, one round each; "
              "bench.peer):")
        for line in peer_lines(peer, PEER_WORKERS):
            print(f"  {line}")


if __name__ == "__main__":
    main()
