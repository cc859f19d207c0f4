"""A feature node applies each event once, however often an intake sends its
request: after an intake's abort or crash it reads its inputs again from its last
commit and sends the same requests again (internal messages go out at once), and
the node skips every position it has applied — also after its own restore."""

from __future__ import annotations

from typing import Any

from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.features.engine import FeatureLibrary
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord, OutRecord
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import StateManager
from tripwire.streams.hops import ALIVE, FEATURE_REQUESTS, unpack
from tripwire.streams.intake import IntakeStage
from tripwire.streams.nodes import FeatureStage

CODEC = AvroCodec(SchemaStore.default())
LIBRARY = FeatureLibrary()
T0 = 1_790_000_000_000
INPUT = "payments.card.v1"
NODE_TOPIC = "tripwire.features.v1"


def _events(n: int) -> list[InRecord]:
    evs = list(normal_card_payments(1, T0, n, cards=1))
    return [InRecord(INPUT, 0, i, b"k", CODEC.encode(CARD_SCHEMA, ev), T0)
            for i, ev in enumerate(evs)]


def _requests(batch: list[InRecord], entity: str | None = "card") -> list[InRecord]:
    """What a fresh intake (state of its last commit: none) sends the ``entity``
    node (None: every node; one node partition here)."""
    intake = IntakeStage(CODEC, LIBRARY, apart=() if entity is None else (entity,))
    state = StateManager(intake.name, list(intake.stores))
    for tp in {(r.topic, r.partition) for r in batch}:
        state.open_partition(tp)
    out = intake.process(batch, T0, state)
    node = [o for o in out if o.topic_key == ("features" if entity is None
                                              else f"features_{entity}")]
    assert node, f"the {entity} node gets requests"
    return [InRecord(NODE_TOPIC, 0, i, None, o.value, T0) for i, o in enumerate(node)]


def _node() -> tuple[FeatureStage, StateManager]:
    stage = FeatureStage(CODEC, LIBRARY)
    state = StateManager(stage.name, list(stage.stores))
    state.open_partition((NODE_TOPIC, 0))
    return stage, state


def _fragments(out: list[OutRecord]) -> dict[str, dict[str, Any]]:
    """identity → feature values, from a node's packed fragments (heartbeats aside)."""
    return {item[0]: item[3] for o in out for item in unpack(CODEC.decode(o.value)[1])
            if item[0] != ALIVE}


def test_requests_sent_again_are_not_counted_twice() -> None:
    batch = _events(6)
    stage, state = _node()
    first = _fragments(stage.process(_requests(batch[:4]), T0, state))
    assert len(first) == 4

    # the intake aborted after sending: it reads offsets 0..5 again and sends all
    again = _fragments(stage.process(_requests(batch), T0, state))
    assert stage.skipped == 4

    # the values equal those of a node that saw each request once
    once, once_state = _node()
    want = _fragments(once.process(_requests(batch), T0, once_state))
    assert set(again) == set(want) - set(first)
    assert {**first, **again} == want
    counts = [v for v in want.values() if any(isinstance(x, int) and x > 1 for x in v.values())]
    assert counts, "the card's windows count more than one event"


def test_positions_are_kept_in_the_state_and_restored() -> None:
    batch = _events(5)
    stage, state = _node()
    stage.process(_requests(batch[:3]), T0, state)
    state.checkpoint()  # what the loop does before each commit

    # another worker restores the partition from the changelog records
    restored, rstate = _node()
    tp = (NODE_TOPIC, 0)
    for i, (store, _tp, key, value) in enumerate(state.pending):
        rstate.apply(store, tp, key, value, i)
    out = _fragments(restored.process(_requests(batch), T0, rstate))
    assert restored.skipped == 3 and len(out) == 2

    # after a rollback (drop) the positions come from the store again, not memory
    restored.drop([tp])
    assert restored.process(_requests(batch), T0, rstate) == []
    assert restored.skipped == 3 + 5


def test_requests_without_a_position_are_applied() -> None:
    """Requests of an intake from before positions were sent (5 fields)."""
    stage, state = _node()
    recs = _requests(_events(2))
    old = []
    for r in recs:
        packed = CODEC.decode(r.value)[1]
        items = [item[:5] for item in unpack(packed)]
        (o,) = IntakeStage(CODEC, LIBRARY).pack(CODEC, FEATURE_REQUESTS, "features_card",
                                                [(b"k", i) for i in items], as_json=True,
                                                entity="card")
        old.append(InRecord(r.topic, 0, r.offset, None, o.value, T0))
    assert len(_fragments(stage.process(old, T0, state))) == 2
    assert len(_fragments(stage.process(old, T0, state))) == 2  # no position: no check
    assert stage.skipped == 0


def test_one_events_requests_to_several_entities_on_one_partition_each_count() -> None:
    """The entities share a topic: one event's requests to its card, account, device
    ... nodes can land on the same node partition with the same position, and each
    is applied once — not the first entity only."""
    batch = _events(4)
    stage, state = _node()
    recs = _requests(batch, entity=None)
    assert len(recs) == 1  # one record per partition and batch, whatever the entities
    entities = {item[7] for item in unpack(CODEC.decode(recs[0].value)[1])}
    assert len(entities) > 2, entities
    items = len(unpack(CODEC.decode(recs[0].value)[1]))
    fragments = [item for o in stage.process(recs, T0, state)
                 for item in unpack(CODEC.decode(o.value)[1]) if item[0] != ALIVE]
    assert len(fragments) == items and stage.skipped == 0
    assert {f[1] for f in fragments} == entities
    assert stage.process(_requests(batch, entity=None), T0, state) == []  # sent again
    assert stage.skipped == items


def _beats(out: list[OutRecord]) -> int:
    return sum(item[0] == ALIVE for o in out for item in unpack(CODEC.decode(o.value)[1]))


def test_a_node_beats_while_it_has_work_and_falls_silent_without() -> None:
    stage, state = _node()
    quiet, beat = FeatureStage.QUIET_MS, FeatureStage.HEARTBEAT_MS
    assert stage.tick(T0, state) == []  # never sent a request: nothing to vouch for
    now = T0 + 10_000
    assert _beats(stage.process(_requests(_events(2)), now, state)) == 1  # with its work
    assert _beats(stage.tick(now + beat, state)) == 1  # ... and on, while it may be waited for
    assert _beats(stage.tick(now + quiet, state)) == 1
    assert stage.tick(now + quiet + beat, state) == []  # no work: no traffic at all
    assert stage.tick(now + 60_000, state) == []

    # a request held for its turn (another input partition has not caught up): work
    stage.watched = {INPUT: 2}
    stage.drop([(NODE_TOPIC, 0)])
    later = now + 120_000
    out = stage.process(_requests(_events(3)), later, state)
    assert _fragments(out) == {} and _beats(out) == 1, "held, not applied, and beating"
    for t in range(later + beat, later + 4 * quiet, beat):
        assert _beats(stage.tick(t, state)) == 1, f"silent at +{t - later} ms while holding"
