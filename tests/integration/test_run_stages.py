"""`tripwire run stage ...`: the production entry point, as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_to_end, read_topic
from tripwire.connectors.simulator import CARD_SCHEMA, normal_card_payments
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.topics import topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _env(kafka: KafkaCluster, ns: str, state: Path) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "TRIPWIRE_TOPIC_NAMESPACE": ns, "TRIPWIRE_STATE_DIR": str(state)}


def _run_all(kafka: KafkaCluster, ns: str, state: Path, codec: AvroCodec,
             send: list[dict], decisions: int, *flags: str) -> tuple[list[dict], str]:
    """``tripwire run stage all [flags]`` until ``decisions`` more decisions came, then
    SIGTERM: (those decisions, its stderr)."""
    start = read_topic(kafka.bootstrap, [topic("decisions", ns)], 10**9, timeout=2)
    proc = subprocess.Popen([sys.executable, "-m", "tripwire", "run", "stage", "all",
                             "--node-timeout-ms", "2000", *flags], env=_env(kafka, ns, state),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        prod = EventProducer(kafka.bootstrap, codec)
        for e in send:
            prod.send(topic("card_payments", ns), CARD_SCHEMA, e, e["card_token"])
        prod.flush()
        msgs = read_topic(kafka.bootstrap, [topic("decisions", ns)], len(start) + decisions,
                          timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return [codec.decode(m.value())[1] for m in msgs[len(start):]], err


def test_all_stages_decide_stop_cleanly_and_move_between_layouts(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    """A loop per stage first, then the default one loop on the same namespace and
    state folder: it starts where the per-stage loops stopped, with their state
    (nothing decided twice, a resend answered as a repeat, windows carried over)."""
    codec = AvroCodec.from_url(None)
    events = list(normal_card_payments(4, int(time.time() * 1000) - 5_000, 20, cards=3))
    first, err = _run_all(kafka, topics, tmp_path, codec, events[:10], 10, "--loop-per-stage")
    said = " ".join(err.split())  # the console wraps long lines
    assert "running intake, features, decide, the applier and the reconcile stage on" in said
    assert {d["event_id"] for d in first} == {e["event_id"] for e in events[:10]}
    resent = events[0]
    second, err = _run_all(kafka, topics, tmp_path, codec, [*events[10:], resent], 11)
    said = " ".join(err.split())
    assert "running intake, features, decide in one loop, the applier and the reconcile " \
        "stage on" in said
    assert sorted(d["event_id"] for d in second if not d["repeat"]) == \
        sorted(e["event_id"] for e in events[10:])  # none of the first ten again
    again = [d for d in second if d["repeat"]]
    assert [d["event_id"] for d in again] == [resent["event_id"]]
    assert again[0]["decision_id"] == next(d["decision_id"] for d in first
                                           if d["event_id"] == resent["event_id"])
    by_card: dict[str, int] = {}
    for e in events:
        by_card[e["card_token"]] = by_card.get(e["card_token"], 0) + 1
    carried = [d for d in second if not d["repeat"] and by_card[d["entity_key"]] > 1]
    assert carried, "the simulator gave no card two payments"
    for d in carried:  # a card's count over the hour includes its payments of the first run
        earlier = [e for e in events if e["card_token"] == d["entity_key"]
                   and e["event_time"] <= d["event_time"]]
        assert d["features"]["card_auths_1h"] == len(earlier), d["event_id"]
    # an analyst asks why
    why = subprocess.run([sys.executable, "-m", "tripwire", "explain", events[0]["event_id"]],
                         env=_env(kafka, topics, tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert why.returncode == 0, why.stderr
    assert why.stdout.startswith("ALLOW tripwire.events.CardPayment " + events[0]["event_id"])
    assert "card_auths_1h" in why.stdout and "card/count/1h@1" in why.stdout
    assert "detector card_outliers@" in why.stdout  # every control that ran, by stage
    # a worker answers a control's repeated inputs from memory: explain says which
    logs = [codec.decode(m.value())[1]
            for m in read_to_end(kafka.bootstrap, topic("control_executions", topics))]
    log = next(r for r in logs if any(e["remembered"] for e in r["executions"]))
    said = subprocess.run([sys.executable, "-m", "tripwire", "explain", log["event_id"]],
                          env=_env(kafka, topics, tmp_path), capture_output=True, text=True,
                          timeout=60).stdout
    for e in log["executions"]:
        line = next(x for x in said.splitlines() if f" {e['control_id']}@" in x)
        assert line.endswith("remembered (not called)") == e["remembered"], line
    missing = subprocess.run([sys.executable, "-m", "tripwire", "explain", "no-such-event"],
                             env=_env(kafka, topics, tmp_path), capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "no decision for event no-such-event" in missing.stderr
    assert list((tmp_path / "stores").rglob("CURRENT"))  # RocksDB stores on disk


def test_an_unknown_stage_is_a_clear_error(kafka: KafkaCluster, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "tripwire", "run", "stage", "scoring"],
                         env=_env(kafka, "x.", tmp_path), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "unknown stage(s) ['scoring']" in res.stderr
    res = subprocess.run([sys.executable, "-m", "tripwire", "run", "stage", "decide",
                          "--one-loop"], env=_env(kafka, "x.", tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "--one-loop runs every stage" in res.stderr


def test_the_decide_stage_reloads_a_watched_controls_folder(kafka: KafkaCluster, topics: str,
                                                            tmp_path: Path) -> None:
    import json
    import shutil

    from tripwire.controls.engine import LIBRARY

    folder = tmp_path / "controls"
    shutil.copytree(LIBRARY, folder)
    proc = subprocess.Popen([sys.executable, "-m", "tripwire", "run", "stage", "all",
                             "--node-timeout-ms", "2000", "--controls-dir", str(folder)],
                            env=_env(kafka, topics, tmp_path / "state"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    codec = AvroCodec.from_url(None)
    prod = EventProducer(kafka.bootstrap, codec)
    a, b = ({**e, "amount_minor": 4242} for e in normal_card_payments(
        12, int(time.time() * 1000) - 5_000, 2))
    try:
        prod.send(topic("card_payments", topics), CARD_SCHEMA, a, a["card_token"])
        prod.flush()
        read_topic(kafka.bootstrap, [topic("decisions", topics)], 1, timeout=90)
        (folder / "odd_amount.star").write_text(
            'APPLIES_TO = ["CardPayment"]\n'
            'def detect(event, features):\n'
            '    if event["amount_minor"] == 4242:\n'
            '        return {"signal": "odd_amount", "score": 0.4, "reason": "4242"}\n'
            '    return None\n')
        (audit,) = read_topic(kafka.bootstrap, [topic("audit", topics)], 1, timeout=60)
        rec = codec.decode(audit.value())[1]
        assert rec["action"] == "control.activate" and rec["subject"] == "odd_amount"
        assert json.loads(rec["details_json"])["version_from"] is None
        prod.send(topic("card_payments", topics), CARD_SCHEMA, b, b["card_token"])
        prod.flush()
        msgs = read_topic(kafka.bootstrap, [topic("decisions", topics)], 2, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    got = {d["event_id"]: d for d in (codec.decode(m.value())[1] for m in msgs)}
    assert got[a["event_id"]]["outcome"] == "ALLOW"
    assert got[b["event_id"]]["outcome"] == "MANUAL_REVIEW"  # the new detector, no restart
