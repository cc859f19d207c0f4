"""Packed internal records: every item reaches the partition of its key, in order,
in records the broker accepts."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import partition_for
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.hops import FEATURE_FRAGMENTS, MAX_BYTES, Packer, unpack

CODEC = AvroCodec(SchemaStore.default())


def _items(keys: list[str], note: str = "") -> list[tuple[bytes, dict]]:
    return [(k.encode(), {"identity": k, "entity": "card", "entity_key": f"{k}#{i}",
                          "values": {"n": i}, "notes": [note] if note else []})
            for i, k in enumerate(keys)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), max_size=300),
       st.integers(min_value=1, max_value=7))
def test_items_land_on_their_keys_partition_in_order(keys: list[str], partitions: int) -> None:
    packer = Packer()
    packer.partitions = {"gather": partitions}
    items = _items(keys)
    records = packer.pack(CODEC, FEATURE_FRAGMENTS, "gather", items, as_json=True)
    got: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        assert r.topic_key == "gather" and r.partition is not None
        got[r.partition] += unpack(CODEC.decode(r.value)[1])
    want: dict[int, list[dict]] = defaultdict(list)
    for key, item in items:
        want[partition_for(key, partitions)].append(item)
    assert got == want


def test_large_batches_are_split_under_the_size_limit() -> None:
    packer = Packer()
    items = _items([f"id-{i}" for i in range(900)], note="x" * 2000)  # ~1.9 MB in all
    records = packer.pack(CODEC, FEATURE_FRAGMENTS, "gather", items, as_json=True)
    assert len(records) > 1
    assert all(len(r.value) <= MAX_BYTES for r in records)
    assert [i for r in records for i in unpack(CODEC.decode(r.value)[1])] == \
        [i for _, i in items]
