"""Backtests replay recorded events through the decision path: hits, precision
and recall per control, alert volume per day, and the difference a candidate
control set makes against the active one."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tripwire.connectors.report import read_labels
from tripwire.connectors.simulator import (
    envelope,
    magstripe_contactless_attack,
    normal_card_payments,
)
from tripwire.controls.engine import LIBRARY, ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.streams.backtest import backtest, records_from_jsonl

T0 = 1_790_000_000_000  # 2026-09-21: two days of events
DAY = 86_400_000
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
