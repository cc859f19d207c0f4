"""The applier against the real broker: decisions sent again and a worker killed
mid-stream (SIGKILL) give no duplicate and no missing action or alert, counted by
id; a rate limit that trips keeps what it holds, tells the engineers, and an
audited resume — refused without the role — applies each held action once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import Worker

from tripwire.broker import KafkaCluster
from tripwire.connectors.events import EventProducer, read_to_end
from tripwire.controls.actions import requests_of
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.registry import SchemaStore
from tripwire.streams.topics import topic

CODEC = AvroCodec(SchemaStore.default())
DECISION = "tripwire.decisions.Decision"


def _decisions(n: int, t0: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        card, acct = f"card-{i % 50}", f"acct-{i % 40}"
        actions = [["BLOCK_CARD", "CUSTOMER_ALERT"], ["OPEN_CASE"], ["CUSTOMER_ALERT"],
                   ["HOLD_FUNDS", "OPEN_CASE"]][i % 4]
        out.append({
            "decision_id": f"dec-{i}", "event_id": f"ev-{i}",
            "event_type": "tripwire.events.CardPayment", "entity_key": card,
            "event_time": t0 + i * 1_000, "decided_at": t0 + i * 1_000, "outcome": "DENY",
            "actions": actions, "rule_hits": [{"control_id": f"typ{i % 3}",
                                               "control_version": "v1", "reason": "r",
                                               "score": 0.8}],
            "features": {}, "feature_errors": {}, "feature_provenance": {},
            "control_errors": {}, "control_versions": {}, "engine_version": "test",
            "latency_us": 0, "repeat": False, "subjects": {"card": card, "account": acct}})
    return out


def _publish(kafka: KafkaCluster, ns: str, decisions: list[dict[str, Any]]) -> None:
    prod = EventProducer(kafka.bootstrap, CODEC)
    for d in decisions:
        prod.send(topic("decisions", ns), DECISION, d, d["entity_key"])
    prod.flush()


def Applier(kafka: KafkaCluster, ns: str, home: Path, **env: str) -> Worker:
    """One `tripwire run stage applier` process."""
    return Worker(kafka, ns, home, "applier", **env)


def _records(kafka: KafkaCluster, ns: str, key: str) -> list[dict[str, Any]]:
    return [CODEC.decode(m.value())[1] for m in read_to_end(kafka.bootstrap, topic(key, ns))]


def _wait_for(kafka: KafkaCluster, ns: str, count: int, app: Worker,
              timeout: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = _records(kafka, ns, "actions")
        if len(got) >= count:
            return got
        assert app.proc is not None and app.proc.poll() is None, app.stderr()
        assert time.monotonic() < deadline, f"{len(got)}/{count} actions\n{app.stderr()}"
        time.sleep(0.5)


def test_decisions_sent_again_and_a_killed_worker_give_each_action_once(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    t0 = int(time.time() * 1000) - 3_600_000
    decisions = _decisions(400, t0)
    wanted = {r["action_id"]: r for d in decisions for r in requests_of(d)}
    # a commit every 3 s: a kill finds work done but not committed; the group moves
    # the killed worker's partitions after 6 s (the default: 45 s)
    app = Applier(kafka, topics, tmp_path / "a", TRIPWIRE_COMMIT_INTERVAL_MS="3000",
                  TRIPWIRE_SESSION_TIMEOUT_MS="6000")
    app.start()
    try:
        _publish(kafka, topics, decisions[:150])
        _wait_for(kafka, topics, 20, app)  # a first commit
        _publish(kafka, topics, decisions[150:250])
        time.sleep(1.5)
        app.kill()  # mid-stream: its open transaction is never committed
        _publish(kafka, topics, decisions[100:])  # 150 decisions sent a second time
        app.start()
        got = _wait_for(kafka, topics, len(wanted), app)
        time.sleep(2)  # anything more would be a duplicate
        got = _records(kafka, topics, "actions")
    finally:
        app.stop(30)
    # the killed worker had produced requests or actions it never committed: in the
    # logs, aborted
    aborted = sum(len(read_to_end(kafka.bootstrap, topic(k, topics), committed=False)) -
                  len(read_to_end(kafka.bootstrap, topic(k, topics)))
                  for k in ("action_requests", "actions"))
    assert aborted > 0, "the kill found uncommitted work"
    by_id = Counter(r["action_id"] for r in got)
    assert set(by_id) == set(wanted), "no action missing"
    assert max(by_id.values()) == 1, "no action twice"
    statuses = Counter(r["status"] for r in got)
    assert set(statuses) <= {"DONE", "SUPPRESSED"} and statuses["SUPPRESSED"] > 0
    # a card is blocked once, and each alert sent is one customer alert
    blocks = Counter(r["target"] for r in got if r["action"] == "BLOCK_CARD" and
                     r["status"] == "DONE")
    assert blocks and max(blocks.values()) == 1
    alerts = Counter(a["alert_id"] for a in _records(kafka, topics, "customer_alerts"))
    assert set(alerts) == {r["action_id"] for r in got if r["action"] == "CUSTOMER_ALERT"
                           and r["status"] == "DONE"} and max(alerts.values()) == 1


def test_a_tripped_limit_holds_alerts_the_engineers_and_resumes_once(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[limits]]\naction = "BLOCK_CARD"\nmax = 10\nper_minutes = 10\n')
    roles = tmp_path / "roles.toml"
    roles.write_text('[users]\nalice = ["engineer"]\nbob = ["analyst"]\n')
    env = {"TRIPWIRE_ACTION_POLICY": str(policy), "TRIPWIRE_ROLES": str(roles)}
    t0 = int(time.time() * 1000) - 3_600_000
    decisions = [d for d in _decisions(200, t0) if "BLOCK_CARD" in d["actions"]][:30]
    for i, d in enumerate(decisions):  # 30 cards blocked within five minutes
        d["entity_key"] = d["subjects"]["card"] = f"fresh-card-{i}"
        d["event_time"] = t0 + i * 10_000
    app = Applier(kafka, topics, tmp_path / "a", **env)
    app.start()
    try:
        _publish(kafka, topics, decisions)
        got = _wait_for(kafka, topics, 60, app)  # a block and an alert per decision
        # the first ten in the request log's one order are done (decisions of several
        # partitions interleave on their way there), the other twenty held
        blocks = [r for r in got if r["action"] == "BLOCK_CARD"]
        assert Counter(r["status"] for r in blocks) == Counter(DONE=10, RATE_LIMITED=20)
        assert {r["status"] for r in got if r["action"] != "BLOCK_CARD"} == {"DONE"}
        ops = _records(kafka, topics, "ops_alerts")
        assert [o["kind"] for o in ops] == ["RATE_LIMIT_TRIPPED"]

        def resume(user: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tripwire", "actions", "resume",
                 "BLOCK_CARD/system/10per10m", "--reason", "checked: a real attack"],
                env={**app.env, "TRIPWIRE_USER": user}, capture_output=True, text=True,
                timeout=60, stdin=subprocess.DEVNULL)

        refused = resume("bob")
        assert refused.returncode != 0 and "engineer" in refused.stderr
        done = resume("alice")
        assert done.returncode == 0, done.stderr
        got = _wait_for(kafka, topics, 80, app)
        time.sleep(2)
        got = _records(kafka, topics, "actions")
    finally:
        app.stop(30)
    blocks = [r for r in got if r["action"] == "BLOCK_CARD"]
    final = {r["action_id"]: r["status"] for r in blocks}
    assert Counter(final.values()) == Counter({"DONE": 30})
    released = [r for r in blocks if r["detail"] and "released by alice" in r["detail"]]
    assert len(released) == 20 and len({r["action_id"] for r in released}) == 20
    audit = _records(kafka, topics, "audit")
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("actions.resume.refused", "bob"), ("actions.resume", "alice")]
    assert [o["kind"] for o in _records(kafka, topics, "ops_alerts")] == [
        "RATE_LIMIT_TRIPPED", "RATE_LIMIT_RESUMED"]


def _cli(env: dict[str, str], user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tripwire", *args],
                          env={**env, "TRIPWIRE_USER": user}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_one_case_per_entity_and_typology_closed_with_a_label_and_an_intact_audit_trail(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    from tripwire.connectors.report import read_label_table, read_labels

    roles = tmp_path / "roles.toml"
    roles.write_text('[users]\ncarol = ["analyst"]\ndave = ["engineer"]\n')
    t0 = int(time.time() * 1000) - 3_600_000
    # an OPEN_CASE decision, about a signal the library names a typology for
    base = {**_decisions(8, t0)[1], "typology": "magstripe_contactless_abroad"}
    same = [{**base, "decision_id": f"case-dec-{i}", "event_id": f"case-ev-{i}",
             "event_time": t0 + i * 1000} for i in range(3)]
    app = Applier(kafka, topics, tmp_path / "a", TRIPWIRE_ROLES=str(roles))
    app.start()
    try:
        _publish(kafka, topics, same)
        got = _wait_for(kafka, topics, 3, app)
        assert [r["status"] for r in sorted(got, key=lambda r: r["requested_at"])] == \
            ["DONE", "SUPPRESSED", "SUPPRESSED"]
        cases = _records(kafka, topics, "cases")
        assert [(c["status"], c["event_id"]) for c in cases] == [("OPEN", "case-ev-0")]
        case_id = cases[0]["case_id"]

        listed = _cli(app.env, "carol", "cases", "list")
        assert listed.returncode == 0 and case_id[:12] in listed.stdout, listed.stderr
        refused = _cli(app.env, "dave", "cases", "close", case_id, "--label",
                       "confirmed_fraud", "--reason", "confirmed by the customer")
        assert refused.returncode != 0 and "analyst" in refused.stderr
        closed = _cli(app.env, "carol", "cases", "close", case_id[:12], "--label",
                      "confirmed_fraud", "--reason", "confirmed by the customer")
        assert closed.returncode == 0, closed.stderr
        # closed: the entity may have a case for this typology again
        _publish(kafka, topics, [{**base, "decision_id": "case-dec-9", "event_id": "case-ev-9",
                                  "event_time": t0 + 60_000}])
        got = _wait_for(kafka, topics, 4, app)
        last = max(got, key=lambda r: r["requested_at"])
        assert last["status"] == "DONE" and last["event_id"] == "case-ev-9"
        labels = tmp_path / "labels.csv"
        assert _cli(app.env, "carol", "cases", "labels", "--out", str(labels)).returncode == 0
        assert read_labels(labels) == {"case-ev-0": True}
        table = read_label_table(labels)  # the typology as the detectors' TYPOLOGIES name it
        assert table.typology == {"case-ev-0": "magstripe_abroad"}
        # overturned: the case it opened is undone, once, and only with the role
        refused = _cli(app.env, "dave", "override", "case-ev-9", "--to", "ALLOW",
                       "--reason", "known customer")
        assert refused.returncode != 0 and "analyst" in refused.stderr
        for _ in range(2):  # sent twice, applied once
            done = _cli(app.env, "carol", "override", "case-ev-9", "--to", "ALLOW",
                        "--reason", "known customer")
            assert done.returncode == 0, done.stderr
        got = _wait_for(kafka, topics, 5, app)
        time.sleep(2)
        undone = [r for r in _records(kafka, topics, "actions") if r["status"] == "UNDONE"]
        assert [(r["event_id"], r["action"]) for r in undone] == [("case-ev-9", "OPEN_CASE")]
    finally:
        app.stop(30)

    verified = _cli(app.env, "carol", "audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout
    audit = read_to_end(kafka.bootstrap, topic("audit", topics))
    assert [CODEC.decode(m.value())[1]["action"] for m in audit] == [
        "cases.close.refused", "cases.close", "override.refused", "override", "override"]
    # a copy of the trail with one reason edited: verify names the record
    copy = f"{topics}audit-copy"
    prod = EventProducer(kafka.bootstrap, CODEC)
    for i, m in enumerate(audit):
        rec = CODEC.decode(m.value())[1]
        if i == 1:
            rec["reason"] = "routine"
        prod.send(copy, "tripwire.ops.AuditRecord", rec, rec["subject"])
    prod.flush()
    tampered = _cli(app.env, "carol", "audit", "verify", "--topic", copy)
    assert tampered.returncode == 1 and "record 1" in tampered.stdout and \
        "edited" in tampered.stdout, tampered.stdout


def test_a_control_is_released_only_when_a_second_person_approves_it(
        kafka: KafkaCluster, topics: str, tmp_path: Path) -> None:
    """Maker-checker: with roles configured, `controls publish` proposes; the proposer
    cannot approve their own proposal; an approver releases it; all audited and
    chained."""
    from tripwire.controls.engine import LIBRARY

    roles = tmp_path / "roles.toml"
    roles.write_text('[users]\nalice = ["engineer"]\nbob = ["approver"]\n')
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
           "TRIPWIRE_TOPIC_NAMESPACE": topics, "TRIPWIRE_ROLES": str(roles)}
    star = tmp_path / "card_testing.star"
    star.write_text((LIBRARY / "card_testing.star").read_text())
    proposed = _cli(env, "alice", "controls", "publish", str(star), "--reason", "tune")
    assert proposed.returncode == 0 and "proposed" in proposed.stdout, proposed.stderr
    assert read_to_end(kafka.bootstrap, topic("controls", topics)) == []
    own = _cli(env, "alice", "controls", "approve", "card_testing", "--reason", "mine")
    assert own.returncode != 0 and "second person" in own.stderr
    approved = _cli(env, "bob", "controls", "approve", "card_testing", "--reason", "reviewed")
    assert approved.returncode == 0, approved.stderr
    releases = [CODEC.decode(m.value())[1] for m in read_to_end(kafka.bootstrap,
                                                                 topic("controls", topics))]
    assert [(r["control_id"], r["author"]) for r in releases] == [("card_testing", "alice")]
    again = _cli(env, "bob", "controls", "approve", "card_testing", "--reason", "twice")
    assert again.returncode != 0 and "already approved" in again.stderr
    audit = [CODEC.decode(m.value())[1] for m in read_to_end(kafka.bootstrap,
                                                              topic("audit", topics))]
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("controls.propose", "alice"), ("controls.approve.refused", "alice"),
        ("controls.approve", "bob"), ("control.publish.release", "bob")]
    verified = _cli(env, "bob", "audit", "verify")
    assert verified.returncode == 0 and "4 audit records: 3 chained" in verified.stdout, \
        verified.stdout
