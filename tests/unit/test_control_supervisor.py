"""The inline controls in a supervised child (issue 19): the same verdicts as in
process; a control that crashes Starlark, aborts it or stalls in one builtin gets
an error result and its ON_ERROR, every other control its own result, and this
process goes on (were it not contained, the crash would end the test run)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tripwire.connectors.simulator import mixed_traffic
from tripwire.controls.engine import Control, ControlSet
from tripwire.controls.results import OUTCOMES
from tripwire.controls.supervisor import ControlProcess
from tripwire.features.engine import FeatureLibrary
from tripwire.features.kinds import EVENT_KINDS

WHEN = 'def detect(event, features):\n    if event["amount_minor"] != {amount}:\n' \
       '        return None\n'
CRASH = WHEN.format(amount=4242) + ('    x = []\n    for i in range(5000):\n        x = [x]\n'
                                    '    return {"score": 0.5, "reason": json.encode(x)}\n'
                                    'ON_ERROR = "DENY"\n')
ABORT = "TIER = 0\n" + WHEN.format(amount=4343) + \
    '    x = [0] * 1000000000\n    return None\nON_ERROR = "MANUAL_REVIEW"\n'
LATER = "TIER = 2\n" + WHEN.format(amount=4545) + '    x = [0] * 1000000000\n    return None\n'
STALL = WHEN.format(amount=4444) + \
    '    return {"score": max(range(event["amount_minor"] * 450000)) * 0.0}\n' \
    'ON_ERROR = "STEP_UP"\n'


def _items(n: int) -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    lib = FeatureLibrary()
    out = []
    for kind, ev in mixed_traffic(3, 1_780_000_000_000, n):
        features: dict[str, Any] = {s.name: 3 for s in lib.specs}
        features.update(EVENT_KINDS[f"tripwire.events.{kind}"].jit(ev))
        out.append((kind, ev, features, str(ev.get("account_id") or "")))
    return out


def _same(v: Any, remembered: bool = False) -> Any:
    """A verdict's values but its durations (and whether each was remembered)."""
    return v.outcome, v.actions, v.reason, [
        replace(r, duration_us=0, remembered=r.remembered and remembered) for r in v.results]


@pytest.fixture(scope="module")
def box() -> Any:
    controls = ControlSet([
        *ControlSet.from_dir().controls, Control.compile("crashes", CRASH),
        Control.compile("aborts", ABORT), Control.compile("stalls", STALL),
        Control.compile("later", LATER)])
    box = ControlProcess(controls, memory_mb=1024)
    yield box
    box.close()


def test_verdicts_are_the_in_process_ones(box: ControlProcess) -> None:
    for item in _items(200):
        assert _same(box.evaluate(*item)) == _same(box.controls.evaluate(*item))


@pytest.mark.parametrize(("amount", "culprit", "outcome", "why"), [
    (4242, "crashes", "DENY", "killed its process (SIGSEGV)"),
    (4343, "aborts", "MANUAL_REVIEW", "killed its process (SIGABRT)"),
    (4444, "stalls", "STEP_UP", "stalled for more than 1 s"),
])
def test_a_control_that_crashes_aborts_or_stalls_costs_only_itself(
        box: ControlProcess, amount: int, culprit: str, outcome: str, why: str) -> None:
    kind, event, features, key = next(i for i in _items(50) if i[0] == "CardPayment")
    event = {**event, "amount_minor": amount}
    started, restarts = time.monotonic(), box.restarts
    verdict = box.evaluate(kind, event, features, key)
    assert time.monotonic() - started < 10
    errors = {r.control_id: r.error for r in verdict.results if r.error}
    assert set(errors) == {culprit} and why in errors[culprit], errors
    assert verdict.outcome == outcome
    assert box.restarts > restarts
    fresh = box.controls.evaluate(kind, {**event, "amount_minor": 100}, features, key)
    assert {r.control_id for r in verdict.results} >= {  # every other detector ran too
        r.control_id for r in fresh.results if r.stage == "DETECTOR"}
    # and the next event is decided in the child as usual
    after = box.evaluate(kind, {**event, "amount_minor": 100}, features, key)
    assert _same(after) == _same(fresh)


def test_tier_two_in_line_is_contained_too(box: ControlProcess) -> None:
    """Backtests and replays run tier 2 in line, after the decision: in the child."""
    kind, event, features, key = next(i for i in _items(50) if i[0] == "CardPayment")
    results = box.evaluate_deferred(kind, {**event, "amount_minor": 4545}, features, key)
    assert [(r.control_id, "SIGABRT" in (r.error or "")) for r in results] == [("later", True)]
    fine = box.evaluate_deferred(kind, {**event, "amount_minor": 100}, features, key)
    assert [(r.control_id, r.error) for r in fine] == [("later", None)]


def test_a_remembering_child_answers_as_the_controls_do_in_process() -> None:
    """A child of a remembering set (a live worker's, a replay's) keeps the answers
    there: the verdicts are those of the same set in process, remembered where
    they were, and a repeat is its first result again, marked remembered (the
    first call's duration and all)."""
    plain = ControlSet.from_dir()
    box = ControlProcess(plain.remembering(10_000), memory_mb=1024)
    try:
        items = _items(120)
        first = box.evaluate_many(items)
        again = box.evaluate_many(items[:40])
    finally:
        box.close()
    here = plain.remembering(10_000)
    assert [_same(v, True) for v in first] == [_same(here.evaluate(*i), True) for i in items]
    assert any(r.remembered for v in first for r in v.results)
    assert [_same(v) for v in again] == [_same(v) for v in first[:40]]
    for v, w in zip(again, first[:40], strict=True):
        assert all(r.remembered and r.duration_us == s.duration_us
                   for r, s in zip(v.results, w.results, strict=True))


def test_a_remembering_child_sends_each_result_once_and_begins_afresh_when_full() -> None:
    """Batch after batch, a remembering child sends a result it sent before as its
    number: the parent's verdicts hold the very result it made the first time. When
    its table is full, or the child is started again (a control killed it), both
    sides begin afresh; the verdicts stay the in-process ones throughout."""

    class Small(ControlProcess):
        SENT_MAX = 80

    plain = ControlSet([*ControlSet.from_dir().controls, Control.compile("crashes", CRASH)])
    box = Small(plain.remembering(10_000), memory_mb=1024)
    items = _items(150)
    crash = next(i for i in items if i[0] == "CardPayment")
    try:
        first = box.evaluate_many(items[:6])  # fewer results (twice) than the table holds
        again = box.evaluate_many(items[:6])  # now each remembered: one result for all
        thrice = box.evaluate_many(items[:6])
        assert all(a is b and a.remembered  # failures: never kept
                   for v, w in zip(again, thrice, strict=True)
                   for a, b in zip(v.results, w.results, strict=True) if not a.error)
        assert sum(len(v.results) for v in first + again) < Small.SENT_MAX
        got = [*first, *again, *thrice]
        for i in range(0, 150, 25):  # the table fills and begins afresh, many times
            got += box.evaluate_many(items[i:i + 25])
        box.evaluate(crash[0], {**crash[1], "amount_minor": 4242}, *crash[2:])
        assert box.restarts  # started again, afresh
        got += box.evaluate_many(items[:50])
    finally:
        box.close()
    want = [*items[:6], *items[:6], *items[:6], *items, *items[:50]]
    assert [_same(v) for v in got] == [_same(plain.evaluate(*i)) for i in want]


def test_a_script_starts_a_child_without_running_itself_again(tmp_path: Path) -> None:
    """A spawned child runs its parent's main script again first, unless told not
    to: for the `tripwire` console script that is the whole CLI at every start,
    and a script without a ``__main__`` guard would start children without end.
    A controls' child (and the tier-2 sandbox, and a release's check) runs none
    of it."""
    ran = tmp_path / "ran"
    script = tmp_path / "replay.py"
    script.write_text(
        "from pathlib import Path\n"
        "from tripwire.connectors.simulator import mixed_traffic\n"
        "from tripwire.controls.engine import ControlSet\n"
        "from tripwire.controls.isolate import check_apart\n"
        "from tripwire.controls.supervisor import ControlProcess\n"
        f"with open({str(ran)!r}, 'a') as f:\n"
        "    f.write('ran\\n')\n"
        "controls = ControlSet.from_dir()\n"
        "box = ControlProcess(controls)\n"
        "kind, ev = next(iter(mixed_traffic(3, 1_780_000_000_000, 1)))\n"
        "print(box.evaluate(kind, ev, {}, 'acc').outcome, box.restarts)\n"
        "box.close()\n"
        "check_apart([(c.control_id, c.source) for c in controls.controls[:2]], 5.0)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    outcome, restarts = out.stdout.split()
    assert outcome in OUTCOMES and restarts == "0", out.stdout
    assert ran.read_text() == "ran\n"  # once: this process, not its children
