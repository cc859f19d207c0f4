"""Tripwire's own CPU per event against the sum of its primitives (issue 26).

The floor of what the decision path can cost on this machine is the work it
cannot avoid doing, priced one primitive at a time:

* **Avro**: every decode and encode the workers did, by schema, each timed
  here on records they decoded and encoded;
* **state**: every RocksDB read and write, timed on a store holding the keys
  and values they wrote;
* **Starlark**: every control call, each control timed here on inputs it was
  given (the call into starlark-pyo3 alone: the JSON in and out included, the
  picking of inputs and the making of results not);
* **the hops**: every record a worker read or wrote (the changelogs' too), at a
  raw confluent-kafka hop's client CPU per message, half a hop each.

A counting round runs the same workers on the same events at saturation, with
each primitive counted (:func:`install`, in the worker; the round's own CPU is
not used). Its counts per event, times the prices measured here once the
broker has stopped (each primitive alone, as the machine's decode speed is
measured), are the sum;
the path's CPU per event at saturation (measured in rounds without counting)
against it is the ratio issue 26 asks to bring to 2 times or less.

    .venv/bin/python -m bench primitives --events 20000
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tripwire.schemas.codec import AvroCodec

__all__ = ["Tally", "counted", "install", "main", "price", "report"]

SAMPLES = 200  # records kept per schema (and inputs per control) to price them on


@dataclass
class Tally:
    """What one worker did, counted: by schema, by control, by kind of state op."""

    encodes: Counter[str] = field(default_factory=Counter)
    decodes: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    gets: int = 0
    puts: int = 0
    records_read: int = 0
    records_written: int = 0
    encoded: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    decoded: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    inputs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    got: list[bytes] = field(default_factory=list)
    put: list[tuple[bytes, bytes]] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for mine, theirs in ((self.encodes, other.encodes), (self.decodes, other.decodes),
                             (self.calls, other.calls)):
            mine.update(theirs)
        self.gets += other.gets
        self.puts += other.puts
        self.records_read += other.records_read
        self.records_written += other.records_written
        pairs: tuple[tuple[dict[str, list[Any]], dict[str, list[Any]]], ...] = (
            (self.encoded, other.encoded), (self.decoded, other.decoded),
            (self.inputs, other.inputs))
        for kept, more in pairs:
            for k, v in more.items():
                kept[k].extend(v[:max(0, SAMPLES - len(kept[k]))])
        self.got.extend(other.got[:max(0, 10 * SAMPLES - len(self.got))])
        self.put.extend(other.put[:max(0, 10 * SAMPLES - len(self.put))])

    def plain(self) -> Tally:
        """A copy that pickles (no defaultdicts of closures)."""
        return Tally(Counter(self.encodes), Counter(self.decodes), Counter(self.calls),
                     self.gets, self.puts, self.records_read, self.records_written,
                     dict(self.encoded), dict(self.decoded), dict(self.inputs),
                     list(self.got), list(self.put))


def install() -> tuple[Tally, Callable[[], None]]:
    """Count every primitive this process does from now on (a bench worker's
    counting round): AvroCodec's encode and decode, RocksStore's reads and
    writes, controls' calls, keeping the first records and inputs of each kind.
    The tally, and a function that puts the uncounted methods back."""
    import orjson

    from tripwire.controls.engine import Control
    from tripwire.state.rocks import RocksStore

    tally = Tally()
    encode, decode, run = AvroCodec.encode, AvroCodec.decode, Control.run
    get, put, delete, put_many = (RocksStore.get, RocksStore.put, RocksStore.delete,
                                  RocksStore.put_many)

    def counted_encode(self: AvroCodec, schema_name: str, record: dict[str, Any],
                       version: int | None = None) -> bytes:
        out = encode(self, schema_name, record, version)
        tally.encodes[schema_name] += 1
        if len(kept := tally.encoded[schema_name]) < SAMPLES:
            kept.append(pickle.dumps((schema_name, record, version)))
        return out

    def counted_decode(self: AvroCodec, data: bytes | None) -> Any:
        schema, record = decode(self, data)
        tally.decodes[schema.name] += 1
        if data and len(kept := tally.decoded[schema.name]) < SAMPLES:
            kept.append(bytes(data))
        return schema, record

    def counted_run(self: Control, event: Any, features: Any = None, entity_key: str = "",
                    memo: Any = None, **extra: Any) -> Any:
        tally.calls[self.control_id] += 1
        if len(kept := tally.inputs[self.control_id]) < SAMPLES:
            kept.append(orjson.dumps(self.inputs(event, features, extra)).decode())
        return run(self, event, features, entity_key, memo, **extra)

    def counted_get(self: RocksStore, key: bytes) -> bytes | None:
        tally.gets += 1
        if len(tally.got) < 10 * SAMPLES:
            tally.got.append(key)
        return get(self, key)

    def counted_put(self: RocksStore, key: bytes, value: bytes) -> None:
        tally.puts += 1
        if len(tally.put) < 10 * SAMPLES:
            tally.put.append((key, value))
        put(self, key, value)

    def counted_delete(self: RocksStore, key: bytes) -> None:
        tally.puts += 1
        delete(self, key)

    def counted_put_many(self: RocksStore, items: list[tuple[bytes, bytes | None]]) -> None:
        tally.puts += len(items)
        room = 10 * SAMPLES - len(tally.put)
        tally.put.extend((k, v) for k, v in items[:max(0, room)] if v is not None)
        put_many(self, items)

    def restore() -> None:
        AvroCodec.encode, AvroCodec.decode, Control.run = encode, decode, run  # type: ignore[method-assign]
        RocksStore.get, RocksStore.put, RocksStore.delete, RocksStore.put_many = (  # type: ignore[method-assign]
            get, put, delete, put_many)

    AvroCodec.encode = counted_encode  # type: ignore[method-assign]
    AvroCodec.decode = counted_decode  # type: ignore[method-assign]
    Control.run = counted_run  # type: ignore[method-assign]
    RocksStore.get = counted_get  # type: ignore[method-assign]
    RocksStore.put = counted_put  # type: ignore[method-assign]
    RocksStore.delete = counted_delete  # type: ignore[method-assign]
    RocksStore.put_many = counted_put_many  # type: ignore[method-assign]
    return tally, restore


def _priced(samples: list[Any], one: Callable[[Any], object], passes: int = 3) -> float:
    """µs per sample of ``one`` over every sample (the median of ``passes``)."""
    times = []  # CPU time of this thread: the broker beside it takes none of it
    for _ in range(passes):
        start = time.thread_time_ns()
        for s in samples:
            one(s)
        times.append((time.thread_time_ns() - start) / len(samples) / 1000)
    return statistics.median(times)


def price(tally: Tally, codec: AvroCodec) -> dict[str, dict[str, float]]:
    """Each primitive's price in µs of this thread's CPU, measured here on the
    records, keys and inputs the workers kept: ``{"encode": {schema: µs},
    "decode": {...}, "call": {control: µs}, "state": {"get": µs, "put": µs}}``.
    Measured with nothing else running (after the bench's broker has stopped):
    priced beside a broker still at work, as the machine's decode speed is not,
    the same records cost up to twice as much here."""
    from tripwire.controls.engine import _ENTRY, ControlSet
    from tripwire.state.rocks import RocksStore

    prices: dict[str, dict[str, float]] = {"encode": {}, "decode": {}, "call": {}, "state": {}}
    for name, kept in tally.encoded.items():
        records = [pickle.loads(k) for k in kept]
        prices["encode"][name] = _priced(records, lambda r: codec.encode(*r))
    for name, data in tally.decoded.items():
        prices["decode"][name] = _priced(data, codec.decode)
    controls = {c.control_id: c for c in ControlSet.from_dir().controls}
    for cid, inputs in tally.inputs.items():
        c = controls.get(cid)
        if c is None or not inputs:
            continue

        def call(given: str, c: Any = c) -> object:
            c.budget.deadline = time.perf_counter_ns() + c.budget.budget_ns
            return c.module.call_with(c.budget.options, _ENTRY, given).value
        prices["call"][cid] = _priced(inputs, call)
    home = Path(tempfile.mkdtemp(prefix="tripwire-bench-primitives-"))
    try:
        store = RocksStore(home)
        puts = tally.put or [(b"k%d" % i, b"v" * 100) for i in range(1000)]

        def write_all(_: object) -> None:
            for i in range(0, len(puts), 500):
                store.put_many(list(puts[i:i + 500]))
                store.flush()
        prices["state"]["put"] = _priced([None], write_all) / len(puts)
        store._db.flush(True)  # as a worker's store between commits: in table files too
        keys = tally.got or [k for k, _ in puts]
        prices["state"]["get"] = _priced(keys, store.get)
        store.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return prices


def report(tally: Tally, prices: dict[str, dict[str, float]], events: int, hop_us: float,
           path_us: float) -> list[str]:
    """The sum of the primitives per event, part by part, against ``path_us`` (the
    workers' CPU per event at saturation); ``hop_us``: a raw hop's client CPU per
    message. Lines to print."""
    n = max(events, 1)
    parts = {
        "Avro decode": sum(c * prices["decode"].get(s, 0.0) for s, c in tally.decodes.items()),
        "Avro encode": sum(c * prices["encode"].get(s, 0.0) for s, c in tally.encodes.items()),
        "state reads": tally.gets * prices["state"].get("get", 0.0),
        "state writes": tally.puts * prices["state"].get("put", 0.0),
        "Starlark calls": sum(c * prices["call"].get(k, 0.0) for k, c in tally.calls.items()),
        "the hops' client": (tally.records_read + tally.records_written) / 2 * hop_us,
    }
    counts = {
        "Avro decode": sum(tally.decodes.values()), "Avro encode": sum(tally.encodes.values()),
        "state reads": tally.gets, "state writes": tally.puts,
        "Starlark calls": sum(tally.calls.values()),
        "the hops' client": tally.records_read + tally.records_written,
    }
    total = sum(parts.values()) / n
    lines = [f"{'primitive':18} {'per event':>10} {'µs each':>8} {'µs per event':>13}"]
    for name, us in parts.items():
        each = us / max(counts[name], 1)
        lines.append(f"{name:18} {counts[name] / n:>10.2f} {each:>8.2f} {us / n:>13.1f}")
    lines.append(f"{'sum (the floor)':18} {'':>10} {'':>8} {total:>13.1f}")
    lines.append(f"the workers' CPU per event at saturation: {path_us:.0f} µs, "
                 f"x{path_us / max(total, 1e-9):.2f} the sum of its primitives (target <= 2)")
    avro = [(c * prices[kind].get(s, 0.0) / n, f"{kind} {s.rsplit('.', 1)[-1]}")
            for kind, counted in (("decode", tally.decodes), ("encode", tally.encodes))
            for s, c in counted.items()]
    lines.append("largest Avro items, µs per event: " + ", ".join(
        f"{name} {us:.1f}" for us, name in sorted(avro, reverse=True)[:5]))
    return lines


def merged(folder: Path) -> Tally:
    """The tallies the counting round's workers left in ``folder``, added up."""
    tally = Tally()
    for f in sorted(folder.glob("*.tally")):
        tally.add(pickle.loads(f.read_bytes()))
    return tally


def main(argv: list[str] | None = None) -> None:
    from bench.common import bench_cluster, calibrate
    from bench.path import _events, _raw_round, layout_of, saturation
    from tripwire.schemas.registry import SchemaStore

    ap = argparse.ArgumentParser(prog="python -m bench primitives")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="saturation rounds (medians)")
    args = ap.parse_args(argv)
    codec = AvroCodec(SchemaStore.default())
    layout = layout_of("", "split", args.workers)
    print(f"{args.workers} workers, {args.partitions} partitions; {os.cpu_count()} cores; "
          f"machine: {calibrate(codec):.1f} µs per Avro decode", flush=True)
    events = _events(codec, args.events, int(time.time() * 1000) - 3_600_000, 31)
    with bench_cluster() as (cluster, broker_cpu):
        raw = _raw_round(cluster.bootstrap, events, args.partitions, broker_cpu)
        rounds = [saturation(cluster.bootstrap, codec, events, layout, args.partitions, 500,
                             "eager", broker_cpu) for _ in range(max(1, args.repeats))]
        tally = counted(cluster.bootstrap, codec, events, layout, args.partitions, broker_cpu)
    prices = price(tally, codec)  # with the broker stopped: each primitive alone
    path_us = statistics.median(r["cpu_us"] for r in rounds)
    print(f"\ncommand: python -m bench primitives "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"saturation: {statistics.median(r['rate'] for r in rounds):,.0f} events/s; a raw "
          f"hop {raw['cpu_us']:.1f} µs of client CPU per message")
    for line in report(tally, prices, len(events), raw["cpu_us"], path_us):
        print(line)


def counted(bootstrap: str, codec: AvroCodec, events: list[tuple[str, bytes, bytes, str]],
            layout: Any, partitions: int, broker_cpu: Any) -> Tally:
    """A counting round of today's workers at saturation (:func:`install` in each):
    what they did, added up. Price it with :func:`price` once the broker has
    stopped."""
    from bench.path import saturation

    folder = Path(tempfile.mkdtemp(prefix="tripwire-bench-tally-"))
    try:
        saturation(bootstrap, codec, events, layout, partitions, 500, "eager", broker_cpu,
                   tally_to=str(folder))
        tally = merged(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not tally.decodes:
        raise RuntimeError("the counting round's workers left no tally")
    keep = os.environ.get("TRIPWIRE_BENCH_TALLY")
    if keep:  # for a closer look afterwards: pickle.loads(Path(keep).read_bytes())
        Path(keep).write_bytes(pickle.dumps(tally))
    return tally


if __name__ == "__main__":
    main()
