"""Hot reload against the real broker: a worker follows the controls topic; a
broken release is refused and audited while the old network keeps deciding; a
good one (published with the CLI, examples checked first) is audited with its
diff and decides the next events — with no restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors.control_sources import TopicSource
from tripwire.connectors.events import EventProducer, read_to_end, read_topic
from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.controls.plane import RELEASE_SCHEMA, release
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.loop import BatchLoop
from tripwire.streams.runner import Pipeline
from tripwire.streams.topics import topic

pytestmark = pytest.mark.kafka

ODD = '''APPLIES_TO = ["CardPayment"]
def detect(event, features):
    if event["amount_minor"] == 4242:
        return {"signal": "odd_amount", "score": 0.4, "reason": "amount 4242"}
    return None
EXAMPLES = [{"event": {"amount_minor": 4242}, "features": {}, "signal": "odd_amount"}]
'''


def _cli(kafka: KafkaCluster, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": ns}
    return subprocess.run([sys.executable, "-m", "tripwire", "controls", *args], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _audits(kafka: KafkaCluster, ns: str, codec: Any, want: int) -> list[dict[str, Any]]:
    msgs = read_topic(kafka.bootstrap, [topic("audit", ns)], want, timeout=30)
    return [codec.decode(m.value())[1] for m in msgs]


def test_refused_and_accepted_releases_without_a_restart(kafka: KafkaCluster, topics: str,
                                                         tmp_path: Path) -> None:
    base = DecisionPath.default()
    codec = base.codec
    path = DecisionPath(codec, base.controls, sources=[
        TopicSource(kafka.bootstrap, topic("controls", topics), codec)])
    loop = BatchLoop(kafka.bootstrap, f"{topics}decide", [topic("card_payments", topics)],
                     path, namespace=topics, batch_size=50)
    pipeline = Pipeline.start({"path": loop})
    prod = EventProducer(kafka.bootstrap, codec)
    now = int(time.time() * 1000)
    a, b = ({**e, "amount_minor": 4242} for e in normal_card_payments(8, now - 5_000, 2))
    try:
        pipeline.wait_assigned()
        prod.send(topic("card_payments", topics), CARD_SCHEMA, a, a["card_token"])
        # a broken release reaches the topic without the CLI's checks
        prod.send(topic("controls", topics), RELEASE_SCHEMA, release(
            "odd_amount", ODD.replace("return None", "return (", 1), "mallory", "typo", now),
            "odd_amount")
        prod.flush()
        (refused,) = _audits(kafka, topics, codec, 1)
        assert refused["action"] == "control.refuse" and refused["actor"] == "mallory"
        assert "odd_amount" in json.loads(refused["details_json"])["error"]

        bad = tmp_path / "odd_amount.star"
        bad.write_text(ODD.replace('"signal": "odd_amount"}]', '"signal": None}]'))
        refused_here = _cli(kafka, topics, "publish", str(bad), "--reason", "try")
        assert refused_here.returncode == 2 and "refused: odd_amount: example 0" in \
            refused_here.stderr
        good = tmp_path / "odd_amount.star"
        good.write_text(ODD)
        done = _cli(kafka, topics, "publish", str(good), "--reason", "catch 4242",
                    "--author", "alice")
        assert done.returncode == 0, done.stderr
        # refuse (worker), refuse and publish (CLI), activate (worker)
        audits = _audits(kafka, topics, codec, 4)
        (activated,) = [x for x in audits if x["action"] == "control.activate"]
        assert activated["actor"] == "alice" and activated["reason"] == "catch 4242"
        details = json.loads(activated["details_json"])
        assert details["version_from"] is None and '+        return {"signal": "odd_amount"' \
            in details["diff"]
        assert [x["action"] for x in audits].count("control.publish.release") == 1
        assert [x["action"] for x in audits].count("control.publish.refuse") == 1

        prod.send(topic("card_payments", topics), CARD_SCHEMA, b, b["card_token"])
        prod.flush()
        msgs = read_topic(kafka.bootstrap, [topic("decisions", topics)], 2, timeout=30)
    finally:
        pipeline.stop()
    assert not pipeline.errors
    got = {d["event_id"]: d for d in (codec.decode(m.value())[1] for m in msgs)}
    before, after = got[a["event_id"]], got[b["event_id"]]
    assert before["outcome"] == "ALLOW" and "odd_amount" not in before["control_versions"]
    assert after["outcome"] == "MANUAL_REVIEW"
    assert after["control_versions"]["odd_amount"] == details["version_to"]
    assert "odd_amount" in {h["control_id"] for h in after["rule_hits"]}
    # the release stays on the compacted topic: a worker started later loads it
    latest = [codec.decode(m.value())[1] for m in read_to_end(kafka.bootstrap,
                                                                topic("controls", topics))]
    assert [r["source"] == ODD for r in latest if r["control_id"] == "odd_amount"][-1]


SEEN = '''TIER = 2
def detect(event, features):
    return {"score": 0.5, "reason": "deep look at %d" % event["amount_minor"]}
'''


def test_tier_two_writes_after_decisions_and_the_emergency_stop_halts_it(
        kafka: KafkaCluster, topics: str) -> None:
    from tripwire.controls.engine import Control, ControlSet
    from tripwire.streams.runner import attach_deferred

    base = DecisionPath.default()
    codec = base.codec
    path = DecisionPath(codec, ControlSet([*base.controls.controls,
                                           Control.compile("deep_look", SEEN)]),
                        sources=[TopicSource(kafka.bootstrap, topic("controls", topics), codec)])
    runner = attach_deferred(path.decider, kafka.bootstrap, topics, codec, memory_mb=256)
    loop = BatchLoop(kafka.bootstrap, f"{topics}decide", [topic("card_payments", topics)],
                     path, namespace=topics, batch_size=50)
    pipeline = Pipeline.start({"path": loop})
    prod = EventProducer(kafka.bootstrap, codec)
    now = int(time.time() * 1000)
    events = list(normal_card_payments(9, now - 5_000, 10))
    try:
        pipeline.wait_assigned()
        for e in events[:5]:
            prod.send(topic("card_payments", topics), CARD_SCHEMA, e, e["card_token"])
        prod.flush()
        read_topic(kafka.bootstrap, [topic("decisions", topics)], 5, timeout=30)
        deep = [codec.decode(m.value())[1] for m in read_topic(
            kafka.bootstrap, [topic("control_executions", topics)], 10, timeout=30)]
        assert sorted(e["event_id"] for e in deep
                      if [x["control_id"] for x in e["executions"]] == ["deep_look"]) == \
            sorted(e["event_id"] for e in events[:5])  # 5 decision logs, 5 tier-2 logs
        stopped = _cli(kafka, topics, "stop", "tier:2", "--reason", "SOC: too slow today")
        assert stopped.returncode == 0, stopped.stderr
        audits = _audits(kafka, topics, codec, 2)
        (stop,) = [a for a in audits if a["action"] == "control.stop"]
        assert json.loads(stop["details_json"])["stopped"] == ["deep_look"]
        for e in events[5:]:
            prod.send(topic("card_payments", topics), CARD_SCHEMA, e, e["card_token"])
        prod.flush()
        read_topic(kafka.bootstrap, [topic("decisions", topics)], 10, timeout=30)
    finally:
        pipeline.stop()
        runner.close()
    after = [codec.decode(m.value())[1] for m in read_to_end(
        kafka.bootstrap, topic("control_executions", topics))]
    ran = {e["event_id"] for e in after
           if "deep_look" in {x["control_id"] for x in e["executions"]}}
    assert ran == {e["event_id"] for e in events[:5]}  # none after the stop


def test_a_poisoned_controls_topic_is_refused_audited_and_survived(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    """Garbage bytes, a record of another schema and a STOP of ``tier:x`` on the
    controls topic (issue 19): a worker starting on it refuses and audits each and
    decides; started again (the topic is read from the beginning), the same. The
    CLI refuses a bad target and a broken control before writing, and audits that."""
    from confluent_kafka import Producer

    from tripwire.controls.plane import AUDIT_SCHEMA

    base = DecisionPath.default()
    codec = base.codec
    controls_topic = topic("controls", topics)
    raw = Producer({"bootstrap.servers": kafka.bootstrap})
    raw.produce(controls_topic, b"\x00\x01", b"junk")
    raw.flush(10)
    prod = EventProducer(kafka.bootstrap, codec)
    now = int(time.time() * 1000)
    prod.send(controls_topic, AUDIT_SCHEMA, {
        "audit_id": "x", "at": now, "actor": "mallory", "action": "control.activate",
        "subject": "odd", "reason": "not a release", "details_json": "{}"}, "odd")
    prod.send(controls_topic, RELEASE_SCHEMA,
              release("tier:x", None, "mallory", "typo", now, "STOP"), "tier:x")
    prod.flush()
    events = list(normal_card_payments(9, now - 5_000, 2))

    for n, event in enumerate(events):  # a first start, then a restart
        path = DecisionPath(codec, base.controls, sources=[
            TopicSource(kafka.bootstrap, controls_topic, codec)])
        loop = BatchLoop(kafka.bootstrap, f"{topics}decide", [topic("card_payments", topics)],
                         path, namespace=topics, batch_size=50)
        pipeline = Pipeline.start({"path": loop})
        try:
            pipeline.wait_assigned()
            prod.send(topic("card_payments", topics), CARD_SCHEMA, event, event["card_token"])
            prod.flush()
            decided = read_topic(kafka.bootstrap, [topic("decisions", topics)], n + 1,
                                 timeout=30)
            audits = _audits(kafka, topics, codec, 3 * (n + 1))  # committed before the stop
        finally:
            pipeline.stop()
        assert not pipeline.errors
        assert {codec.decode(m.value())[1]["event_id"] for m in decided} == \
            {e["event_id"] for e in events[:n + 1]}
    assert [a["action"] for a in audits] == ["control.refuse"] * 6  # 3 records, 2 starts
    errors = sorted(json.loads(a["details_json"])["error"] for a in audits)  # any partition
    assert [e.split(":")[0] for e in errors] == ["'tier", "'tier"] + ["unreadable record on "
                                                                      "the controls topic"] * 4
    assert sum("DecodeError: TRUNCATED" in e for e in errors) == 2, errors
    assert sum("tripwire.ops.AuditRecord record, not a" in e for e in errors) == 2, errors
    assert sum("'tier:x' is not a control id" in e for e in errors) == 2, errors

    stop = _cli(kafka, topics, "stop", "tier:x", "--reason", "typo")
    assert stop.returncode == 2 and "refused" in stop.stderr and "tier:x" in stop.stderr
    broken = tmp_path / "odd_amount.star"
    broken.write_text(ODD.replace("return None", "return (", 1))
    publish = _cli(kafka, topics, "publish", str(broken), "--reason", "try", "--author", "bob")
    assert publish.returncode == 2 and "refused" in publish.stderr
    refusals = [a for a in _audits(kafka, topics, codec, 8)
                if a["action"] == "control.publish.refuse"]
    # keyed by subject: on two partitions of the audit topic, in no order between them
    assert sorted(a["subject"] for a in refusals) == ["odd_amount", "tier:x"]
    odd = next(a for a in refusals if a["subject"] == "odd_amount")
    details = json.loads(odd["details_json"])
    assert details["author"] == "bob" and details["login"] == odd["actor"]
    assert len(read_to_end(kafka.bootstrap, controls_topic)) == 3  # nothing more written


SPINS = '''def spin():
    n = 0
    for i in range(100000):
        for j in range(100000):
            n += 1
    return n
N = spin()
def detect(event, features):
    return None
'''


def test_a_release_that_hangs_or_crashes_is_refused_and_the_worker_decides(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    """Releases whose module-level code never ends, whose example crashes Starlark
    (a value nested 5,000 deep), or whose constant takes gigabytes to fold reach
    the controls topic without the CLI (issue 19): the worker refuses each
    (compiled apart, bounded), audits why and decides; the CLI refuses the same
    files before writing anything."""
    from tripwire.controls.isolate import CHECK_TIMEOUT_S

    deep = ('def detect(event, features):\n    x = []\n    for i in range(5000):\n'
            '        x = [x]\n    return {"score": 0.5, "signal": "s", "reason": '
            'json.encode(x)}\nEXAMPLES = [{"event": {}, "features": {}, "signal": "s"}]\n')
    base = DecisionPath.default()
    codec = base.codec
    controls_topic = topic("controls", topics)
    prod = EventProducer(kafka.bootstrap, codec)
    now = int(time.time() * 1000)
    heavy = 'def detect(event, features):\n    s = "x" * 1000000000\n    return None\n'
    for cid, source in (("spins", SPINS), ("deep", deep), ("heavy", heavy)):
        prod.send(controls_topic, RELEASE_SCHEMA, release(cid, source, "mallory", "x", now),
                  cid)
    prod.flush()
    event = next(iter(normal_card_payments(11, now - 5_000, 1)))
    path = DecisionPath(codec, base.controls, sources=[
        TopicSource(kafka.bootstrap, controls_topic, codec)])
    loop = BatchLoop(kafka.bootstrap, f"{topics}decide", [topic("card_payments", topics)],
                     path, namespace=topics, batch_size=50)
    pipeline = Pipeline.start({"path": loop})
    started = time.monotonic()
    try:
        pipeline.wait_assigned()
        prod.send(topic("card_payments", topics), CARD_SCHEMA, event, event["card_token"])
        prod.flush()
        decided = read_topic(kafka.bootstrap, [topic("decisions", topics)], 1,
                             timeout=2 * CHECK_TIMEOUT_S + 30)
        audits = {a["subject"]: a for a in _audits(kafka, topics, codec, 3)}  # committed
    finally:
        pipeline.stop()
    assert not pipeline.errors
    assert codec.decode(decided[0].value())[1]["event_id"] == event["event_id"]
    assert time.monotonic() - started < 2 * CHECK_TIMEOUT_S + 30
    assert {s: a["action"] for s, a in audits.items()} == {
        "spins": "control.refuse", "deep": "control.refuse", "heavy": "control.refuse"}
    errors = {s: json.loads(a["details_json"])["error"] for s, a in audits.items()}
    assert "did not compile and run its examples within" in errors["spins"], errors
    assert "SIGSEGV" in errors["deep"], errors
    assert "within" in errors["heavy"] or "SIGABRT" in errors["heavy"], errors  # either bound

    spins = tmp_path / "spins.star"
    spins.write_text(SPINS)
    refused = _cli(kafka, topics, "publish", str(spins), "--reason", "try")
    assert refused.returncode == 2 and "did not compile" in refused.stderr, refused.stderr


CRASHES_ON_4242 = '''def detect(event, features):
    if event["amount_minor"] != 4242:
        return None
    x = []
    for i in range(5000):
        x = [x]
    return {"signal": "deep", "score": 0.5, "reason": json.encode(x)}
ON_ERROR = "DENY"
EXAMPLES = [{"event": {"amount_minor": 1}, "features": {}, "signal": None}]
'''
SLOW_ON_4646 = '''def detect(event, features):
    if event["amount_minor"] != 4646:
        return None
    s = "x" * (event["amount_minor"] * 30000)
    return {"signal": "slow", "score": 0.5, "reason": "one long step"}
ON_ERROR = "STEP_UP"
EXAMPLES = [{"event": {"amount_minor": 1}, "features": {}, "signal": None}]
'''
ABORTS_ON_4343 = '''TIER = 0
def detect(event, features):
    if event["amount_minor"] != 4343:
        return None
    x = [0] * 1000000000
    return None
ON_ERROR = "MANUAL_REVIEW"
EXAMPLES = [{"event": {"amount_minor": 1}, "features": {}, "signal": None}]
'''


def test_a_released_control_that_crashes_on_real_events_costs_only_itself(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    """Two controls pass their examples and are released with the CLI, then on real
    events one crashes Starlark (SIGSEGV) and a tier-0 one asks for 8 GB (issue
    19). A `tripwire run stage all` worker (controls in a supervised child by
    default) decides those events with the control's error and ON_ERROR, decides
    the others, keeps running, stops cleanly and starts again healthy."""
    import signal as signals

    codec = DecisionPath.default().codec
    for name, source in (("crashes", CRASHES_ON_4242), ("aborts", ABORTS_ON_4343),
                         ("slow", SLOW_ON_4646)):
        (tmp_path / f"{name}.star").write_text(source)
        done = _cli(kafka, topics, "publish", str(tmp_path / f"{name}.star"), "--reason", "x")
        assert done.returncode == 0, done.stderr
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": topics, "TRIPWIRE_STATE_DIR": str(tmp_path / "state")}
    prod = EventProducer(kafka.bootstrap, codec)
    now = int(time.time() * 1000)
    events = list(normal_card_payments(12, now - 5_000, 6))
    events[1]["amount_minor"], events[3]["amount_minor"] = 4242, 4343
    events[4]["amount_minor"] = 4646  # "x" * 139 million: one step of ~0.4 s

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "tripwire", "run", "stage", "all"],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / "worker.log").open("ab"))

    proc = worker()
    try:
        for e in events[:5]:
            prod.send(topic("card_payments", topics), CARD_SCHEMA, e, e["card_token"])
        prod.flush()
        got = {d["event_id"]: d for d in (codec.decode(m.value())[1] for m in read_topic(
            kafka.bootstrap, [topic("decisions", topics)], 5, timeout=120))}
        alive = proc.poll() is None
    finally:
        proc.send_signal(signals.SIGTERM)
        code = proc.wait(60)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert alive and code == 0, log[-3000:]
    assert set(got) == {e["event_id"] for e in events[:5]}
    crashed, aborted = got[events[1]["event_id"]], got[events[3]["event_id"]]
    assert crashed["outcome"] == "DENY" and "SIGSEGV" in crashed["control_errors"]["crashes"]
    assert aborted["outcome"] == "MANUAL_REVIEW" and \
        "SIGABRT" in aborted["control_errors"]["aborts"]
    slow = got[events[4]["event_id"]]
    assert slow["outcome"] == "STEP_UP" and "inside one step" in slow["control_errors"]["slow"]
    assert all(not got[e["event_id"]]["control_errors"] for e in (events[0], events[2]))

    proc = worker()  # a restart: healthy, decides the next event
    try:
        prod.send(topic("card_payments", topics), CARD_SCHEMA, events[5],
                  events[5]["card_token"])
        prod.flush()
        later = [codec.decode(m.value())[1]["event_id"] for m in read_topic(
            kafka.bootstrap, [topic("decisions", topics)], 6, timeout=120)]
    finally:
        proc.send_signal(signals.SIGTERM)
        code = proc.wait(60)
    assert events[5]["event_id"] in later and code == 0
