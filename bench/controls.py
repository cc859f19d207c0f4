"""Cost of the control network per event, as a ratio to one bare frozen Starlark
call of its largest control, measured in the same run (no broker: pure function).

  * bare call: ``FrozenModule.call(fn, event, features)`` of one control with the
    event and *all* its features — what calling that one control costs without
    the engine; the largest (most expensive) control of each event type is the
    baseline; the same control given only the names it reads is shown too;
  * network: :meth:`ControlSet.evaluate` — choose the controls, run the detectors,
    the action controls (when a detector fired) and the selection control;
  * network + log: the same and the control-execution records, encoded.

Events are a bank-like mix with an attack inside, so a share of events go
through the whole network. Target: network at most 3 times the bare call.

    .venv/bin/python -m bench controls --events 6000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

from tripwire.connectors.simulator import CARD_SCHEMA, magstripe_contactless_attack, mixed_traffic
from tripwire.controls.decider import Decider
from tripwire.controls.engine import Control, ControlSet
from tripwire.features.kinds import EVENT_KINDS
from tripwire.schemas.records import InRecord
from tripwire.schemas.validate import ValidationPolicy, Validator
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath

__all__ = ["main"]

Sample = tuple[str, dict[str, Any], dict[str, Any]]  # (event type, event, features)


def samples(n: int, t0: int) -> list[Sample]:
    """Events with the features the live path computed for them."""
    base = DecisionPath.default()
    path = DecisionPath(base.codec, base.controls,
                        validator=Validator(ValidationPolicy(max_event_age_ms=None)))
    traffic = [(f"tripwire.events.{k}", e) for k, e in
               mixed_traffic(5, t0, n, accounts=max(8, n // 20), devices=max(5, n // 30),
                             ips=max(4, n // 40), payees=max(5, n // 50))]
    traffic += [(CARD_SCHEMA, e) for e in magstripe_contactless_attack(6, t0, n // 10)]
    traffic.sort(key=lambda se: se[1]["event_time"])
    recs = [InRecord("log", 0, i, b"k", path.codec.encode(s, e), e["event_time"])
            for i, (s, e) in enumerate(traffic)]
    state = StateManager(path.name, list(path.stores))
    outs = path.process(recs, traffic[-1][1]["event_time"] + 1000, state)
    events = {e["event_id"]: (s, e) for s, e in traffic}
    out = []
    for o in outs:
        if o.topic_key == "decisions":
            d = path.codec.decode(o.value)[1]
            schema, event = events[d["event_id"]]
            out.append((EVENT_KINDS[schema].short, event, d["features"]))
    return out


def _per_call(fn: Any, items: list[Any], rounds: int) -> float:
    """Median over rounds of the mean µs per item."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for item in items:
            fn(item)
        times.append((time.perf_counter_ns() - start) / len(items) / 1000)
    return statistics.median(times)


def _bare(c: Control, event: dict[str, Any], features: dict[str, Any]) -> Any:
    if c.stage == "ACTION":
        return c.module.call(c.function, event, features, {})
    return c.module.call(c.function, event, features)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench controls")
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    controls = ControlSet.from_dir()
    base = DecisionPath.default()
    decider = Decider(base.codec, controls)
    data = samples(args.events, 1_790_000_000_000)
    by_type: dict[str, list[Sample]] = defaultdict(list)
    for s in data:
        by_type[s[0]].append(s)
    print(f"{len(data)} events with their features ({len(controls.controls)} controls: "
          f"{sum(c.stage == 'DETECTOR' for c in controls.controls)} detectors, "
          f"{sum(c.stage == 'ACTION' for c in controls.controls)} action controls, "
          "1 selection)")
    print(f"\nmedians of {args.repeats} rounds; command: python -m bench controls "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"{'event type':12} {'events':>6} {'fired':>6} {'largest control':>20} "
          f"{'bare µs':>8} {'(reads)':>8} {'network':>8} {'+ log':>8} {'x bare':>7} "
          f"{'x bare+log':>10}")
    worst = 0.0
    for kind, items in sorted(by_type.items()):
        pairs = [(e, f) for _, e, f in items]
        if not controls.for_type(kind):
            print(f"{kind:12} {len(items):>6} {'no controls apply':>30}")
            continue
        bare = {}
        for c in controls.for_type(kind) + controls.for_type(kind, "ACTION"):
            bare[c.control_id] = (
                _per_call(lambda ef, c=c: _bare(c, *ef), pairs, args.repeats),
                _per_call(lambda ef, c=c: _bare(c, *(c.inputs(*ef)[k] for k in
                                                     ("event", "features"))),
                          pairs, args.repeats))
        largest, (full, reads) = max(bare.items(), key=lambda kv: kv[1][0])
        fired = sum(any(r.stage == "SELECTION" for r in controls.evaluate(kind, e, f).results)
                    for e, f in pairs)
        network = _per_call(lambda ef, k=kind: controls.evaluate(k, *ef), pairs, args.repeats)

        def logged(ef: tuple[dict[str, Any], dict[str, Any]], k: str = kind) -> None:
            v = controls.evaluate(k, *ef)
            decider.executions(ef[0]["event_id"], "d", v.results, 0)

        with_log = _per_call(logged, pairs, args.repeats)
        worst = max(worst, network / full)
        print(f"{kind:12} {len(items):>6} {fired:>6} {largest:>20} {full:>8.1f} {reads:>8.1f} "
              f"{network:>8.1f} {with_log:>8.1f} {network / full:>7.2f} "
              f"{with_log / full:>10.2f}")
    print(f"worst network / bare-call ratio: {worst:.2f} (target ≤ 3)")
    _isolated(controls, data, args.repeats)


BATCH = 100  # events decided together: what a decide stage's batch completes


def _isolated(controls: ControlSet, data: list[Sample], rounds: int) -> None:
    """The network in this process against in the supervised child the workers
    use (:mod:`tripwire.controls.supervisor`): wall time per event (the caller
    waits) and CPU per event of both processes."""
    from bench.common import proc_cpu
    from tripwire.controls.supervisor import ControlProcess

    box = ControlProcess(controls)
    try:
        walls: dict[str, list[float]] = {"in process": [], "in the child": []}
        cpus: dict[str, list[float]] = {"in process": [], "in the child": []}
        def in_child(batch: list[Sample]) -> None:
            box.evaluate_many([(k, e, f, "") for k, e, f in batch])

        def in_process(batch: list[Sample]) -> None:
            for k, e, f in batch:
                controls.evaluate(k, e, f)

        for _ in range(rounds):
            for name, run in (("in process", in_process), ("in the child", in_child)):
                cpu0 = time.process_time() + proc_cpu(box._proc.pid)
                start = time.perf_counter_ns()
                for i in range(0, len(data), BATCH):
                    run(data[i:i + BATCH])
                walls[name].append((time.perf_counter_ns() - start) / len(data) / 1000)
                cpus[name].append((time.process_time() + proc_cpu(box._proc.pid) - cpu0)
                                  / len(data) * 1e6)
    finally:
        box.close()
    inside, apart = (statistics.median(walls[k]) for k in walls)
    cpu_in, cpu_apart = (statistics.median(cpus[k]) for k in cpus)
    print(f"the network per event, batches of {BATCH} (median of {rounds}), in process: "
          f"{inside:.1f} µs wall, "
          f"{cpu_in:.1f} µs CPU; in the supervised child: {apart:.1f} µs wall "
          f"(x{apart / inside:.2f}), {cpu_apart:.1f} µs CPU of both processes "
          f"(x{cpu_apart / cpu_in:.2f})")


if __name__ == "__main__":
    main()
