"""The stage table is the pipeline's one declaration: the stages built from it,
wired by its inputs and outputs alone (records handed from stage to stage in
memory, no broker), write only the topics it declares and decide as the
one-process path built from the same table does."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from tripwire.connectors.simulator import (
    CARD_SCHEMA,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.controls.engine import ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import OneLogState, StateManager
from tripwire.streams.backtest import comparable
from tripwire.streams.stages import PATH, STAGES, Parts
from tripwire.streams.topics import ANSWERS, INPUTS, TOPICS

CODEC = AvroCodec(SchemaStore.default())
T0 = 1_790_000_000_000


def _events() -> list[InRecord]:
    evs = [*normal_card_payments(3, T0, 30, cards=4),
           *magstripe_contactless_attack(5, T0 + 20_000, 6)]
    evs.sort(key=lambda e: e["event_time"])
    return [InRecord("card_payments", 0, i, e["card_token"].encode(),
                     CODEC.encode(CARD_SCHEMA, e), e["event_time"]) for i, e in enumerate(evs)]


def _decisions(out: list[OutRecord]) -> dict[str, dict[str, Any]]:
    found = {}
    for o in out:
        if o.topic_key == "decisions":
            d = CODEC.decode(o.value)[1]
            found[d["event_id"]] = comparable(d)
    return found


@pytest.mark.parametrize("apart", [(), ("ip",)])
def test_stages_wired_by_the_table_write_what_it_declares(apart: tuple[str, ...]) -> None:
    parts = Parts(CODEC, ControlSet.from_dir(), apart=apart)
    built = {name: s.build(parts) for name, s in STAGES.items()}
    # every topic key the table names is a declared topic; each stage's own
    # routing (the topics it partitions itself) is among its outputs
    keys = {t.key for t in TOPICS}
    for name, s in STAGES.items():
        nodes = apart if name == "features" else ()
        assert set(s.inputs(nodes)) <= keys and set(s.outputs(apart)) <= keys, name
        assert set(built[name].routes) <= set(s.outputs(apart)), name
    assert STAGES["intake"].inputs(()) == INPUTS == PATH.inputs(())

    # who reads what: a features loop serving the apart nodes, and one the rest
    readers: dict[str, list[str]] = defaultdict(list)
    for name, s in STAGES.items():
        for key in {*s.inputs(()), *(s.inputs(apart) if name == "features" else ())}:
            readers[key].append(name)
    states = {name: StateManager(p.name, list(p.stores)) for name, p in built.items()}
    written: dict[str, list[OutRecord]] = defaultdict(list)
    queue: list[tuple[str, list[InRecord]]] = [("card_payments", _events())]
    offsets: dict[str, int] = defaultdict(int)
    for _ in range(20):  # the hops, until nothing is left in flight
        if not queue:
            break
        key, batch = queue.pop(0)
        for name in readers[key]:
            stage, state = built[name], states[name]
            for r in batch:
                state.open_partition((r.topic, r.partition))
            out = stage.process(batch, T0 + 60_000, state)
            out += stage.tick(T0 + 60_000, state)
            for o in out:
                assert o.topic_key in STAGES[name].outputs(apart), (name, o.topic_key)
                written[o.topic_key].append(o)
            by_key: dict[str, list[InRecord]] = defaultdict(list)
            for o in out:
                if o.topic_key in readers:
                    by_key[o.topic_key].append(InRecord(
                        o.topic_key, o.partition or 0, offsets[o.topic_key], o.key, o.value,
                        T0))
                    offsets[o.topic_key] += 1
            queue += sorted(by_key.items())
    assert not queue, "the hops settle"
    assert not set(written) - {*ANSWERS, "features", "gather", *(f"features_{e}" for e in apart)}

    split = _decisions(written["decisions"])
    path = PATH.build(parts)
    one = _decisions(path.process(_events(), T0 + 60_000,
                                  OneLogState(path.name, list(path.stores))))
    assert len(one) == 36 and split == one and len(split) == 36
    assert any(d["outcome"] != "ALLOW" for d in one.values()), "the attack is caught"
