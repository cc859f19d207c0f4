"""Point lookups in a worker's RocksDB store, with and without Bloom filters.

Most lookups of the decision path miss: every new event is looked up in the
dedup store and every new identity in the decision memory. A store filled to a
production-like size (``--keys``, random 32-hex-digit ids as keys, ~250-byte
values, flushed to table files) is read with keys it does not hold and with
keys it holds, the stores' default (:attr:`RocksStore.BLOOM_BITS`) against the
same store without filters (the baseline), alternated round by round. No
broker: the stores alone.

    .venv/bin/python -m bench state --keys 1000000 --lookups 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tripwire.state.rocks import RocksStore


def _fill(path: Path, keys: list[bytes], bloom_bits: int) -> RocksStore:
    store = RocksStore(path, bloom_bits)
    for i in range(0, len(keys), 20_000):
        store.put_many([(k, os.urandom(250)) for k in keys[i:i + 20_000]])
        store.flush()
    store._db.flush(True)  # memtables to table files, where the filters are
    return store


def _per_get(store: RocksStore, keys: list[bytes]) -> float:
    start = time.perf_counter_ns()
    for k in keys:
        store.get(k)
    return (time.perf_counter_ns() - start) / len(keys) / 1000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench state")
    ap.add_argument("--keys", type=int, default=1_000_000, help="keys in the store")
    ap.add_argument("--lookups", type=int, default=100_000, help="lookups per round and kind")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    keys = [os.urandom(16).hex().encode() for _ in range(args.keys)]
    absent = [os.urandom(16).hex().encode() for _ in range(args.lookups)]
    present = [keys[i] for i in range(0, args.keys, max(1, args.keys // args.lookups))]
    modes = {"no filter (baseline)": 0, f"bloom {RocksStore.BLOOM_BITS} bits/key (default)":
             RocksStore.BLOOM_BITS}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tripwire-bench-state-") as d:
        stores = {}
        for name, bits in modes.items():
            t = time.perf_counter()
            stores[name] = _fill(Path(d) / str(bits), keys, bits)
            tables = sum(f.stat().st_size for f in (Path(d) / str(bits)).rglob("*.sst"))
            print(f"{name}: {args.keys:,} keys written in {time.perf_counter() - t:.1f} s, "
                  f"{tables / 2**20:.0f} MB of table files", flush=True)
        for _ in range(args.repeats):
            for name, store in stores.items():  # alternated: drift hits both alike
                times.setdefault((name, "miss"), []).append(_per_get(store, absent))
                times.setdefault((name, "hit"), []).append(_per_get(store, present))
        for store in stores.values():
            store.close()
        shutil.rmtree(d, ignore_errors=True)
    print(f"\nmedians of {args.repeats} rounds; command: python -m bench state "
          f"{' '.join(argv if argv is not None else sys.argv[2:])}")
    print(f"{'store':36} {'µs per miss':>12} {'µs per hit':>11} {'x baseline miss':>16} "
          f"{'x baseline hit':>15}")
    base = {k: statistics.median(times[(next(iter(modes)), k)]) for k in ("miss", "hit")}
    for name in modes:
        miss, hit = (statistics.median(times[(name, k)]) for k in ("miss", "hit"))
        print(f"{name:36} {miss:>12.2f} {hit:>11.2f} {miss / base['miss']:>16.2f} "
              f"{hit / base['hit']:>15.2f}")


if __name__ == "__main__":
    main()
