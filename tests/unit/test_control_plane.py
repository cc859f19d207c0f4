"""Hot reload as a pure function: releases are compiled and their examples run
before they become active; a broken one is refused and audited, and the running
version stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tripwire.connectors.control_sources import DirectorySource
from tripwire.controls.engine import LIBRARY, ControlSet
from tripwire.controls.plane import ControlPlane, release

GOOD = (LIBRARY / "card_testing.star").read_text().replace('small >= 5', 'small >= 3')
NEW = '''APPLIES_TO = ["CardPayment"]
def detect(event, features):
    if event["amount_minor"] == 4242:
        return {"signal": "odd_amount", "score": 0.4, "reason": "4242"}
    return None
EXAMPLES = [{"event": {"amount_minor": 4242}, "features": {}, "signal": "odd_amount"}]
'''


@pytest.fixture
def plane() -> ControlPlane:
    return ControlPlane(ControlSet.from_dir())


def _details(audit: dict) -> dict:
    return json.loads(audit["details_json"])


def test_a_good_release_becomes_active_with_an_audited_diff(plane: ControlPlane) -> None:
    before = plane.controls.versions()["card_testing"]
    audit = plane.apply(release("card_testing", GOOD, "alice", "catch slower testing", 7),
                        now_ms=9, worker="w1")
    assert audit["action"] == "control.activate" and audit["actor"] == "alice"
    assert audit["reason"] == "catch slower testing" and audit["at"] == 9
    d = _details(audit)
    assert d["version_from"] == before != d["version_to"] == plane.controls.versions()[
        "card_testing"]
    assert "-    if small >= 5:" in d["diff"] and "+    if small >= 3:" in d["diff"]
    assert d["mode"] == "ACTIVE" and d["worker"] == "w1"
    added = plane.apply(release("odd_amount", NEW, "bob", "new detector", 8), 9, "w1")
    assert added["action"] == "control.activate" and "odd_amount" in plane.controls.by_id()
    v = plane.controls.evaluate("CardPayment", {"amount_minor": 4242}, {})
    assert v.outcome == "MANUAL_REVIEW"  # respond's policy for a signal it does not know yet


@pytest.mark.parametrize(("source", "why"), [
    ("def detect(event, features):\n    return (\n", "card_testing: "),
    (GOOD.replace('"signal": None},\n    {"event": {}, "features": {}', '"signal": "x"},\n'
                  '    {"event": {}, "features": {}'), "example(s) fail"),
    ("def select(event, proposals):\n    return None\n", "exactly one selection"),
    ("", "needs a source"),
])
def test_a_broken_release_is_refused_and_the_old_version_keeps_running(
        plane: ControlPlane, source: str, why: str) -> None:
    running = plane.controls
    audit = plane.apply(release("card_testing", source, "mallory", "oops", 1), 2, "w1")
    assert audit["action"] == "control.refuse"
    assert why in _details(audit)["error"]
    assert _details(audit)["running_version"] == running.versions()["card_testing"]
    assert plane.controls is running


def test_retire_stop_and_resume(plane: ControlPlane) -> None:
    assert plane.apply(release("select", None, "a", "r", 1, "RETIRE"), 2, "w")["action"] \
        == "control.refuse"  # the network needs its selection control
    assert plane.apply(release("money_mule", None, "a", "r", 1, "RETIRE"), 2, "w")["action"] \
        == "control.retire"
    assert "money_mule" not in plane.controls.by_id()
    stop = plane.apply(release("card_testing", None, "soc", "misfiring", 3, "STOP"), 4, "w")
    assert stop["action"] == "control.stop" and _details(stop)["stopped"] == ["card_testing"]
    assert "card_testing" not in [c.control_id for c in plane.controls.for_type("CardPayment")]
    # a later release of another control keeps the stop in force
    plane.apply(release("odd_amount", NEW, "bob", "new", 5), 6, "w")
    assert "card_testing" in plane.controls.stopped
    plane.apply(release("card_testing", None, "soc", "fixed", 7, "RESUME"), 8, "w")
    assert "card_testing" in [c.control_id for c in plane.controls.for_type("CardPayment")]
    unknown = plane.apply(release("nope", None, "soc", "?", 9, "STOP"), 10, "w")
    assert unknown["action"] == "control.refuse" and "no such control" in unknown[
        "details_json"]


def test_a_watched_directory_gives_releases_for_changes(tmp_path: Path) -> None:
    for p in LIBRARY.glob("*.star"):
        (tmp_path / p.name).write_text(p.read_text())
    source = DirectorySource(tmp_path, author="ops", every_s=0)
    assert source.poll() == []  # what is there at start is the baseline
    (tmp_path / "card_testing.star").write_text(GOOD)
    (tmp_path / "money_mule.star").unlink()
    got = {(r["control_id"], r["kind"]) for r in source.poll()}
    assert got == {("card_testing", "RELEASE"), ("money_mule", "RETIRE")}
    assert source.poll() == []


def test_a_release_keeps_remembering_and_its_new_version_answers_afresh() -> None:
    """A remembering set (a live worker's) stays one after a release, and the
    released version is called, never answered from the old version's memo."""
    plane = ControlPlane(ControlSet.from_dir().remembering(64))
    event = {"amount_minor": 4242, "merchant_country": "GB", "entry_mode": "CHIP",
             "card_present": True}
    features = {"card_small_auths_10m": 4}
    for _ in range(2):
        plane.controls.evaluate("CardPayment", event, features)
    (before,) = [r for r in plane.controls.evaluate("CardPayment", event, features).results
                 if r.control_id == "card_testing"]
    assert before.remembered and before.signal is None  # 4 small ones: under its 5
    plane.apply(release("card_testing", GOOD, "alice", "catch slower testing", 7), 9, "w1")
    assert plane.controls.remember == 64
    (after,) = [r for r in plane.controls.evaluate("CardPayment", event, features).results
                if r.control_id == "card_testing"]
    assert not after.remembered and after.signal is not None  # the new version's 3
    (again,) = [r for r in plane.controls.evaluate("CardPayment", event, features).results
                if r.control_id == "card_testing"]
    assert again.remembered and again.signal == after.signal
