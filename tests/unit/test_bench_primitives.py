"""bench.primitives: a worker's counting round counts and times every primitive it
does, each once, and the bench sums them per event (issue 26's floor)."""

from __future__ import annotations

import itertools
import pickle
import re
from collections import Counter
from pathlib import Path

from bench.primitives import Tally, beside, install, merged, report
from tripwire.connectors.simulator import mixed_traffic
from tripwire.controls.engine import Control, ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.schemas.validate import Validator
from tripwire.state.rocks import RocksStore


def _work(tmp_path: Path, traffic: list[tuple[str, dict[str, object]]]) -> None:
    codec = AvroCodec(SchemaStore.default())
    encoded = [codec.encode(f"tripwire.events.{kind}", e) for kind, e in traffic]
    validator = Validator()
    for value in encoded:
        schema, event = codec.decode(value)
        validator.validate(schema.name, event, 1_790_000_000_000)
    store = RocksStore(tmp_path / "store")
    for i in range(5):
        store.put(b"k%d" % i, b"v" * 50)
    store.put_many([(b"m1", b"x"), (b"m2", b"y"), (b"k0", None)])
    store.flush()
    for key in (b"k2", b"k3", b"absent", b"m1"):
        store.get(key)
    controls = {c.control_id: c for c in ControlSet.from_dir().controls}
    card = next(e for kind, e in traffic if kind == "CardPayment")
    for _ in range(3):
        assert controls["card_testing"].run(card, {}).error is None
    controls["high_risk_country"].run(card, {})
    store.close()  # its last write batch (nothing buffered: none)


def test_each_primitive_is_counted_and_timed_once(tmp_path: Path) -> None:
    traffic = mixed_traffic(3, 1_790_000_000_000, 40)
    ticks = itertools.count(0, 1000)  # every clock read 1 µs on: each timed call costs 1 µs
    uncounted_encode, uncounted_run = AvroCodec.encode, Control.run
    tally, restore = install(clock=lambda: next(ticks))
    try:
        _work(tmp_path, traffic)
    finally:
        restore()
    assert AvroCodec.encode is uncounted_encode and Control.run is uncounted_run

    kinds = Counter(f"tripwire.events.{kind}" for kind, _ in traffic)
    expected = Counter({**{f"encode {k}": c for k, c in kinds.items()},
                        **{f"decode {k}": c for k, c in kinds.items()},
                        "call card_testing": 3, "call high_risk_country": 1,
                        "get": 4, "write": 2, "put": 5 + 3,
                        "own validate": sum(kinds.values())})
    assert tally.count == expected
    assert tally.ns == Counter({k: 1000 * c for k, c in expected.items() if k != "put"})
    # the sum of the primitives leaves the marker of tripwire's own Python out
    timed = +Counter({k: c for k, c in expected.items() if k not in ("put", "own validate")})

    tally.records_read, tally.records_written = 30, 50
    lines = report(tally, events=20, hop_us=3.0, path_us=3 * (sum(timed.values()) / 20
                                                               + 80 / 2 * 3.0 / 20))
    rows = {line[:18].strip(): line.split() for line in lines[1:7]}
    assert rows["Avro decode"][-1] == f"{sum(kinds.values()) / 20:.1f}"
    assert rows["Starlark calls"][-3:] == ["0.20", "1.00", "0.2"]
    assert rows["state writes"][-3:] == ["0.40", "0.25", "0.1"]  # 2 batches of 8 values
    assert rows["the hops' client"][-3:] == ["4.00", "1.50", "6.0"]
    floor = next(line for line in lines if line.startswith("sum (the floor)"))
    assert float(floor.split()[-1]) == round(sum(timed.values()) / 20 + 6.0, 1)
    assert re.search(r"x3\.00 the sum", lines[8]), lines[8]


def test_the_real_clock_times_what_the_work_took(tmp_path: Path) -> None:
    tally, restore = install()
    try:
        _work(tmp_path, mixed_traffic(4, 1_790_000_000_000, 20))
    finally:
        restore()
    assert all(tally.ns[k] > 0 for k in tally.count if k != "put")
    # a Starlark call costs more than reading one key of a small store
    assert tally.ns["call card_testing"] / 3 > tally.ns["get"] / 4


def test_the_workers_tallies_are_added_up(tmp_path: Path) -> None:
    for pid, n in ((1, 150), (2, 120)):
        t = Tally(Counter({"encode a": n, "get": 2 * n}), Counter({"encode a": 10 * n}), n, 0)
        (tmp_path / f"{pid}.tally").write_bytes(pickle.dumps(t))
    (tmp_path / "other.txt").write_text("not a tally")
    total = merged(tmp_path)
    assert total.count == Counter({"encode a": 270, "get": 540})
    assert total.ns == Counter({"encode a": 2700}) and total.records_read == 270


def test_the_same_calls_are_set_beside_at_a_low_rate() -> None:
    def tally(calls: dict[str, tuple[int, int]]) -> Tally:  # key -> (count, µs each)
        return Tally(Counter({k: c for k, (c, _) in calls.items()}),
                     Counter({k: c * us * 1000 for k, (c, us) in calls.items()}))

    sat = tally({"encode Decision": (100, 60), "decode CardPayment": (200, 10),
                 "call velocity": (300, 15), "own validate": (100, 8)})
    low = tally({"encode Decision": (50, 90), "decode CardPayment": (120, 20),
                 "call velocity": (150, 15), "get": (50, 1),  # not done at saturation
                 "own validate": (50, 12)})  # tripwire's own: never with the primitives
    sat.records_read, sat.records_written, low.records_read, low.records_written = \
        300, 400, 500, 500
    lines = beside(sat, 100, 600.0, low, 50, 1200.0, rate=1000)
    assert "1,000/s" in lines[0]
    rows = [line.split() for line in lines[1:4]]
    # dearest per event at saturation first: 60, 45 and 20 µs
    assert rows == [["encode", "Decision", "1.00", "60.00", "90.00", "1.50"],
                    ["call", "velocity", "3.00", "15.00", "15.00", "1.00"],
                    ["decode", "CardPayment", "2.00", "10.00", "20.00", "2.00"]]
    assert lines[4] == ("work per event, saturation → the rate: hop records 7.00 → 20.00; "
                        "state values written 0.00 → 0.00; state reads 0.00 → 1.00; "
                        "encodes 1.00 → 1.00; decodes 2.00 → 2.40")
    figures = [line.split("(")[0].split()[-3:] for line in lines[5:]]
    assert len(figures) == 4 and lines[-1].startswith("tripwire own Python, validate")
    # saturation's calls at the low rate's cost each: 90 + 45 + 40 µs against 125
    assert figures[0] == ["125.0", "175.0", "1.40"]
    # as each round did them, per event of its own: (4,500 + 2,400 + 2,250 + 50) / 50
    assert figures[1] == ["125.0", "184.0", "1.47"]
    assert figures[2] == ["600.0", "1200.0", "2.00"]
    assert figures[3] == ["8.00", "12.00", "1.50"]
