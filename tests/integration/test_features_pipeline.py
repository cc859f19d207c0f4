"""The live pipeline (intake → features by entity → gather and decide) on the real
broker: every feature of every event equals a brute-force oracle, with events
out of order, two feature workers on multi-partition topics and a restart that
wipes the workers' local state; and a slow feature node leaves a partial result."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import input_order, node_order, publish
from oracle import brute_force

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import read_topic
from tripwire.connectors.kafka import admin
from tripwire.connectors.simulator import mixed_traffic
from tripwire.controls.engine import ControlSet
from tripwire.features.engine import FeatureLibrary, make_view
from tripwire.features.kinds import EVENT_KINDS
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.state.manager import changelog_topic
from tripwire.streams.gather import DecisionStage
from tripwire.streams.intake import IntakeStage
from tripwire.streams.nodes import FeatureStage
from tripwire.streams.runner import Pipeline, combined_loop, stage_loop, stage_topics
from tripwire.streams.topics import topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CODEC = AvroCodec(SchemaStore.default())
LIB = FeatureLibrary()
CONTROLS = ControlSet.from_dir()
def _run_until(kafka: KafkaCluster, ns: str, loops: dict, decided: int,
               timeout: float = 120) -> list[dict[str, Any]]:
    pipeline = Pipeline.start(loops)
    try:
        msgs = read_topic(kafka.bootstrap, [topic("decisions", ns)], decided, timeout=timeout)
    finally:
        pipeline.stop()
    return [CODEC.decode(m.value())[1] for m in msgs]


def _loops(kafka: KafkaCluster, ns: str, state: Path, feature_workers: int,
           combined: bool = False, **kw: Any) -> dict:
    """An intake, a decide stage and ``feature_workers`` feature nodes; or, with
    ``combined``, that many workers each running every stage in one loop."""
    common = dict(codec=CODEC, controls=CONTROLS, library=LIB, batch_size=100,
                  eager_hops=kw.get("eager_hops", True))
    if combined:
        return {f"all-{i}": combined_loop(kafka.bootstrap, ns, state_dir=state / f"w{i + 1}",
                                          node_timeout_ms=120_000, **common)
                for i in range(feature_workers)}
    loops = {"intake": stage_loop("intake", kafka.bootstrap, ns, state_dir=state / "w0",
                                  **common),
             "decide": stage_loop("decide", kafka.bootstrap, ns, state_dir=state / "w0",
                                  node_timeout_ms=kw.get("node_timeout_ms", 120_000), **common)}
    for i in range(feature_workers):
        loops[f"features-{i}"] = stage_loop("features", kafka.bootstrap, ns,
                                            state_dir=state / f"w{i + 1}", **common)
    return loops


@pytest.mark.parametrize("layouts", [(False, False), (True, True), (False, True)],
                         ids=["per-stage", "combined", "per-stage-then-combined"])
def test_features_equal_the_oracle_across_workers_and_a_restart(
        kafka: KafkaCluster, topics: str, tmp_path: Path, layouts: tuple[bool, bool]) -> None:
    """Combined: two workers each running every stage in one loop (one group over
    all the topics), both losing their disks — intake, node and decide state all
    come back from the changelogs. Per-stage then combined: the restart also moves
    to the other layout, which starts where the first stopped, with its state."""
    now = int(time.time() * 1000)
    traffic = mixed_traffic(7, now - 30 * 60_000, 360)
    first, second = traffic[:180], traffic[180:]

    publish(kafka, topics, CODEC, first)
    decisions = _run_until(kafka, topics, _loops(kafka, topics, tmp_path, 2, layouts[0]),
                           len(first))
    assert len(decisions) == len(first)
    for d in (tmp_path / "w1", tmp_path / "w2"):
        shutil.rmtree(d, ignore_errors=True)  # lose the feature workers' disks
    publish(kafka, topics, CODEC, second)
    decisions = _run_until(kafka, topics, _loops(kafka, topics, tmp_path, 2, layouts[1]),
                           len(traffic))
    assert len(decisions) == len(traffic)
    by_event = {d["event_id"]: d for d in decisions}
    assert len(by_event) == len(traffic) and not any(d["repeat"] for d in decisions)
    odd = [d["feature_errors"] for d in decisions
           if any("late" not in e for e in d["feature_errors"].values())]
    assert not odd, odd[:3]
    # whatever the layout, a topic's state is its own stage's, under its stage's name
    changelogs = {t for t in admin(kafka.bootstrap).list_topics(timeout=30).topics
                  if t.startswith(topics) and t.endswith(".changelog")}
    assert changelogs == {changelog_topic(topics, stage.name, store, t)
                          for stage in (IntakeStage, FeatureStage, DecisionStage)
                          for t in stage_topics(stage.name, topics)
                          for store in stage.stores}

    # the oracle: per entity key, the order the nodes apply a backlog in, from the
    # input topics' record timestamps (tripwire.streams.align)
    events = {ev["event_id"]: (kind, ev) for kind, ev in traffic}
    placed = input_order(kafka, topics)
    order = node_order(kafka, topics)
    assert {e for e, _ in order} == set(LIB.entities())
    compared = 0
    late_seen = 0
    for (entity, _key), requests in order.items():
        assert [k for k, _ in requests] == sorted(placed[eid] for _, eid in requests)
        ids = [eid for _, eid in requests]
        views = []
        for eid in ids:
            kind, ev = events[eid]
            views.append((ev["event_time"], make_view(kind, ev,
                                                      EVENT_KINDS[f"tripwire.events.{kind}"]
                                                      .jit(ev))))
        expected = brute_force(LIB.by_entity[entity], views)
        for eid, want in zip(ids, expected, strict=True):
            got = by_event[eid]["features"]
            for name, value in want.items():
                assert got[name] == value, (entity, eid, name)
                compared += 1
            late_seen += entity in by_event[eid]["feature_errors"]
    assert compared > 3000 and late_seen > 0  # out-of-order and late events were exercised


class SlowNode(FeatureStage):
    """A feature node that takes 3 s per request."""

    def compute(self, entity: str, fields: dict[str, Any], event_time: int,
                state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        time.sleep(3.0)
        return super().compute(entity, fields, event_time, state)


def test_a_slow_node_leaves_a_partial_result_and_the_decision_goes_ahead(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    common = dict(codec=CODEC, controls=CONTROLS, library=LIB, batch_size=100)
    pipeline = Pipeline.start({  # the ip node served apart (TRIPWIRE_NODES_APART=ip)
        "intake": stage_loop("intake", kafka.bootstrap, topics, state_dir=tmp_path,
                             apart={"ip"}, **common),
        "decide": stage_loop("decide", kafka.bootstrap, topics, state_dir=tmp_path,
                             node_timeout_ms=500, **common),
        "features": stage_loop("features", kafka.bootstrap, topics, state_dir=tmp_path,
                               **common),
        "features-ip": stage_loop("features", kafka.bootstrap, topics, state_dir=tmp_path,
                                  entities=["ip"], processor=SlowNode(CODEC, LIB), **common),
    })
    try:
        pipeline.wait_assigned()
        now = int(time.time() * 1000)
        traffic = [(k, ev) for k, ev in mixed_traffic(3, now - 600_000, 60)
                   if k == "CardPayment" and ev["ip"] is not None][:3]
        sent = time.monotonic()
        publish(kafka, topics, CODEC, traffic)
        msgs = read_topic(kafka.bootstrap, [topic("decisions", topics)], len(traffic),
                          timeout=30)
        waited = time.monotonic() - sent
    finally:
        pipeline.stop()
    decisions = [CODEC.decode(m.value())[1] for m in msgs]
    assert len(decisions) == len(traffic)
    assert waited < 2.5  # decided on the timeout, not after the slow node's 3 s
    for d in decisions:
        assert d["feature_errors"]["ip"] == ("no answer: the node was silent for more than "
                                            "500 ms")
        assert "ip_distinct_cards_1h" not in d["features"]  # missing, not invented
        assert d["features"]["card_auths_1h"] >= 1  # the other nodes answered
        assert d["outcome"] in {"ALLOW", "DENY", "STEP_UP", "MANUAL_REVIEW"}


@pytest.mark.parametrize("eager_hops", [True, False], ids=["eager-hops", "committed-hops"])
def test_repeats_through_the_live_pipeline_get_the_first_decision(
        kafka: KafkaCluster, topics: str, tmp_path: Path, eager_hops: bool) -> None:
    now = int(time.time() * 1000)
    traffic = mixed_traffic(5, now - 30 * 60_000, 30)
    publish(kafka, topics, CODEC, traffic)
    resent = traffic[:6]
    kind, card = next((k, e) for k, e in traffic[6:] if k == "CardPayment")
    changed = [(kind, {**card, "amount_minor": card["amount_minor"] + 1})]
    publish(kafka, topics, CODEC, resent + changed)
    decisions = _run_until(kafka, topics, _loops(kafka, topics, tmp_path, 1,
                                                 eager_hops=eager_hops), 36)
    firsts = {d["event_id"]: d for d in decisions if not d["repeat"]}
    repeats = [d for d in decisions if d["repeat"]]
    assert len(firsts) == 30 and len(repeats) == 6
    for r in repeats:  # the same decision, features included: nothing counted twice
        assert {**r, "repeat": False} == firsts[r["event_id"]]
    (q,) = read_topic(kafka.bootstrap, [topic("quarantine", topics)], 1, timeout=20)
    rec = CODEC.decode(q.value())[1]
    assert rec["reasons"][0]["code"] == "DUPLICATE_CONFLICT" and rec["stage"] == "dedup"
