"""Backtests replay recorded events through the decision path: hits, precision
and recall per control, alert volume per day, and the difference a candidate
control set makes against the active one."""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tripwire.connectors.labelled import labelled_traffic
from tripwire.connectors.report import read_labels
from tripwire.connectors.simulator import (
    envelope,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.controls.engine import LIBRARY, ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.schemas.validate import ValidationPolicy, Validator
from tripwire.state.manager import OneLogState, StateManager
from tripwire.streams.backtest import (
    PREPARE_STORES,
    Labels,
    backtest,
    comparable,
    prepared,
    records_from_jsonl,
)
from tripwire.streams.decision_path import DecisionPath
from tripwire.streams.nodes import FEATURES_STORE, feature_states

T0 = 1_790_000_000_000  # 2026-09-21: two days of events
DAY = 86_400_000
NOW = T0 + 30 * DAY  # the plain path's clock: after every event
CODEC = AvroCodec.from_url(None)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[str]]:
    d = tmp_path_factory.mktemp("history")
    normal = list(normal_card_payments(1, T0, 300, cards=150)) + \
        list(normal_card_payments(2, T0 + DAY, 300, cards=150))
    attack = list(magstripe_contactless_attack(3, T0 + DAY + 3_600_000, 40, cards=40))
    events = sorted(normal + attack, key=lambda e: e["event_time"])
    lines = [orjson.dumps(envelope("CardPayment", e)) for e in events]
    lines.insert(5, b'{"event_type": "CardPayment", "event_id": "half a record"}')
    (d / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    fraud = {e["event_id"] for e in attack}
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["event_id", "label"])
        w.writerows([e["event_id"], int(e["event_id"] in fraud)] for e in events)
    return d / "events.jsonl", d / "labels.csv", fraud


def test_precision_recall_and_volumes_per_control(history: tuple[Path, Path, set[str]]) -> None:
    events, labels, fraud = history
    records, bad = records_from_jsonl(events.open("rb"), CODEC)
    assert len(records) == 640 and [n for n, _ in bad] == [6]  # reported, not skipped quietly
    run = backtest(ControlSet.from_dir(), records, codec=CODEC, labels=read_labels(labels))
    assert len(run.decisions) == 640 and not run.quarantined
    outliers = run.controls["card_outliers"]
    denied = {d["event_id"] for d in run.decisions if d["outcome"] == "DENY"}
    flagged = {d["event_id"] for d in run.decisions
               if "card_outliers" in {h["control_id"] for h in d["rule_hits"]}}
    assert outliers.hits == len(flagged) and outliers.runs == 640
    assert outliers.true_hits == len(flagged & fraud)
    assert outliers.precision == len(flagged & fraud) / len(flagged)
    assert outliers.recall == len(flagged & fraud) / len(fraud)
    assert fraud <= denied and outliers.recall == 1.0
    assert sorted(outliers.hits_per_day) == ["2026-09-22"]  # the attack day only
    assert outliers.alerts_per_day == outliers.hits
    assert run.decision_quality()[1] == 1.0


def test_the_cli_reports_and_diffs_a_candidate(history: tuple[Path, Path, set[str]],
                                               tmp_path: Path) -> None:
    events, labels, fraud = history
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    for p in LIBRARY.glob("*.star"):
        src = p.read_text()
        if p.stem == "card_outliers":  # the candidate forgets the magstripe rule
            src = src.replace('features["entry_mode"] == "MAGSTRIPE_CONTACTLESS"', "False")
        (candidate / p.name).write_text(src)
    report, out = tmp_path / "report.html", tmp_path / "decisions.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "tripwire", "backtest", "--controls", str(candidate),
         "--events", str(events), "--labels", str(labels), "--report", str(report),
         "--out", str(out)], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "line 6 is not an event" in done.stderr
    assert f"against the active controls: {len(fraud)} outcomes change; DENY → ALLOW: " \
           f"{len(fraud)}" in done.stdout
    assert "card_outliers" in done.stdout and "precision" in done.stdout
    page = report.read_text()
    assert "Plotly.newPlot" in page and "Precision and recall" in page
    assert "40 outcomes change" in page
    decided = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(decided) == 640 and all(d["outcome"] == "ALLOW" for d in decided
                                       if d["event_id"] in fraud)


def test_unreadable_labels_are_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("event_id,label\ne1,maybe\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: label 'maybe'"):
        read_labels(bad)


def _with_repeats_and_refusals(records: list[InRecord]) -> list[InRecord]:
    """A day's records with repeats (the same content again, in the same batch and
    batches later), a reused id with other content, and a record that is no event."""
    out = list(records)
    for i in range(40, len(records), 199):
        out.insert(i + 3, records[i])  # a repeat a few records later
        out.insert(min(len(out), i + 260), records[i])  # ... and batches later
    card = next(r for r in records if CODEC.decode(r.value)[0].name.endswith("CardPayment"))
    schema, event = CODEC.decode(card.value)
    changed = {**event, "amount_minor": event["amount_minor"] + 1}  # the same id, other content
    out.insert(300, dataclasses.replace(card, value=CODEC.encode(schema.name, changed)))
    out.insert(11, dataclasses.replace(records[3], value=b"\xc3\x01not avro"))
    return out


@pytest.fixture(scope="module")
def day() -> tuple[list[InRecord], Labels]:
    traffic = labelled_traffic(5, T0 // DAY * DAY, 1, 600)
    records = [InRecord("file", 0, i, b"k", CODEC.encode(f"tripwire.events.{kind}", e),
                        e["event_time"]) for i, (kind, e) in enumerate(traffic.events)]
    return _with_repeats_and_refusals(records), traffic.known()


def test_a_replay_over_two_processes_decides_as_one(day: tuple[list[InRecord], Labels]) \
        -> None:
    records, labels = day
    runs = {w: backtest(ControlSet.from_dir(), records, codec=CODEC, labels=labels,
                        batch_size=64, workers=w, isolate_mb=256) for w in (1, 2)}
    one, two = runs[1], runs[2]
    assert len(one.decisions) + sum(one.quarantined.values()) == len(records)
    assert sum(d["repeat"] for d in one.decisions) >= 10
    assert one.quarantined["DUPLICATE_CONFLICT"] >= 1 and one.quarantined["UNKNOWN_SCHEMA"] == 1
    assert [comparable(d) for d in two.decisions] == [comparable(d) for d in one.decisions]
    assert two.quarantined == one.quarantined
    assert {k: (s.runs, s.hits, s.true_hits, s.errors) for k, s in two.controls.items()} == \
        {k: (s.runs, s.hits, s.true_hits, s.errors) for k, s in one.controls.items()}
    assert two.typologies() == one.typologies() and any(
        t.caught for t in one.typologies().values())

    # the replay remembers only the decisions it knows are asked again: each repeat
    # is its first decision again, and every decision is the plain path's
    first: dict[str, dict[str, Any]] = {}
    for d in one.decisions:
        if d["repeat"]:
            assert comparable({**d, "repeat": False}) == comparable(first[d["event_id"]])
        else:
            first.setdefault(d["event_id"], d)
    path = DecisionPath(CODEC, ControlSet.from_dir(), validator=Validator(
        ValidationPolicy(max_event_age_ms=None)))
    state = StateManager(path.name, list(path.stores))  # written back every batch
    state.open_partition(("file", 0))
    plain = [CODEC.decode(o.value)[1] for i in range(0, len(records), 64)
             for o in path.process(records[i:i + 64], NOW, state) if o.topic_key == "decisions"]
    assert [comparable(d) for d in plain] == [comparable(d) for d in one.decisions]


def test_a_replay_state_is_written_back_only_when_its_cache_is_full(
        day: tuple[list[InRecord], Labels]) -> None:
    """A replay keeps its windows decoded and writes them back only when the cache
    holds more keys than it keeps (forgetting those used longest ago): the same
    features as a state written back every batch, also through a cache of 50 keys."""
    records, _ = day
    path = DecisionPath(CODEC, ControlSet.from_dir(), validator=Validator(
        ValidationPolicy(max_event_age_ms=None)))

    def features(state: StateManager) -> list[Any]:
        out = []
        for i in range(0, len(records), 64):
            out += [values for _, _, values, _ in path.prepare(records[i:i + 64], NOW,
                                                                state).items]
            state.batch_done()
        return out

    every_batch = StateManager("replay", list(PREPARE_STORES))
    every_batch.open_partition(("file", 0))
    expected = features(every_batch)
    assert sum(v is not None for v in expected) > 2000
    for keeps in (100_000, 50):
        replay = OneLogState("replay", list(PREPARE_STORES))
        cache = feature_states(replay, keeps)
        got = features(replay)
        assert got == expected, keeps
        store = replay.store(FEATURES_STORE, OneLogState.LOG)
        if keeps == 50:  # written back and forgotten as it filled: the rest is stored
            assert len(cache) <= 50 + 64 * 6 and len(list(store.items(b""))) > 1000
        else:  # nothing written back: all of it held decoded
            assert len(cache) > 1000 and not list(store.items(b""))


def test_the_second_process_is_a_process_and_its_failures_are_raised(
        day: tuple[list[InRecord], Labels], monkeypatch: pytest.MonkeyPatch) -> None:
    records, _ = day
    path = DecisionPath.default()
    before = set(multiprocessing.active_children())  # another test's may still be ending
    batches = prepared(path, records[:300], 100, workers=2)
    child = [p for p in multiprocessing.active_children()
             if p.name == "tripwire-backtest-features" and p not in before]
    assert len(child) == 1 and child[0].pid != os.getpid()
    assert [len(b.items) for b in batches] == [100, 100, 100]
    child[0].join(5)
    assert child[0].exitcode == 0

    original = DecisionPath.prepare
    seen = {"batches": 0}

    def second_fails(self: DecisionPath, *args: Any) -> Any:
        seen["batches"] += 1
        if seen["batches"] == 2:
            raise ValueError("a feature that cannot be computed")
        return original(self, *args)

    monkeypatch.setattr(DecisionPath, "prepare", second_fails)  # the child forks with it
    with pytest.raises(RuntimeError, match=r"(?s)feature process failed.*ValueError: a "
                       r"feature that cannot be computed"):
        list(prepared(path, records[:300], 100, workers=2))

    def second_dies(self: DecisionPath, *args: Any) -> Any:
        seen["batches"] += 1
        if seen["batches"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args)

    seen["batches"] = 0
    monkeypatch.setattr(DecisionPath, "prepare", second_dies)
    with pytest.raises(RuntimeError, match=r"stopped \(exit code -9\) after 1 of 3 batches"):
        list(prepared(path, records[:300], 100, workers=2))
