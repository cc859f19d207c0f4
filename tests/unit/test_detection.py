"""The typology library measured on the simulator's labelled traffic: per typology,
precision and recall of at least 0.8 over several seeds, and every innocent
look-alike left at ALLOW or STEP_UP (docs/detection.md has the table)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tripwire.connectors.labelled import LOOKALIKES, TYPOLOGIES, Labelled, labelled_traffic
from tripwire.connectors.report import read_label_table, read_labels
from tripwire.controls.engine import LIBRARY, ControlSet
from tripwire.schemas.codec import AvroCodec
from tripwire.schemas.records import InRecord
from tripwire.streams.backtest import Backtest, Labels, backtest

CODEC = AvroCodec.from_url(None)
DAY = 86_400_000
T0 = 1_790_000_000_000 // DAY * DAY  # a midnight: the day's hours follow it
SEEDS = (1, 2, 3)


def _records(run: Labelled) -> list[InRecord]:
    return [InRecord("file", 0, i, b"k", CODEC.encode(f"tripwire.events.{kind}", e),
                     e["event_time"]) for i, (kind, e) in enumerate(run.events)]


def _replay(seed: int, controls: ControlSet | None = None, days: float = 2.0,
            customers: int = 2000) -> Backtest:
    run = labelled_traffic(seed, T0, days, customers)
    return backtest(controls or ControlSet.from_dir(), _records(run), codec=CODEC,
                    labels=run.known())


@pytest.fixture(scope="module")
def runs() -> dict[int, Backtest]:
    return {seed: _replay(seed) for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_every_typology_is_caught_with_precision_and_recall_of_at_least_0_8(
        runs: dict[int, Backtest], seed: int) -> None:
    run = runs[seed]
    assert not run.quarantined  # the simulator's events are all valid
    stats = run.typologies()
    assert set(TYPOLOGIES) <= set(stats), set(TYPOLOGIES) - set(stats)
    weak = {name: (s.precision, s.recall) for name, s in stats.items()
            if s.precision is None or s.precision < 0.8 or s.recall is None or s.recall < 0.8}
    assert not weak, weak
    for name in TYPOLOGIES:
        s = stats[name]
        # most attacks are stopped within their first events, and stopped for real
        assert s.attacks_caught >= 0.75 * s.attacks, (name, s)
        assert s.stopped > 0 and s.flagged > 0, (name, s)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_look_alikes_stay_allowed_or_stepped_up(runs: dict[int, Backtest],
                                                     seed: int) -> None:
    outcomes = runs[seed].lookalikes()
    assert set(outcomes) == set(LOOKALIKES)
    harsh = {kind: dict(c) for kind, c in outcomes.items()
             if c["DENY"] or c["MANUAL_REVIEW"]}
    assert not harsh, harsh


def test_without_the_login_detectors_the_login_typologies_are_missed() -> None:
    """The measurement is of the controls: take the login detectors away and the
    typologies they name are no longer caught (nor flagged)."""
    controls = ControlSet.from_dir()
    kept = [c for c in controls.controls
            if c.control_id not in ("credential_stuffing", "brute_force")]
    run = _replay(4, ControlSet(kept), days=1.0, customers=600)
    stats = run.typologies()
    for name in ("credential_stuffing", "brute_force"):
        assert stats[name].flagged == 0 and stats[name].events > 0
        assert stats[name].recall is not None and stats[name].recall < 0.5, stats[name]
    assert stats["card_testing"].recall == 1.0


def _decision(eid: str, outcome: str) -> dict[str, Any]:
    return {"event_id": eid, "outcome": outcome, "repeat": False}


def test_an_attack_caught_within_its_first_events_counts_from_its_first() -> None:
    outcomes = {"a": ["ALLOW"] * 3 + ["DENY"] * 4,  # caught at its 4th: all 7 count
                "b": ["ALLOW"] * 5 + ["DENY"] * 2,  # at its 6th, past 4: 2 count
                "c": ["ALLOW"] * 2}  # never
    decisions, known = [], Labels()
    for attack, seq in outcomes.items():
        for i, o in enumerate(seq):
            eid = f"{attack}{i}"
            decisions.append(_decision(eid, o))
            known.fraud[eid], known.typology[eid], known.attack[eid] = True, "x", attack
    decisions.append(_decision("g", "DENY"))  # genuine and flagged
    known.fraud["g"] = False
    run = Backtest(decisions=decisions, labels=dict(known.fraud), known=known,
                   flags={"a3": {"x"}, "a4": {"x"}, "g": {"x"}, "b5": {"y"}})
    x = run.typologies(within=4)["x"]
    assert (x.attacks, x.attacks_caught, x.events) == (3, 1, 16)
    assert (x.caught, x.stopped) == (7 + 2, 6)
    assert (x.flagged, x.true_flags) == (3, 2)
    assert run.typologies(within=6)["x"].caught == 7 + 7
    y = run.typologies()["y"]
    assert (y.events, y.flagged, y.precision, y.recall) == (0, 1, 1.0, None)


def test_simulate_then_backtest_from_the_command_line(tmp_path: Path) -> None:
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.csv"
    done = subprocess.run(
        [sys.executable, "-m", "tripwire", "simulate", "--days", "0.5", "--customers", "300",
         "--seed", "7", "--start", "2026-11-02", "--events", str(events), "--labels",
         str(labels)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    table = read_label_table(labels)
    assert sum(table.fraud.values()) == len(table.typology) == len(table.attack) > 0
    assert set(table.lookalike.values()) <= set(LOOKALIKES) and table.lookalike
    assert f"{len(events.read_bytes().splitlines())} events from 2026-11-02" in \
        " ".join(done.stdout.split())
    again = tmp_path / "again.jsonl"
    subprocess.run([sys.executable, "-m", "tripwire", "simulate", "--days", "0.5",
                    "--customers", "300", "--seed", "7", "--start", "2026-11-02",
                    "--events", str(again), "--labels", str(tmp_path / "again.csv")],
                   check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.read_bytes() == events.read_bytes()  # a seed is a measurement

    def run(*extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tripwire", "backtest", "--events", str(events),
             "--report", str(tmp_path / "report.html"), *extra], capture_output=True,
            text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())

    labelled = run("--labels", str(labels))
    assert "per typology" in labelled and "look-alikes (genuine)" in labelled
    for name in ("credential_stuffing", "magstripe_abroad", "office_ip", "payroll"):
        assert name in labelled
    page = (tmp_path / "report.html").read_text()
    assert "Per typology" in page and "Look-alikes" in page
    plain = run()
    assert "per typology" not in plain and "look-alikes" not in plain
    assert "%" not in plain  # no precision or recall without labels


def test_labels_with_typologies_and_the_cases_labels_read_the_same(tmp_path: Path) -> None:
    simulated = tmp_path / "labels.csv"
    simulated.write_text("event_id,label,typology,attack_id,lookalike\n"
                         "e1,1,card_testing,card_testing-0001,\ne2,0,,,office_ip\ne3,0,,,\n")
    table = read_label_table(simulated)
    assert table.fraud == {"e1": True, "e2": False, "e3": False}
    assert table.typology == {"e1": "card_testing"} and table.lookalike == {"e2": "office_ip"}
    assert table.attack == {"e1": "card_testing-0001"}
    cases = tmp_path / "cases.csv"  # as `tripwire cases labels` writes them
    cases.write_text("event_id,label,case_id,typology\nev-1,1,case-1,card_testing\n")
    assert read_labels(cases) == {"ev-1": True}
    assert read_label_table(cases).typology == {"ev-1": "card_testing"}
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"event_id": "e1", "fraud": true, "typology": "brute_force"}\n')
    assert read_label_table(jsonl).typology == {"e1": "brute_force"}


def test_the_library_names_a_typology_for_each_one_the_simulator_attacks_with() -> None:
    named = {t for c in ControlSet.from_dir(LIBRARY).controls for _, t in c.typologies}
    assert named == set(TYPOLOGIES)
