"""bench.primitives: a worker's counting round counts every primitive it does, and
the bench prices each one and sums them per event (issue 26's floor)."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

from bench.primitives import SAMPLES, Tally, install, merged, price, report
from tripwire.connectors.simulator import mixed_traffic
from tripwire.controls.engine import Control, ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.state.rocks import RocksStore


def test_each_primitive_is_counted_priced_and_summed(tmp_path: Path) -> None:
    codec = AvroCodec(SchemaStore.default())
    traffic = mixed_traffic(3, 1_790_000_000_000, 40)
    controls = {c.control_id: c for c in ControlSet.from_dir().controls}
    uncounted_encode, uncounted_run = AvroCodec.encode, Control.run
    tally, restore = install()
    try:
        encoded = [codec.encode(f"tripwire.events.{kind}", e) for kind, e in traffic]
        for value in encoded:
            codec.decode(value)
        store = RocksStore(tmp_path / "store")
        for i in range(5):
            store.put(b"k%d" % i, b"v" * 50)
        store.put_many([(b"m1", b"x"), (b"m2", b"y"), (b"k0", None)])
        store.delete(b"k1")
        for key in (b"k2", b"k3", b"absent", b"m1"):
            store.get(key)
        card = next(e for kind, e in traffic if kind == "CardPayment")
        for _ in range(3):
            controls["card_testing"].run(card, {})
        controls["high_risk_country"].run(card, {})
    finally:
        restore()
    assert AvroCodec.encode is uncounted_encode and Control.run is uncounted_run
    codec.encode(f"tripwire.events.{traffic[0][0]}", traffic[0][1])  # no longer counted
    store.close()

    kinds = Counter(f"tripwire.events.{kind}" for kind, _ in traffic)
    assert tally.encodes == kinds and tally.decodes == kinds
    assert tally.calls == Counter({"card_testing": 3, "high_risk_country": 1})
    assert (tally.gets, tally.puts) == (4, 5 + 3 + 1)
    assert tally.got == [b"k2", b"k3", b"absent", b"m1"]
    assert set(tally.decoded) == set(kinds)
    assert all(len(v) == kinds[k] <= SAMPLES for k, v in tally.decoded.items())
    assert all(json.loads(given) for given in tally.inputs["card_testing"])

    prices = price(tally, codec)
    assert set(prices["encode"]) == set(prices["decode"]) == set(kinds)
    assert set(prices["call"]) == {"card_testing", "high_risk_country"}
    assert all(us > 0 for part in prices.values() for us in part.values())
    assert set(prices["state"]) == {"get", "put"}

    events, hop_us = 20, 3.0
    floor = (sum(c * prices["decode"][s] for s, c in kinds.items())
             + sum(c * prices["encode"][s] for s, c in kinds.items())
             + 4 * prices["state"]["get"] + 9 * prices["state"]["put"]
             + 3 * prices["call"]["card_testing"] + prices["call"]["high_risk_country"]) / events
    lines = report(tally, prices, events, hop_us, path_us=3 * floor)
    summed = next(line for line in lines if line.startswith("sum (the floor)"))
    assert float(summed.split()[-1]) == round(floor, 1)
    ratio = next(line for line in lines if "the sum of its primitives" in line)
    assert re.search(r"x3\.00 the sum", ratio), ratio


def test_the_workers_tallies_are_added_up_and_their_samples_bounded(tmp_path: Path) -> None:
    def one(n: int) -> Tally:
        t = Tally()
        t.encodes["a"], t.calls["c"], t.gets, t.records_read = n, 2 * n, 3 * n, 4 * n
        t.encoded["a"] = [b"%d" % i for i in range(n)]
        return t.plain()

    for pid, n in ((1, 150), (2, 120)):
        (tmp_path / f"{pid}.tally").write_bytes(pickle.dumps(one(n)))
    (tmp_path / "other.txt").write_text("not a tally")
    total = merged(tmp_path)
    assert (total.encodes["a"], total.calls["c"], total.gets, total.records_read) == \
        (270, 540, 810, 1080)
    assert len(total.encoded["a"]) == SAMPLES  # 150 of one, the first 50 of the other
