"""`tripwire tail` and `tripwire export` against the real broker: decisions written
in both wire formats, decoded, filtered, followed, and exported to Parquet that
DuckDB reads back with the same counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
from typer.testing import CliRunner

from tripwire.broker import KafkaCluster
from tripwire.cli import app
from tripwire.connectors.kafka import producer
from tripwire.connectors.labelled import labelled_traffic
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.validate import ValidationPolicy, Validator
from tripwire.state.manager import StateManager
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.topics import topic

REGISTRY = "mock://tripwire-analyst"
DAY = 86_400_000


def _outputs(codec: AvroCodec, seed: int) -> list[Any]:
    """Decisions, control executions and quarantine records of a simulated hour (and
    two events that are refused), encoded by ``codec``."""
    base = DecisionPath.default()
    path = DecisionPath(codec, base.controls,
                        validator=Validator(ValidationPolicy(max_event_age_ms=None)))
    start = int(time.time() * 1000) // DAY * DAY - DAY
    run = labelled_traffic(seed, start, 1.0, 300, 1)
    events = run.events[:400]
    kind, ev = events[0]
    bad = [(kind, {**ev, "event_id": "not-a-uuid"})] if seed == 1 else []
    records = [InRecord("in", 0, i, b"k", codec.encode(f"tripwire.events.{kind}", e),
                        e["event_time"]) for i, (kind, e) in enumerate(events + bad)]
    state = StateManager(path.name, list(path.stores))
    return path.process(records, int(time.time() * 1000), state)


def _publish(kafka: KafkaCluster, ns: str, outputs: list[Any]) -> Counter[str]:
    p = producer(kafka.bootstrap)
    sent: Counter[str] = Counter()
    for o in outputs:
        if o.topic_key in ("decisions", "control_executions", "quarantine"):
            p.produce(topic(o.topic_key, ns), o.value, o.key)
            sent[o.topic_key] += 1
    p.flush(30)
    return sent


def _cli(env: dict[str, str], *args: str) -> str:
    done = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return done.output


def test_tail_and_export_decode_filter_follow_and_count(kafka: KafkaCluster, topics: str,
                                                        tmp_path: Path) -> None:
    plain = AvroCodec.from_url(None)  # single-object encoding
    framed = AvroCodec.from_url(REGISTRY)  # Confluent wire format, schema ids
    first, second = _outputs(plain, 1), _outputs(framed, 2)
    sent = _publish(kafka, topics, first) + _publish(kafka, topics, second)
    assert sent["quarantine"] >= 1 and sent["decisions"] > 700
    decoded = [plain.decode(o.value)[1] for o in first if o.topic_key == "decisions"] + \
        [framed.decode(o.value)[1] for o in second if o.topic_key == "decisions"]
    assert {o.value[0] for o in second if o.topic_key == "decisions"} == {0}  # framed
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TRIPWIRE_TOPIC_NAMESPACE": topics,
           "TRIPWIRE_SCHEMA_REGISTRY_URL": REGISTRY}

    # JSON Lines, filtered, from both wire formats
    denied = [d for d in decoded if d["outcome"] == "DENY"]
    assert denied
    out = _cli(env, "tail", "decisions", "--where", "outcome=DENY", "--last", "0", "--json")
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert sorted(x["event_id"] for x in lines) == sorted(d["event_id"] for d in denied)
    assert all(x["event_time"].endswith("Z") for x in lines)  # times as ISO, not numbers
    # a list matches on any item; != and nested fields too
    blocked = [d for d in decoded if "BLOCK_CARD" in d["actions"] and d["outcome"] != "DENY"]
    out = _cli(env, "tail", "decisions", "--where", "actions=BLOCK_CARD", "--where",
               "outcome!=DENY", "--last", "0", "--json")
    assert len(out.splitlines()) == len(blocked)
    logins = [d for d in decoded if d["event_type"] == "tripwire.events.LoginEvent" and
              d["features"].get("ip_failed_logins_10m", 0) >= 1]
    assert logins
    out = _cli(env, "tail", "decisions", "--where", "event_type=tripwire.events.LoginEvent",
               "--where", "features.ip_failed_logins_10m!=0", "--last", "0", "--json")
    assert len(out.splitlines()) == len(logins)
    # a table, the newest N
    out = " ".join(_cli(env, "tail", "decisions", "--last", "3").split())
    assert "3 record(s)" in out and "outcome" in out
    out = " ".join(_cli(env, "tail", "quarantine").split())
    assert "INVALID_ID" in out

    # following: the newest two, then what arrives
    cmd = [sys.executable, "-m", "tripwire", "tail", "decisions", "--last", "2", "--follow",
           "--json", "--where", "outcome=ALLOW"]
    child_env = {**os.environ, **env, "TRIPWIRE_SCHEMA_REGISTRY_URL": ""}
    # started as a script's background job is: with SIGINT ignored (Python then leaves
    # it ignored, and a follower relying on KeyboardInterrupt never stopped)
    follower = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert follower.stdout is not None
        shown = [orjson.loads(follower.stdout.readline()) for _ in range(2)]
        more = _outputs(plain, 3)
        _publish(kafka, topics, more)
        wanted = {plain.decode(o.value)[1]["event_id"] for o in more
                  if o.topic_key == "decisions" and plain.decode(o.value)[1]["outcome"] ==
                  "ALLOW"}
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while not wanted <= seen and time.monotonic() < deadline:
            seen.add(orjson.loads(follower.stdout.readline())["event_id"])
        assert wanted <= seen and not {s["event_id"] for s in shown} & wanted
    finally:
        interrupted = time.monotonic()
        follower.send_signal(signal.SIGINT)
        follower.wait(20)
    # Ctrl-C ends the follow between two polls, and the consumer closes
    assert follower.returncode == 0 and time.monotonic() - interrupted < 5

    # Parquet that DuckDB reads back, with the same counts
    export = tmp_path / "export"
    out = _cli(env, "export", "--out", str(export), "--topics",
               "decisions,control_executions,quarantine")
    db = duckdb.connect()
    counted = {key: db.execute(f"SELECT count(*) FROM '{export}/{key}/**/*.parquet'").fetchone()[0]
               for key in ("decisions", "control_executions", "quarantine")}
    more_sent = Counter(o.topic_key for o in more
                        if o.topic_key in ("decisions", "control_executions", "quarantine"))
    assert counted == {k: sent[k] + more_sent[k] for k in counted}, counted
    outcomes = dict(db.execute(f"SELECT outcome, count(*) FROM '{export}/decisions/**/*.parquet' "
                           "GROUP BY outcome").fetchall())
    every = decoded + [plain.decode(o.value)[1] for o in more if o.topic_key == "decisions"]
    assert outcomes == dict(Counter(d["outcome"] for d in every))
    # the README's query: alerts per hour per control
    per_hour = db.execute(
        f"SELECT date_trunc('hour', event_time) AS hour, hit.control_id, count(*) AS hits "
        f"FROM (SELECT event_time, unnest(rule_hits) AS hit "
        f"FROM '{export}/decisions/**/*.parquet') GROUP BY ALL ORDER BY ALL").fetchall()
    assert sum(n for _, _, n in per_hour) == sum(len(d["rule_hits"]) for d in every)
    # maps are JSON text; times are timestamps
    card_auths = db.execute(
        f"SELECT count(*) FROM '{export}/decisions/**/*.parquet' "
        "WHERE json_extract(features, '$.card_auths_1h') IS NOT NULL").fetchone()[0]
    assert card_auths == sum("card_auths_1h" in d["features"] for d in every)
