"""Internal messages of the live pipeline go out at once, before the stage that
sent them commits, on the real broker. An intake that dies before its commit
is replaced by one that reads its inputs again and sends every feature request
again: the feature node applies each event once (its positions), the decide
stage decides each event once, and the features of later events equal a
brute-force oracle — nothing is counted twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import committed_inputs, publish
from oracle import brute_force

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import read_topic
from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.controls.engine import ControlSet
from tripwire.features.engine import FeatureLibrary, make_view
from tripwire.features.kinds import EVENT_KINDS
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.nodes import FeatureStage
from tripwire.streams.runner import Pipeline, stage_loop
from tripwire.streams.topics import topic

pytestmark = pytest.mark.kafka

CODEC = AvroCodec(SchemaStore.default())
LIB = FeatureLibrary()

# the group moves a dead intake's partitions after this (the client's default: 45 s)
SESSION_MS = 6_000
# An intake that sends its requests but never reaches its first commit.
_INTAKE_NEVER_COMMITS = textwrap.dedent(f"""
    import sys, threading
    from pathlib import Path
    from tripwire.controls.engine import ControlSet
    from tripwire.features.engine import FeatureLibrary
    from tripwire.schemas.codec import AvroCodec
    from tripwire.schemas.registry import SchemaStore
    from tripwire.streams.runner import stage_loop
    boot, ns, state = sys.argv[1:4]
    loop = stage_loop("intake", boot, ns, codec=AvroCodec(SchemaStore.default()),
                      controls=ControlSet.from_dir(), library=FeatureLibrary(),
                      state_dir=Path(state), batch_size=10, commit_interval_ms=600_000,
                      session_timeout_ms={SESSION_MS})
    loop.run(threading.Event())
""")


def test_an_intake_dying_before_its_commit_sends_again_and_nothing_counts_twice(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    events = list(normal_card_payments(11, now - 20 * 60_000, 30, cards=1, gap_ms=20_000))
    first, later = events[:20], events[20:]
    publish(kafka, topics, CODEC, [("CardPayment", e) for e in first])

    common: dict[str, Any] = dict(codec=CODEC, controls=ControlSet.from_dir(), library=LIB,
                                  batch_size=10)
    nodes = stage_loop("features", kafka.bootstrap, topics, state_dir=tmp_path / "n",
                       **common)
    decide = stage_loop("decide", kafka.bootstrap, topics, state_dir=tmp_path / "d",
                        node_timeout_ms=120_000, **common)
    pipeline = Pipeline.start({"features": nodes, "decide": decide})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        worker = subprocess.Popen([sys.executable, "-c", _INTAKE_NEVER_COMMITS,
                                   kafka.bootstrap, topics, str(tmp_path / "i1")],
                                  env=env, stderr=subprocess.PIPE)
        try:
            got = read_topic(kafka.bootstrap, [topic("decisions", topics)], len(first),
                             timeout=120)
            assert len(got) == len(first), worker.poll()
            # decided through both internal hops before the intake committed anything
            assert committed_inputs(kafka, f"{topics}tripwire.intake", topics) == 0
        finally:
            worker.kill()
            worker.wait(30)

        # a new intake takes over from the last commit (none): every request again
        publish(kafka, topics, CODEC, [("CardPayment", e) for e in later])
        intake = Pipeline.start({"intake": stage_loop(
            "intake", kafka.bootstrap, topics, state_dir=tmp_path / "i2",
            session_timeout_ms=SESSION_MS, **common)})
        try:  # (once the dead member's session has expired and its partitions move)
            read_topic(kafka.bootstrap, [topic("decisions", topics)], len(events),
                       timeout=120)
            # and nothing more comes: one decision per event
            msgs = read_topic(kafka.bootstrap, [topic("decisions", topics)], len(events) + 1,
                              timeout=5)
        finally:
            intake.stop()
    finally:
        pipeline.stop()

    decisions = [CODEC.decode(m.value())[1] for m in msgs]
    assert sorted(d["event_id"] for d in decisions) == sorted(e["event_id"] for e in events)
    # every card feature equals the oracle over the events once each, in order
    kind = EVENT_KINDS[CARD_SCHEMA]
    views = [(ev["event_time"], make_view("CardPayment", ev, kind.jit(ev))) for ev in events]
    by_event = {d["event_id"]: d["features"] for d in decisions}
    want = brute_force(LIB.by_entity["card"], views)
    assert max(w["card_auths_1h"] for w in want) > len(first)  # later events see history
    for ev, w in zip(events, want, strict=True):
        assert {k: by_event[ev["event_id"]][k] for k in w} == w, ev["event_id"]
    node = nodes.processor
    assert isinstance(node, FeatureStage)
    assert node.skipped >= len(first)  # the card node, at least, saw the first 20 again
